"""Finding run folders below the paths given, and telling which ones cannot be read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from denoisebench.core.records import FRAMEWORKS, read_json, read_jsonl

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


def damage(folder: Path) -> str | None:
    """Why `folder` cannot be reported on, naming the file and its parse error; None if every
    file the report reads parses (a run cut off mid-write, a disk that filled up)."""
    files = [folder / "config.json"]
    for framework in FRAMEWORKS:
        fw_dir = folder / framework
        if (fw_dir / "summary.json").is_file():
            files += [fw_dir / "summary.json", *(fw_dir / name for name in _RECORD_FILES)]
    for path in files:
        try:
            if path.suffix == ".jsonl":
                read_jsonl(path)
            elif path.is_file() or path.name != "environment.json":
                read_json(path)
        except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeError too
            return f"{path}: {type(e).__name__}: {e}"
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
