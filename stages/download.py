"""Download stage: fetch the chosen dataset's raw IDX files, verified, into data/raw/.

Reads:  params.yaml (`data`: dataset, drawn, mirrors, timeout_seconds, retries), then the
        sources in mnist_pipeline/datasets.py (mirrors first, then local copies, then public
        mirrors) and, with data.drawn, mnist_pipeline/pen_download.py's (mirrors, UCI's zip).
Writes: data/raw/ with the decompressed IDX files (train-*, and t10k-* except for
        mnist-sample), with data.drawn the UCI pen-digit files pendigits-orig.tra/.tes, and
        data/raw/manifest.json (dataset; per file sha256, bytes, source; the drawn files).
"""

import sys
from functools import partial

from mnist_pipeline import paths, pen_download
from mnist_pipeline.datasets import get_dataset
from mnist_pipeline.download import DownloadError, download_dataset
from mnist_pipeline.http import NetworkSettings
from mnist_pipeline.params import ParamsError, load_params


def main() -> None:
    try:
        params = load_params()
        data = params.data
        network = NetworkSettings(timeout_seconds=data.timeout_seconds, retries=data.retries)
        pen_files = partial(pen_download.download_pen_files, mirrors=data.mirrors,
                            network=network) if data.drawn else None
        manifest = download_dataset(get_dataset(data.dataset), paths.RAW_DIR,
                                    mirrors=data.mirrors, network=network, also=pen_files)
    except (DownloadError, ParamsError) as error:
        sys.exit(f"download: {error}")  # one clear message on stderr, exit status 1
    for name, entry in manifest["files"].items():
        print(f"{paths.RAW_DIR / name}: {entry['bytes']:,} bytes from {entry['source']}")


if __name__ == "__main__":
    main()
