"""The UCI pen-digit files: mirrors, UCI's zip of .Z members, verification, one clear error.

Everything is served from 127.0.0.1 or a temporary folder; the files are small UNIPEN files
made by tests/pen_data.py, described by PenFile specs with their own digests.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import ncompress
import pytest
from pen_data import pen_text, spec, uci_zip
from test_download import FAST, REPO_ROOT, server  # noqa: F401 (the loopback server fixture)

from mnist_pipeline import paths, pen_download, pendigits
from mnist_pipeline.download import DownloadError
from mnist_pipeline.http import SourceError

TRAIN = pen_text(range(1, 4), per_writer=10, seed=0).encode()
TEST = pen_text(range(1, 3), per_writer=10, seed=1).encode()
FILES = (spec("pendigits-orig.tra", TRAIN, "train", 30, 3),
         spec("pendigits-orig.tes", TEST, "test", 20, 2))
CONTENT = {"pendigits-orig.tra": TRAIN, "pendigits-orig.tes": TEST}


def fetch_into(folder: Path, mirrors=(), zip_location=None) -> dict:
    folder.mkdir(exist_ok=True)
    return pen_download.download_pen_files(folder, tuple(mirrors), FAST, FILES, zip_location)


def test_ucis_zip_of_compress_members_gives_both_files_verified(server, tmp_path):  # noqa: F811
    server.files["/uci.zip"] = uci_zip(CONTENT)
    entries = fetch_into(tmp_path / "raw", zip_location=server.url + "uci.zip")
    for name, content in CONTENT.items():
        assert (tmp_path / "raw" / name).read_bytes() == content
        assert entries[name]["source"] == f"{server.url}uci.zip[{name}.Z]"
        assert entries[name]["bytes"] == len(content)
    assert server.requests.count("/uci.zip") == 1  # fetched once for both files


def test_the_members_may_sit_in_a_folder_of_the_zip(tmp_path):
    archive = tmp_path / "uci.zip"
    with zipfile.ZipFile(archive, "w") as made:
        for name, content in CONTENT.items():
            made.writestr(f"pendigits/{name}.Z", ncompress.compress(content))
    entries = fetch_into(tmp_path / "raw", zip_location=str(archive))
    assert entries["pendigits-orig.tes"]["source"] == f"{archive}[pendigits/pendigits-orig.tes.Z]"


def test_a_local_mirror_with_plain_or_compressed_files_comes_first(server, tmp_path):  # noqa: F811
    mirror = tmp_path / "copy"
    mirror.mkdir()
    (mirror / "pendigits-orig.tra").write_bytes(TRAIN)  # as ../shared/pendigits holds it
    (mirror / "pendigits-orig.tes.Z").write_bytes(ncompress.compress(TEST))
    entries = fetch_into(tmp_path / "raw", [str(mirror)], zip_location=server.url + "uci.zip")
    assert entries["pendigits-orig.tra"]["source"] == str(mirror / "pendigits-orig.tra")
    assert entries["pendigits-orig.tes"]["source"] == str(mirror / "pendigits-orig.tes.Z")
    assert server.requests == []


def test_a_url_mirror_serves_the_z_files(server, tmp_path):  # noqa: F811
    for name, content in CONTENT.items():
        server.files[f"/pen/{name}.Z"] = ncompress.compress(content)
    entries = fetch_into(tmp_path / "raw", [server.url + "pen"], zip_location=str(tmp_path))
    assert entries["pendigits-orig.tes"]["source"] == f"{server.url}pen/pendigits-orig.tes.Z"


def test_a_changed_or_truncated_copy_falls_through_and_every_source_is_named(server,  # noqa: F811
                                                                             tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pendigits-orig.tra").write_bytes(TRAIN.replace(b'"3"', b'"5"', 1))
    (bad / "pendigits-orig.tes").write_bytes(TEST[:-40])
    server.files["/uci.zip"] = uci_zip({"pendigits-orig.tra": TRAIN})  # no .tes member
    with pytest.raises(DownloadError) as caught:
        fetch_into(tmp_path / "raw", [str(bad)], zip_location=server.url + "uci.zip")
    message = str(caught.value)
    assert message.splitlines()[0] == ("could not get a verified pendigits-orig.tes (UCI pen "
                                       "digits); tried 2 source(s):")
    assert f"  - {bad / 'pendigits-orig.tes'}: sha256 mismatch: got " in message
    assert f"  - {server.url}uci.zip: no member pendigits-orig.tes.Z" in message
    assert "data.mirrors" in message and "data.drawn: false" in message
    # The changed .tra was refused for its digest; UCI's zip gave the right one.
    assert (tmp_path / "raw" / "pendigits-orig.tra").read_bytes() == TRAIN


def test_a_right_digest_with_the_wrong_digit_count_is_refused(tmp_path):
    wrong = (spec("pendigits-orig.tra", TRAIN, "train", 31, 3),)
    (tmp_path / "pendigits-orig.tra").write_bytes(TRAIN)
    with pytest.raises(DownloadError, match="30 digits, expected 31"):
        pen_download.download_pen_files(tmp_path / "out", (str(tmp_path),), FAST, wrong,
                                        str(tmp_path / "none.zip"))


def test_a_compress_bomb_stops_at_the_files_size(tmp_path):
    bomb = ncompress.compress(b"7" * (FILES[0].size * 50))
    assert len(bomb) < FILES[0].size  # small on disk, 50 times the file unpacked
    with pytest.raises(SourceError, match=r"unpacks to more than the [\d,]+ bytes"):
        pen_download.uncompress_z(bomb, "bomb.Z", FILES[0].size)
    with pytest.raises(SourceError, match="not a .Z file"):
        pen_download.uncompress_z(b"plain text", "x.Z", 100)
    with pytest.raises(SourceError, match="corrupt .Z data"):
        pen_download.uncompress_z(b"\x1f\x9d\x90" + bytes(range(200)) * 3, "x.Z", 10_000)


def test_a_zip_member_larger_than_the_file_is_not_read(tmp_path):
    archive = tmp_path / "uci.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as made:
        made.writestr("pendigits-orig.tra.Z", b"\0" * (FILES[0].size * 3))
    reader = pen_download.PenReader(FAST, str(archive))
    with pytest.raises(SourceError, match="more than the file can be"):
        reader.from_zip(FILES[0])


def test_the_published_files_are_the_readmes_digests():
    assert pendigits.TRAIN_FILE.sha256 == ("a66225d68d7d68591e62944df1ad33b3f5aa608e2df2505844b4"
                                           "1f5568a80da4")
    assert pendigits.TEST_FILE.sha256 == ("ddb1c19e277a56c7ffe682cc024d6ab73696f9adcc1643ef9ed5"
                                          "aa753007e081")
    assert (pendigits.TRAIN_FILE.digits, pendigits.TEST_FILE.digits) == (7_494, 3_498)


# --- the stage ----------------------------------------------------------------------------


def _stage():
    sys.path.insert(0, str(REPO_ROOT / "stages"))
    try:
        import download as stage  # stages/download.py
    finally:
        sys.path.remove(str(REPO_ROOT / "stages"))
    return stage


def test_stage_fetches_the_pen_files_beside_the_dataset(in_tmp_dir, monkeypatch, capsys):
    monkeypatch.setattr(pendigits, "FILES", FILES)
    mirror = in_tmp_dir / "pen"
    mirror.mkdir()
    for name, content in CONTENT.items():
        (mirror / name).write_bytes(content)
    (in_tmp_dir / "params.yaml").write_text(
        f"data:\n  dataset: mnist-sample\n  drawn: true\n  mirrors: [{mirror}]\n")
    _stage().main()
    manifest = json.loads(paths.RAW_MANIFEST.read_text())
    assert manifest["drawn"] == ["pendigits-orig.tes", "pendigits-orig.tra"]
    assert (paths.RAW_DIR / "pendigits-orig.tra").read_bytes() == TRAIN
    assert f"data/raw/pendigits-orig.tes: {len(TEST):,} bytes from {mirror}" in \
        capsys.readouterr().out

    # No copy anywhere: one message naming every source, and the last good data/raw kept.
    (mirror / "pendigits-orig.tes").unlink()
    monkeypatch.setattr(pendigits, "UCI_ZIP", str(in_tmp_dir / "no-such.zip"))
    with pytest.raises(SystemExit) as caught:
        _stage().main()
    assert str(caught.value.code).startswith("download: could not get a verified "
                                             "pendigits-orig.tes (UCI pen digits)")
    assert (paths.RAW_DIR / "pendigits-orig.tes").read_bytes() == TEST
