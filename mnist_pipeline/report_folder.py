"""The report's out folder: written files listed in a manifest, foreign folders refused.

A report may be written again and again into the same folder; only what the last report
wrote is ever deleted, and a folder that holds anything else, or that is (or holds, or lies
in) an output of the pipeline, is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mnist_pipeline import dvc_cli, fileio

MANIFEST_FILE = ".report-files"  # the names the last report wrote, one a line


class OutDirError(ValueError):
    """An out folder the report must not write into."""


class Writer:
    """Writes the report's files into its out folder and lists them in MANIFEST_FILE.

    Refuses (OutDirError) a path that is not a folder, a folder that is, holds or lies inside
    an output dvc.yaml declares, and a folder holding anything the last report did not write;
    deletes only the files its manifest lists."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.written, self.stale = out_dir, [], []
        if out_dir.exists() and not out_dir.is_dir():
            raise OutDirError(f"--out {out_dir} is not a folder")
        where = out_dir.resolve()
        for output in dvc_cli.declared_outputs():
            declared = output.resolve()
            relation = ("is" if where == declared else "lies in" if declared in where.parents
                        else "holds" if where in declared.parents else "")
            if relation:
                raise OutDirError(f"--out {out_dir} {relation} {output}, an output of the "
                                  "pipeline (dvc.yaml): choose another folder")
        if not out_dir.exists():
            return
        manifest = out_dir / MANIFEST_FILE
        listed = set(manifest.read_text().splitlines()) if manifest.is_file() else set()
        foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name != MANIFEST_FILE
                         and (entry.name not in listed or not entry.is_file()
                              or entry.is_symlink()))
        if foreign:
            named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                              if len(foreign) > 3 else "")
            raise OutDirError(f"--out {out_dir} holds files the report did not write ({named}):"
                              " choose a new or empty folder")
        self.stale = [entry for entry in out_dir.iterdir() if entry.name in listed]

    def clear(self) -> None:
        """Delete the files of the last report (only those its manifest lists)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.stale:
            entry.unlink(missing_ok=True)
        self._save()

    def write_bytes(self, name: str, data: bytes) -> None:
        self._add(name)
        fileio.write_bytes(self.out_dir / name, data)

    def write_text(self, name: str, text: str) -> None:
        self._add(name)
        fileio.write_text(self.out_dir / name, text)

    def copy(self, source: Path, name: str) -> None:
        self._add(name)
        shutil.copyfile(source, self.out_dir / name)

    def _add(self, name: str) -> None:
        # Listed before it is written: a report cut short still owns what it left behind.
        if name not in self.written:
            self.written.append(name)
            self._save()

    def _save(self) -> None:
        fileio.write_text(self.out_dir / MANIFEST_FILE, "".join(f"{name}\n"
                                                                for name in self.written))
