"""What a run started with, fingerprinted, so a resume continues that run and no other.

A run folder's config.json (each measurement folder's) and launch.json say what the run trains
and how it was launched. Edited between an interrupt and `--resume` they would make the resume a
different run on top of the first one's records and checkpoints: a changed architecture ends
PyTorch's restore in a size-mismatch traceback and trains TensorFlow's new model from scratch
without a word; a changed seed continues the old checkpoint under the new seed; a changed
framework leaves the other one 'interrupted' for ever. So when a run starts, the launcher writes
`fingerprint.json` beside each config.json: the sha256 of that folder's record files as written.
Every resume (the launcher's `--resume` and `--auto-resume`, a trainer started with `--resume`,
a SLURM task that resumes) compares them first and refuses in one line, naming the file and
both digests. A run made before fingerprints were written has none and resumes as before.

It guards against edits by mistake, not against someone who rewrites the fingerprint too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from denoisebench.core.config import ConfigError

FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINTED = ("config.json", "launch.json")
"""The record files of a folder that are fingerprinted, where the folder has them."""


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_fingerprint(folder: Path) -> None:
    """fingerprint.json in `folder`: the sha256 of each of its FINGERPRINTED files."""
    folder = Path(folder)
    digests = {name: digest(folder / name) for name in FINGERPRINTED if (folder / name).is_file()}
    tmp = folder / f".{FINGERPRINT_FILE}.tmp"
    tmp.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / FINGERPRINT_FILE)


def check_unchanged(folder: Path) -> None:
    """ConfigError when a file fingerprinted in `folder` changed (or went) since the run
    started; nothing when the folder has no fingerprint (a run made before them)."""
    folder = Path(folder)
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
        assert isinstance(recorded, dict)
    except (OSError, ValueError, AssertionError):
        raise ConfigError(f"{path}: damaged, so the run's records cannot be checked") from None
    for name, was in recorded.items():
        file = folder / name
        now = digest(file) if file.is_file() else None
        if now != was:
            what = f"its sha256 is {now[:12]}..." if now else "it is gone"
            raise ConfigError(
                f"{file} changed since the run started ({what}, was {str(was)[:12]}...): a "
                "resume continues the run as it started; undo the edit, or start a new run"
            )
