"""Build the self-contained page template that `dvc plots show` and `dvc plots diff` use.

The committed source, ``dvc_plots_template.html``, loads vega, vega-lite and vega-embed from
``../node_modules/`` and falls back to the same versions on the CDN. A page that loads them
by a relative path works only where that path happens to resolve, so ``make install`` runs
this module to write ``.dvc/plots_template.html`` (ignored by git, named in .dvc/config),
with the three libraries inlined from the pinned copies that ``npm ci`` installed: the page
DVC writes then renders offline from any folder, also after being moved, zipped or attached
to a CI run. Without node_modules the template is the source as is (CDN fallback).

Usage: ``python -m mnist_pipeline.plots_page [SOURCE] [TARGET]``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mnist_pipeline import fileio

SOURCE = Path("dvc_plots_template.html")
TARGET = Path(".dvc/plots_template.html")
NODE_MODULES = Path("node_modules")

# `<script src="../node_modules/<package>/<file>"></script>` in the source template.
_LOCAL_SCRIPT = re.compile(
    r'<script src="\.\./node_modules/(?P<package>[\w.-]+)/(?P<file>[\w./-]+)"></script>')
# Placeholders that dvc-render replaces anywhere in the template (dvc_render/html.py).
DVC_PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")


def inline_scripts(template: str, node_modules: Path) -> str:
    """``template`` with each local node_modules script tag replaced by the script itself.

    Raises FileNotFoundError naming a missing file, and ValueError when a library contains
    a DVC placeholder (DVC would replace it inside the code).
    """

    def inlined(match: re.Match) -> str:
        package_dir = node_modules / match["package"]
        code = (package_dir / match["file"]).read_text(encoding="utf-8")
        for placeholder in DVC_PLACEHOLDERS:
            if placeholder in code:
                raise ValueError(f"{match['package']}/{match['file']} contains {placeholder}, "
                                 "which DVC would replace in the page")
        version = json.loads((package_dir / "package.json").read_text())["version"]
        # "</script" inside the code would end the tag early; "<\/script" means the same in JS.
        code = code.replace("</script", "<\\/script")
        return (f"<script>/* {match['package']} {version}, inlined from node_modules by "
                f"`make install` */\n{code}\n</script>")

    return _LOCAL_SCRIPT.sub(inlined, template)


def build(source: Path = SOURCE, target: Path = TARGET,
          node_modules: Path = NODE_MODULES) -> bool:
    """Write the page template to ``target``; True if the libraries were inlined."""
    template = source.read_text(encoding="utf-8")
    complete = (node_modules / "vega-embed").is_dir()
    fileio.write_text(target, inline_scripts(template, node_modules) if complete else template)
    return complete


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    source, target = (Path(arguments[0]), Path(arguments[1])) if arguments else (SOURCE, TARGET)
    try:
        inlined = build(source, target)
    except (OSError, ValueError) as error:
        sys.exit(f"plots page: {error}")
    print(f"plots page: wrote {target} "
          + ("(vega inlined: renders offline anywhere)" if inlined
             else "(no node_modules: vega loads from ../node_modules or the CDN)"))


if __name__ == "__main__":
    main()
