"""Shared fixtures: small configs, a quiet TensorFlow, a reader of TensorBoard event files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import launch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def smoke_overrides() -> dict[str, dict[str, str]]:
    """Overrides on top of the smoke profile for in-process training tests."""
    return {"data": {"limit": "96"}, "train": {"epochs": "2", "batch_size": "16"}}


@pytest.fixture(scope="session")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both frameworks on one device with the global batch, 16 (one epoch of the smoke profile):
    the run that 2 devices with batch 8 must equal (test_distributed.py, test_horovod.py)."""
    root = tmp_path_factory.mktemp("single")
    proc = launch("--profile", "smoke", "--epochs", "1", "--batch-size", "16",
                  "--results", str(root), "--run-id", "one")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "one"


# Real one-node SLURM cluster (session fixture `slurm_cluster`) for tests marked `slurm`; Horovod
# built in the background for tests marked `horovod`, which run last (fixture `horovod_built`).
pytest_plugins = ["slurm_cluster", "horovod_wheel"]


@pytest.fixture
def read_board(monkeypatch: pytest.MonkeyPatch):
    """Reads a tensorboard/ folder: {tag: [(step, value), ...]} and the tags' descriptions.

    TensorBoard reads files through tensorboard.compat.tf, which imports TensorFlow where it is
    installed (7 s here); for this test its readers use tensorboard's own stub of it instead."""
    from tensorboard.backend.event_processing import (
        directory_watcher,
        event_file_loader,
        io_wrapper,
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat import tensorflow_stub

    for module in (directory_watcher, event_file_loader, io_wrapper):
        monkeypatch.setattr(module, "tf", tensorflow_stub)

    def read(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        points = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}
        return points, {t: acc.SummaryMetadata(t).summary_description for t in tags}

    return read
