# On a fresh machine with Python 3.11+: `make sample` (offline), `make test`, `make repro`
# (README, "First commands"). Each creates .venv when it is missing and installs the pinned
# versions from requirements.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands in dvc.yaml call `python`, `dvc` and `mnist-pipeline`: use the venv's.
export PATH := $(BIN):$(PATH)
# Quieter TensorFlow start-up logs.
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The pipeline's runs print what matters: tools/pipeline-shell drops DVC's and TensorFlow's
# start-up lines that no setting hides (it says which), keeping each recipe's exit status.
sample repro fashion: SHELL := $(CURDIR)/tools/pipeline-shell

# A recipe file's overrides of params.yaml as `dvc exp run` options: each `key: value` line of
# recipes/<name>.yaml (one home, also read by benchmarks/ and tests/) becomes `-S key=value`.
recipe_params = $(shell sed -n -e 's/\#.*//' -e 's/[[:space:]]//g' \
	-e 's/^\([A-Za-z0-9_.]*\):\(..*\)$$/-S \1=\2/p' $(1))

INSTALLED := $(VENV)/.installed
# Local copies of vega, vega-lite and vega-embed for `dvc plots show` offline (not committed).
NODE_INSTALLED := node_modules/.installed
# The `dvc plots show` page template with those copies inlined (named in .dvc/config).
PLOTS_TEMPLATE := .dvc/plots_template.html

.PHONY: install repro sample baseline exps report gate test test-fast lint lock clean

install: $(INSTALLED) $(NODE_INSTALLED) $(PLOTS_TEMPLATE)

$(INSTALLED): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# Without npm the plots page falls back to the CDN, so this step is optional outside tests.
$(NODE_INSTALLED): package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: dvc plots show will load vega from its CDN"; fi

# Built after the npm step (order-only: without npm it makes no file), again when the pinned
# versions or the source change; without node_modules the template keeps its CDN fallback.
$(PLOTS_TEMPLATE): dvc_plots_template.html mnist_pipeline/plots_page.py package-lock.json \
		$(INSTALLED) | $(NODE_INSTALLED)
	python -m mnist_pipeline.plots_page

repro: install
	dvc repro

sample: install
	dvc exp run $(call recipe_params,recipes/sample.yaml)

# Fashion-MNIST with the recipe measured on it (recipes/fashion-mnist.yaml); offline where
# Debian's dataset-fashion-mnist is installed.
.PHONY: fashion
fashion: install
	dvc exp run $(call recipe_params,recipes/fashion-mnist.yaml)

# Commit the current run on the current branch (main, the first time): what `dvc metrics diff
# main`, `dvc params diff main` and `dvc plots diff main` compare against later.
BASELINE_FILES := params.yaml dvc.lock metrics plots dvclive data/.gitignore models/.gitignore
baseline:
	git add $(BASELINE_FILES)
	git commit -m "Baseline: pipeline results of $$(git rev-parse --short HEAD)" -- $(BASELINE_FILES)

# The experiments table with what people compare first: each test source's accuracy and
# errors (metrics/evaluate.json's `<source>.accuracy`, `<source>.errors`), then the params
# that differ. DVC puts every metric column before the params, file by file, so the drop
# takes every column that is not a param (a name under one of params.yaml's sections),
# metrics added later included, and the metrics named under `train.` too (metrics/data.json's
# train.size); --keep holds the experiment and the per-source scores, even when equal. In a
# terminal DVC pages the table (scroll sideways); piped, it prints it at full width; with
# --no-pager it folds what does not fit the terminal's width. Both views tested at COLUMNS=120
# (tests/test_report.py).
PARAM_SECTIONS = $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\):.*/\1/p' params.yaml | paste -sd'|' -)
EXPS_KEEP := ^(Experiment|(?!(train|eval)\.)[A-Za-z0-9_-]+\.(accuracy|errors))$$
EXPS_DROP = (?!($(PARAM_SECTIONS))(\.|$$))|train\.size$$
exps:
	dvc exp show --only-changed --keep '$(EXPS_KEEP)' --drop '$(EXPS_DROP)'

# Review (docs/experiments-and-review.md, "Review: report, gate, CI"): the workspace, or REV,
# against BASE. Run after `make install` (like baseline, these do not install: CI installs in
# a step of its own).
# A branch name may hold quotes, `;`, `>` or `$(...)`: BASE and REV reach the commands as data.
# make never expands them (`$(value ...)`, and unexported: make expands what it exports), the
# recipes get them as environment variables and pass them on quoted, and the modules verify
# them as commits. A failing gate exits 1; make then reports the recipe's failure and exits 2.
BASE ?= main
REV ?=
unexport BASE REV
report gate: export REVIEW_BASE = $(value BASE)
report gate: export REVIEW_REV = $(value REV)
report:
	python -m mnist_pipeline.report --base="$$REVIEW_BASE" $${REVIEW_REV:+--rev="$$REVIEW_REV"}

gate:
	python -m mnist_pipeline.gate --base="$$REVIEW_BASE"

# PLOTS_HTML_REQUIRED=1: a missing Chromium or node_modules fails the browser test, not skips it.
# Both cores: TEST_WORKERS=2 processes (pytest-xdist), each given whole files (a module's
# shared fixture is built once), the longest first (tests/conftest.py's LONGEST_FIRST, not
# xdist's most-tests-first). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install
	ruff check .
	PLOTS_HTML_REQUIRED=1 $(PYTEST)

test-fast: install
	$(PYTEST) -m 'not slow'

lint: install
	ruff check .

# Re-pin every dependency to what is installed now (after an upgrade on purpose).
lock: install
	( sed -n '1,2p' requirements.lock; python -m pip freeze --exclude-editable | grep -v '^mnist-pipeline' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) node_modules $(PLOTS_TEMPLATE) .pytest_cache .ruff_cache
