"""The UCI pen-digit files: mirrors, UCI's zip of .Z members, verification, one clear error.

Everything is served from 127.0.0.1 or a temporary folder; the files are small UNIPEN files
made by tests/pen_data.py, described by PenFile specs with their own digests.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import zipfile
from pathlib import Path

import ncompress
import pytest
from loopback_http import FAST
from pen_data import pen_text, spec, uci_zip

from mnist_pipeline import paths, pen_download, pendigits
from mnist_pipeline.download import DownloadError
from mnist_pipeline.http import SourceError
from stages import download as download_stage

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
                                       "digits); tried 2 candidate(s):")
    assert f"  - {bad / 'pendigits-orig.tes'}: sha256 mismatch: got " in message
    assert f"  - {server.url}uci.zip: no member pendigits-orig.tes.Z" in message
    assert "data.mirrors" in message and "data.drawn: false" in message
    # The changed .tra was refused for its digest; UCI's zip gave the right one.
    assert (tmp_path / "raw" / "pendigits-orig.tra").read_bytes() == TRAIN


def test_a_bad_z_never_hides_a_good_plain_file_beside_it(server, tmp_path):  # noqa: F811
    mirror = tmp_path / "copy"
    mirror.mkdir()
    (mirror / "pendigits-orig.tra.Z").write_bytes(b"\x1f\x9d\x90" + bytes(range(200)) * 3)
    (mirror / "pendigits-orig.tra").write_bytes(TRAIN)
    (mirror / "pendigits-orig.tes.Z").write_bytes(ncompress.compress(TRAIN))  # the wrong file
    (mirror / "pendigits-orig.tes").write_bytes(TEST)
    for name, content in CONTENT.items():  # the same at a URL mirror
        server.files[f"/pen/{name}.Z"] = b"\x1f\x9d" + b"\xff" * 50
        server.files[f"/pen/{name}"] = content
    for location in (str(mirror), server.url + "pen"):
        entries = fetch_into(tmp_path / "raw", [location], zip_location=str(tmp_path / "no.zip"))
        assert {name: entry["source"] for name, entry in entries.items()} == {
            name: f"{location.rstrip('/')}/{name}" for name in CONTENT}
    assert (tmp_path / "raw" / "pendigits-orig.tra").read_bytes() == TRAIN


def zip_member_patched(data: bytes, member: str, **fields: int) -> bytes:
    """``data`` (a zip) with ``member``'s header fields changed in its local header and in the
    central directory: ``flags``, ``method`` (compression) or ``crc`` (central only)."""
    data = bytearray(data)
    layouts = {b"PK\x03\x04": (26, 30, {"flags": (6, "<H"), "method": (8, "<H")}),
               b"PK\x01\x02": (28, 46, {"flags": (8, "<H"), "method": (10, "<H"),
                                         "crc": (16, "<I")})}
    for signature, (length_at, name_at, offsets) in layouts.items():
        start = data.find(signature)
        while start >= 0:
            (length,) = struct.unpack_from("<H", data, start + length_at)
            if data[start + name_at:start + name_at + length] == member.encode():
                for field, value in fields.items():
                    if field in offsets:
                        offset, form = offsets[field]
                        struct.pack_into(form, data, start + offset, value)
            start = data.find(signature, start + 4)
    return bytes(data)


def test_every_matching_zip_member_is_tried_and_each_failure_is_one_line(tmp_path):
    """Encrypted, an unsupported compression method, a bad CRC: each such member is named in
    one line, without a traceback, and the next member is tried."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as made:
        for folder in ("locked", "deflate64", "crc"):
            made.writestr(f"{folder}/pendigits-orig.tra.Z", ncompress.compress(TRAIN))
            made.writestr(f"{folder}/pendigits-orig.tes.Z", ncompress.compress(TEST))
        made.writestr("good/pendigits-orig.tra.Z", ncompress.compress(TRAIN))
    data = buffer.getvalue()
    for name in CONTENT:
        data = zip_member_patched(data, f"locked/{name}.Z", flags=0x1)
        data = zip_member_patched(data, f"deflate64/{name}.Z", method=9)
        data = zip_member_patched(data, f"crc/{name}.Z", crc=0)
    archive = tmp_path / "uci.zip"
    archive.write_bytes(data)

    with pytest.raises(DownloadError) as caught:
        fetch_into(tmp_path / "raw", zip_location=str(archive))
    lines = str(caught.value).splitlines()
    assert lines[0] == ("could not get a verified pendigits-orig.tes (UCI pen digits); tried 3 "
                        "candidate(s):")
    assert lines[1:4] == [
        f"  - {archive}[locked/pendigits-orig.tes.Z]: encrypted zip member (needs a password)",
        f"  - {archive}[deflate64/pendigits-orig.tes.Z]: zip compression method 9 is not "
        "supported by Python's zipfile",
        f"  - {archive}[crc/pendigits-orig.tes.Z]: corrupt zip member (BadZipFile: Bad CRC-32 "
        "for file 'crc/pendigits-orig.tes.Z')"]
    assert "Traceback" not in str(caught.value)
    # The .tra was found past the three bad members, in the zip's order.
    assert (tmp_path / "raw" / "pendigits-orig.tra").read_bytes() == TRAIN


def test_every_candidate_tried_is_named_in_order(server, tmp_path):  # noqa: F811
    mirror = tmp_path / "copy"
    mirror.mkdir()
    (mirror / "pendigits-orig.tes.Z").write_bytes(b"not compressed")
    (mirror / "pendigits-orig.tes").write_bytes(TEST[:-40])
    server.files["/pen/pendigits-orig.tes"] = TEST.replace(b'"1"', b'"7"', 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as made:
        made.writestr("pendigits-orig.tes.Z", ncompress.compress(TRAIN))
        made.writestr("old/pendigits-orig.tes", TEST + b"\n")
    (tmp_path / "uci.zip").write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError) as caught:
        pen_download.download_pen_files(tmp_path / "raw", (str(mirror), server.url + "pen",
                                                           str(tmp_path / "empty")),
                                        FAST, FILES[1:], str(tmp_path / "uci.zip"))
    origins = [line.split(": ")[0] for line in str(caught.value).splitlines()[1:-1]]
    assert origins == [f"  - {mirror}/pendigits-orig.tes.Z", f"  - {mirror}/pendigits-orig.tes",
                       f"  - {server.url}pen/pendigits-orig.tes", f"  - {tmp_path / 'empty'}",
                       f"  - {tmp_path / 'uci.zip'}[pendigits-orig.tes.Z]",
                       f"  - {tmp_path / 'uci.zip'}[old/pendigits-orig.tes]"]
    assert server.requests == ["/pen/pendigits-orig.tes.Z", "/pen/pendigits-orig.tes"]
    assert f"{mirror}/pendigits-orig.tes.Z: sha256 mismatch" in str(caught.value)


def test_a_mirror_that_cannot_be_reached_is_not_asked_for_its_plain_file(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}/pen"
    (tmp_path / "pendigits-orig.tes").write_bytes(TEST)
    entries = pen_download.download_pen_files(tmp_path / "raw", (closed_url, str(tmp_path)),
                                              FAST, FILES[1:], str(tmp_path / "no.zip"))
    assert entries["pendigits-orig.tes"]["source"] == str(tmp_path / "pendigits-orig.tes")
    with pytest.raises(DownloadError) as caught:
        pen_download.download_pen_files(tmp_path / "raw2", (closed_url,), FAST, FILES[1:],
                                        str(tmp_path / "no.zip"))
    assert f"  - {closed_url}/pendigits-orig.tes.Z: connection refused" in str(caught.value)
    assert f"{closed_url}/pendigits-orig.tes:" not in str(caught.value)


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
    (refused,) = reader.from_zip(FILES[0])
    assert isinstance(refused, SourceError) and "more than the file can be" in refused.reason


def test_the_published_files_are_the_readmes_digests():
    assert pendigits.TRAIN_FILE.sha256 == ("a66225d68d7d68591e62944df1ad33b3f5aa608e2df2505844b4"
                                           "1f5568a80da4")
    assert pendigits.TEST_FILE.sha256 == ("ddb1c19e277a56c7ffe682cc024d6ab73696f9adcc1643ef9ed5"
                                          "aa753007e081")
    assert (pendigits.TRAIN_FILE.digits, pendigits.TEST_FILE.digits) == (7_494, 3_498)


# --- the stage ----------------------------------------------------------------------------


def test_stage_fetches_the_pen_files_beside_the_dataset(in_tmp_dir, monkeypatch, capsys):
    monkeypatch.setattr(pendigits, "FILES", FILES)
    mirror = in_tmp_dir / "pen"
    mirror.mkdir()
    for name, content in CONTENT.items():
        (mirror / name).write_bytes(content)
    (in_tmp_dir / "params.yaml").write_text(
        f"data:\n  dataset: mnist-sample\n  drawn: true\n  mirrors: [{mirror}]\n"
        "  retries: 0\n")  # a missing file is not retried: no backoff to wait out
    download_stage.main()
    manifest = json.loads(paths.RAW_MANIFEST.read_text())
    assert manifest["drawn"] == ["pendigits-orig.tes", "pendigits-orig.tra"]
    assert (paths.RAW_DIR / "pendigits-orig.tra").read_bytes() == TRAIN
    assert f"data/raw/pendigits-orig.tes: {len(TEST):,} bytes from {mirror}" in \
        capsys.readouterr().out

    # No copy anywhere: one message naming every source, and the last good data/raw kept.
    (mirror / "pendigits-orig.tes").unlink()
    monkeypatch.setattr(pendigits, "UCI_ZIP", str(in_tmp_dir / "no-such.zip"))
    with pytest.raises(SystemExit) as caught:
        download_stage.main()
    assert str(caught.value.code).startswith("download: could not get a verified "
                                             "pendigits-orig.tes (UCI pen digits)")
    assert (paths.RAW_DIR / "pendigits-orig.tes").read_bytes() == TEST
