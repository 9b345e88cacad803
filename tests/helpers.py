"""Helpers the tests share: run the launcher as a user would, read a run's final weights,
install a Debian package a test needs (or skip, or fail where CI requires it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# PyTorch weights after the same steps on N devices with batch b and on one device with batch
# N*b: the gradient of the whole batch is summed in another order (two half-batches, then the
# all-reduce), which differs in float32 rounding; Adam divides each step by sqrt(v), so for a
# weight whose gradient is near zero that rounding becomes a visible share of the step. On one
# x86-64 machine 45 of 864 weights differed by up to 3.5e-6 after 9 steps (weights move by about
# 1e-2 in those steps), so 1e-6 passed on some CPUs and failed on others.
TORCH_SPLIT_ATOL = 2e-5


def launch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`python -m launch ARGS` from the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def weights(run: Path, framework: str) -> list[np.ndarray]:
    """A run's final weights.npz, in the canonical layout order."""
    with np.load(Path(run) / framework / "weights.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def skip_or_fail(reason: str, require_var: str) -> None:
    """Skip with the reason, or fail when `require_var` says the thing must be there (CI)."""
    if os.environ.get(require_var, "") not in ("", "0"):
        pytest.fail(f"{reason} (and {require_var} is set)", pytrace=False)
    pytest.skip(reason)


def apt_install(
    apt: str,
    packages: Sequence[str],
    require_var: str,
    install_timeout: float = 900,
    progress: Callable[[str], None] = lambda _message: None,
) -> None:
    """`apt-get update` then `apt-get install` Debian packages; skip or fail with the output.

    Waits for a dpkg lock held by someone else's install instead of failing at once.
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=180"]
    steps = [
        ([apt, *lock, "update", "-q"], 300),
        (
            [apt, *lock, "install", "-y", "-q", "--no-install-recommends", *packages],
            install_timeout,
        ),
    ]
    for cmd, timeout in steps:
        progress("running " + " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            skip_or_fail(f"{' '.join(cmd)} did not finish in {timeout} s", require_var)
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            skip_or_fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{output}", require_var)


INJECTED_FAULT = {"DENOISEBENCH_FAULT": "1:11"}
"""Rank 1 raises at step 11, in the second epoch (core.distributed.maybe_inject_fault)."""


def assert_failed_fast_on_the_fault(
    proc: subprocess.CompletedProcess, elapsed: float, fw_dir: Path, process: str
) -> dict:
    """A job run with INJECTED_FAULT failed within 2 minutes with rank 1's own error, named
    `process` in fw_dir/summary.json (not a peer's broken collective), after 1 finished epoch.
    Returns the summary."""
    from denoisebench.core.records import read_json

    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "injected fault" in out and "on rank 1 at step 11" in out
    assert elapsed < 120, f"took {elapsed:.0f}s to fail"
    summary = read_json(fw_dir / "summary.json")
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1
    assert summary["failed_process"] == process
    assert summary["error"] == (
        "RuntimeError: injected fault (DENOISEBENCH_FAULT=1:11) on rank 1 at step 11"
    )
    return summary
