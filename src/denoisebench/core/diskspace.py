"""Disk space: a full disk recognised in any library's error, the line that reports it, and the
start-up check that refuses a disk too small for a run's first epoch."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from denoisebench.core.config import Config, ConfigError
from denoisebench.core.records import read_json

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""OSError numbers of a full disk (or quota)."""
NEARLY_FULL_BYTES = 2**20


def free_bytes(path: Path) -> int:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full(e: BaseException, path: Path) -> OSError | None:
    """`e` as an out-of-space OSError naming `path`, else None. Libraries report a full disk in
    their own way (torch.save: RuntimeError "file write failed"; TensorFlow: an OpError): those
    count when the disk at `path` has less than 1 MiB left. Call it before removing what the
    failed write left, which frees the space again."""
    if isinstance(e, OSError):
        if e.errno not in DISK_FULL:
            return None
    elif free_bytes(path) >= NEARLY_FULL_BYTES:
        return None
    number = e.errno if isinstance(e, OSError) and e.errno else errno.ENOSPC
    return OSError(number, os.strerror(number), str(path))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def disk_full_report(e: OSError, fw_dir: Path) -> str:
    """One line for a run stopped by a full disk: the file, the free space, what was kept (the
    epochs the last checkpoint holds, which a resume continues from)."""
    fw_dir = Path(fw_dir)
    try:
        done = int(read_json(fw_dir / "summary.json").get("epochs_completed") or 0)
    except (OSError, ValueError):
        done = 0
    kept = (
        f"{done} finished epoch(s) and their checkpoint in {fw_dir}; --resume continues there "
        "once the disk has room"
        if done
        else f"no finished epoch in {fw_dir}"
    )
    return (
        f"no space left on the device writing {e.filename or fw_dir} "
        f"({_size(free_bytes(fw_dir))} free); kept: {kept}"
    )


def space_needed(cfg: Config, frameworks: int, devices: int) -> int:
    """Bytes a run needs to write its first epoch: each framework's checkpoint twice (the new
    one is written beside the old), its weights, records and sample outputs, and the shared
    test samples and split. An estimate with a 50% margin, for the start-up check."""
    params = cfg.model.num_parameters()
    image = cfg.model.image_size**2 * cfg.model.in_channels * 4  # float32
    checkpoint = params * 4 * 3 + 2**16  # weights and Adam's two moments, plus the container
    steps = max(1, cfg.data.n_train // (cfg.train.batch_size * devices))
    records = steps * devices * 400 + 2**16  # a STEP row is about 300 bytes of JSON
    per_framework = 2 * checkpoint + params * 4 + records + 32 * image
    shared = 3 * 32 * image + (cfg.data.n_train + cfg.data.n_test) * 8
    return int(1.5 * (frameworks * per_framework + shared))


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start a run on a disk that cannot hold its first epoch (space_needed)."""
    free = free_bytes(folder)
    if free < needed:
        raise ConfigError(
            f"{folder}: {_size(free)} free, and the run needs about {_size(needed)} for its "
            "first epoch's records and checkpoints; free some space, choose another --results, "
            "or pass --no-space-check"
        )
