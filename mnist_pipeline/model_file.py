"""Write ``models/model.keras`` atomically, and byte-stable: equal weights give equal bytes.

Keras's ``model.save`` stamps the save time and memory addresses into the zip, so a retrain
that changes nothing would still change the file's hash, and DVC would rerun every stage
after it. :func:`save_model` saves through :func:`mnist_pipeline.fileio.atomic_path` and
rewrites the zip without them (:func:`without_save_times`). Nothing here imports Keras: it
is handed the model to save.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from mnist_pipeline import fileio, paths


def save_model(model: Any, target: str | Path = paths.MODEL_FILE) -> None:
    """Save atomically: a crash never leaves a half-written ``target``.

    Keras insists on the ``.keras`` suffix, so the model is written to a ``.keras`` file beside
    the temporary path that :func:`mnist_pipeline.fileio.atomic_path` renames into place (both
    names match the `.gitignore` patterns for temporaries, should a kill leave them behind).
    Equal weights give equal bytes (:func:`without_save_times`), so a retrain that changes
    nothing changes no hash and reruns nothing downstream.
    """
    with fileio.atomic_path(target) as temporary:
        staged = temporary.with_name(temporary.name + ".keras")
        try:
            model.save(staged)
            without_save_times(staged)
            os.replace(staged, temporary)
        finally:
            staged.unlink(missing_ok=True)


# The earliest time a zip entry can hold (as `SOURCE_DATE_EPOCH` tools write).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def without_save_times(archive: str | Path) -> None:
    """Rewrite a ``.keras`` zip without what differs between two saves of one model, in place.

    Keras writes the save date into metadata.json (``date_saved``), the file time onto the
    weights entry, and into config.json, for each object used more than once (the network
    inside the test-time-shift model), a ``shared_object_id`` that is the object's Python
    ``id()``, a memory address: those are renumbered 1, 2, ... in order of appearance
    (:func:`renumber_shared_objects`). Everything else (config, HDF5 weights) is already a
    function of the model.
    """
    with zipfile.ZipFile(archive) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(archive, "w") as rewritten:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = json.dumps(renumber_shared_objects(json.loads(data))).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            rewritten.writestr(entry, data)


def renumber_shared_objects(config: object, numbers: dict[object, int] | None = None) -> object:
    """``config`` (a Keras config, parsed JSON) with every ``shared_object_id`` replaced by
    1, 2, ... in order of first appearance (depth first, in the file's order), so that all
    references to one object keep one number; loading only matches the numbers up."""
    numbers = {} if numbers is None else numbers
    if isinstance(config, list):
        return [renumber_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    renumbered = {}
    for key, value in config.items():
        if key == "shared_object_id" and not isinstance(value, (dict, list)):
            value = numbers.setdefault(value, len(numbers) + 1)
        else:
            value = renumber_shared_objects(value, numbers)
        renumbered[key] = value
    return renumbered
