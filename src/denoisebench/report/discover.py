"""Finding run folders below the paths given, and telling which ones cannot be read."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from denoisebench.core.records import FRAMEWORKS, read_json, read_jsonl
from denoisebench.core.schema import shape_error

# Folders that never hold a run folder: skipped while searching, so a big tree stays quick.
_PRUNE = {"checkpoints", "slurm-logs", "report", "__pycache__", *FRAMEWORKS}


class ReportError(RuntimeError):
    """Nothing to report on (no run folder where the user pointed)."""


def _is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / fw / "summary.json").is_file() for fw in FRAMEWORKS
    )


# What a run folder's report reads, per framework, beside config.json and summary.json.
_RECORD_FILES = ("epochs.jsonl", "steps.jsonl", "devices.jsonl", "hosts.jsonl", "environment.json")
# The arrays it reads (report/baselines.py), where the run wrote them: file -> array names.
_ARRAY_FILES = {"test_samples.npz": ("clean", "noisy"), "test_outputs.npz": ("outputs",)}
# What np.load raises on a damaged .npz: a cut-off or overwritten zip, a bad CRC or deflate
# stream, a bad array header, an array missing.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz, read whole (so a damaged one fails here, with NPZ_ERRORS,
    not later in the middle of the report)."""
    with np.load(path) as npz:
        return {name: npz[name] for name in names}


def damage(folder: Path) -> str | None:
    """Why `folder` cannot be reported on, naming the file and what is wrong; None if every file
    the report reads parses (a run cut off mid-write, a disk that filled up) and holds what its
    schema says: objects where records belong, numbers where figures do (core.schema
    .shape_error: `[]` for a config, `"final": "oops"`, a string for a loss)."""
    files = [folder / "config.json", folder / "test_samples.npz"]
    for framework in FRAMEWORKS:
        fw_dir = folder / framework
        if (fw_dir / "summary.json").is_file():
            files += [fw_dir / "summary.json", *(fw_dir / name for name in _RECORD_FILES)]
            files.append(fw_dir / "test_outputs.npz")
    for path in files:
        try:
            if path.suffix == ".jsonl":
                wrong = _jsonl_shape(path, read_jsonl(path))
            elif path.suffix == ".npz":
                if path.is_file():  # written at the end of a run: absent before
                    read_arrays(path, _ARRAY_FILES[path.name])
                wrong = None
            elif path.is_file() or path.name != "environment.json":
                wrong = _json_shape(path, read_json(path))
            else:
                wrong = None
        except NPZ_ERRORS as e:  # json.JSONDecodeError and UnicodeError are ValueErrors
            return f"{path}: {type(e).__name__}: {e}"
        if wrong:
            return f"{path}: {wrong}"
    return None


def _json_shape(path: Path, record: object) -> str | None:
    """What is wrong with a JSON record file's content: config.json an object of sections (each
    an object or a plain value), summary.json its schema's, environment.json an object."""
    if path.name == "summary.json":
        return shape_error(record, "summary")
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    if path.name == "config.json":
        for section, value in record.items():
            if isinstance(value, list):
                return f"section {section!r} is a list, not an object"
    return None


def _jsonl_shape(path: Path, rows: list[object]) -> str | None:
    """The first line of a JSONL record file that is not what its schema says, by number."""
    kind = {"steps.jsonl": "step", "epochs.jsonl": "epoch"}.get(path.name)
    for number, row in enumerate(rows, start=1):
        wrong = shape_error(row, kind) if kind else None
        if kind is None and not isinstance(row, dict):
            wrong = f"a {type(row).__name__}, not an object"
        if wrong:
            return f"line {number}: {wrong}"
    return None


def find_run_folders(paths: Iterable[Path]) -> list[Path]:
    """Every run folder at or below `paths`, sorted and without duplicates."""
    found: set[Path] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ReportError(f"{root}: no such folder")
        if _is_run_folder(root):
            found.add(root.resolve())
            continue
        for current, dirnames, _files in os.walk(root):
            here = Path(current)
            if _is_run_folder(here):
                found.add(here.resolve())
                dirnames.clear()  # a run folder holds no further run folders
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE)
    return sorted(found)
