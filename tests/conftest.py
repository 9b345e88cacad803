"""Shared fixtures: small configs, a quiet TensorFlow, a reader of TensorBoard event files."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
from helpers import EXACT, FOUR_EPOCHS, SLURM_EXACT, launch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every training command ends with its report (launch --report); here only the tests that check
# that ask for it (--report), since a report costs seconds per run and most tests make hundreds
# of runs between them. Inherited by every launcher the tests start, SLURM jobs included.
os.environ["DENOISEBENCH_REPORT"] = "0"


@pytest.fixture
def smoke_overrides() -> dict[str, dict[str, str]]:
    """Overrides on top of the smoke profile for in-process training tests."""
    return {"data": {"limit": "96"}, "train": {"epochs": "2", "batch_size": "16"}}


@pytest.fixture(scope="session")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both frameworks on one device with the global batch, 16 (one epoch of the smoke profile,
    in float64: helpers.EXACT): the run that 2 devices with batch 8 must equal
    (test_distributed.py, test_horovod.py, test_planted_bugs.py).

    Trained once per test run: the xdist workers share their base folder's parent, and the
    first one here trains under a lock while the others wait for it and reuse its run."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, run = shared / "single", shared / "single" / "one"
    with open(shared / "single.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "trained").exists():
            shutil.rmtree(root, ignore_errors=True)  # an earlier worker's failed attempt
            proc = launch("--profile", "smoke", "--epochs", "1", "--batch-size", "16", *EXACT,
                          "--results", str(root), "--run-id", "one")  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr
            (root / "trained").touch()
    return run


@pytest.fixture(scope="session")  # once, on the worker that runs its xdist group
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SLURM tests' training on this machine, one device with the global batch (16), one
    epoch of the smoke profile in float64 (helpers.EXACT): what every topology must equal
    (test_slurm.py, test_multinode.py)."""
    root = tmp_path_factory.mktemp("local")
    proc = launch("--profile", "smoke", "--epochs", "1", *SLURM_EXACT, "--batch-size", "16",
                  "--results", str(root), "--run-id", "ref")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "ref"


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helpers.FOUR_EPOCHS on one device with batch 16, without interruption: the weights every
    SLURM job that was preempted, requeued or lost a node must end on (torch only)."""
    root = tmp_path_factory.mktemp("straight")
    proc = launch(*FOUR_EPOCHS, "--framework", "torch", "--batch-size", "16",
                  "--results", str(root), "--run-id", "straight")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "straight"


# The suite runs in parallel workers (pytest-xdist; pyproject's addopts: -n auto --dist
# loadgroup). Tests that share an expensive fixture go to one worker, which builds it once: a
# second SLURM cluster, or a second copy of the report's runs, would cost more than it saves.
SHARED_FIXTURE_GROUPS = {
    "slurm_cluster": "slurm",  # one real SLURM controller for the session
    "local_run": "slurm",  # the SLURM tests' reference runs
    "uninterrupted": "slurm",
    "built": "report",  # test_report.py's tiny runs and report
    "horovod_run": "horovod",  # test_horovod.py's run under horovodrun
}
MAX_WORKERS = 4
"""Most tests start two to four processes of their own: more workers than this only queue."""


FIRST_GROUPS = ("slurm", "report")
"""Scheduled first, in this order: the longest units of work (SLURM about 8 minutes on 2 cores,
the report 2), so that the other worker runs the short tests beside them instead of waiting
for them at the end. Horovod's tests stay last (tests/horovod_wheel.py)."""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups from the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {}
    for item in items:
        groups = {SHARED_FIXTURE_GROUPS[f] for f in item.fixturenames if f in SHARED_FIXTURE_GROUPS}
        if item.get_closest_marker("slurm"):
            groups.add("slurm")
        for group in sorted(groups)[:1]:
            item.add_marker(pytest.mark.xdist_group(group))
            if group in FIRST_GROUPS:
                rank[item] = FIRST_GROUPS.index(group)
    items.sort(key=lambda item: rank.get(item, len(FIRST_GROUPS)))  # stable


@pytest.hookimpl(optionalhook=True)  # a GPU node's pytest may have no pytest-xdist to call it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers even on one or two cores (the tests wait on their subprocesses,
    SLURM and sockets for about half of their time), at most MAX_WORKERS."""
    return max(2, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


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
