"""Helpers the tests share: run the launcher as a user would, read a run's final weights,
install a Debian package a test needs (or skip, or fail where CI requires it)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisebench.core.records import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
# The equivalence tests ("N devices equal one device", "resumed equals uninterrupted", XLA equals
# eager) train in float64 (EXACT) and compare weights to EXACT_ATOL; test_planted_bugs.py shows
# that they still catch the bugs they exist for. Why not float32: the gradient of the global
# batch, summed in another order (two half-batches, then the all-reduce; or another thread
# count), rounds differently, by about the unit roundoff u32 = 2**-24 of the terms summed, and
# Adam's step lr * m / (sqrt(v) + eps) turns that rounding into a visible share of a step for a
# weight whose gradient is near zero. Measured after one smoke epoch (9 steps): 3.5e-6 on an
# AVX2 CPU, 2.8e-5 on an AVX-512 CPU, 3.6e-5 between 1 and 2 threads of the same one-device
# run; a float32 tolerance tuned on one CPU model fails on another. float64's unit roundoff,
# u64 = 2**-53, is 2**29 (5.4e8) times finer: the same amplification gives at most
# 3.6e-5 / 5.4e8 = 7e-14 (measured on AMD EPYC, AVX-512: 9e-17 for 2 DDP ranks against one
# device, 3e-17 for 1 against 2 threads). EXACT_ATOL = 1e-9 is 1e4 times that bound and a
# millionth of one Adam step (lr = 1e-3), while the planted bugs move weights by 3e-3 or more.
EXACT = ("--set", "runtime.precision=float64")
"""Launcher options of the equivalence tests' exact mode (config.RuntimeConfig.precision)."""
EXACT_ATOL = 1e-9


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


def assert_same_training(a: Path, b: Path, framework: str, atol: float = EXACT_ATOL) -> None:
    """Same weights after the same 9 steps (both runs float64), and the same epoch figures."""
    assert read_json(a / framework / "summary.json")["status"] == "completed"
    wa, wb = weights(a, framework), weights(b, framework)
    assert wa[0].dtype == wb[0].dtype == np.float64, "equivalence runs are float64 (EXACT)"
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)
    ea, eb = read_jsonl(a / framework / "epochs.jsonl"), read_jsonl(b / framework / "epochs.jsonl")
    assert [e["steps"] for e in ea] == [e["steps"] for e in eb] == [9]
    assert abs(ea[-1]["train_loss"] - eb[-1]["train_loss"]) < 1e-4
    assert abs(ea[-1]["test_mae"] - eb[-1]["test_mae"]) < 1e-4


def jpeg_bytes(rng: np.random.Generator, width: int = 64, height: int = 64) -> bytes:
    """A JPEG of a smooth gradient plus noise, so that it looks like a photograph to the codec."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 3, yy * 3, (xx + yy) * 2], axis=-1)
    pixels = np.clip(base + rng.integers(0, 40, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip of `members` (name -> bytes), stored as EuroSAT.zip's are, or compressed."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


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


def gpu_node(gpus: int) -> dict:
    """measure.environment.gpu_info's answer on a node of `gpus` H100s (80 GiB, driver 580)."""
    return {
        "gpus": [
            {"index": i, "name": "H100", "uuid": f"GPU-{i}aa{i}-ffff", "memory_total_gib": 80.0,
             "compute_capability": [9, 0]}
            for i in range(gpus)
        ],
        "driver": "580.1",
        "node_gpus": gpus,
    }  # fmt: skip


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


def refused_slurm_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture, how: str, *options: str
) -> str:
    """`python -m launch` (in-process) with SLURM `options`, by `how` (--sbatch-out or --slurm):
    asserts exit 2, one error line and nothing written (no script, no run folder, so the run
    id stays free); returns the line."""
    from launch.__main__ import main

    target = ["--sbatch-out", str(tmp_path / "x.sbatch")] if how == "--sbatch-out" else [how]
    argv = ["--framework", "torch", "--results", str(tmp_path / "results"), *target]
    code = main([*argv, "--run-id", "r", *options])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: "), err
    assert list(tmp_path.iterdir()) == []
    return err


# --- SLURM jobs (test_slurm.py, test_multinode.py) ---------------------------------------------

SLURM_EXACT = (*EXACT, "--set", "runtime.intra_op_threads=1")
"""EXACT with one thread a process, for comparisons with SLURM jobs: a task there gets
SLURM_CPUS_PER_TASK (1) threads, and float64 sums over one thread and over two differ in their
last bits, which Adam grows to 1e-7 in 4 epochs (seen here): both sides pinned alike."""
EXACT_ARGS = " ".join(SLURM_EXACT)
"""SLURM_EXACT in DENOISEBENCH_ARGS (the sbatch scripts' extra options)."""
FOUR_EPOCHS = ["--profile", "smoke", "--epochs", "4", "--limit", "320", *SLURM_EXACT]
"""The interrupted-and-resumed SLURM jobs' training (4 epochs of 18 steps at global batch 16),
as conftest's `uninterrupted` trains it on one device without interruption."""
CPU_JOB = ["--time", "00:10:00", "--cpus-per-task", "1", "--cpu-workers"]
"""--slurm options of a small CPU job; no --partition: SLURM's default, the test cluster's one."""


def assert_matches(run: Path, reference: Path, framework: str, atol: float = EXACT_ATOL) -> None:
    """`run` completed and ended on `reference`'s weights (both in float64: EXACT)."""
    summary = read_json(run / framework / "summary.json")
    assert summary["status"] == "completed", summary.get("error")
    for a, b in zip(weights(run, framework), weights(reference, framework), strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def sbatch_env(tmp_path: Path, extra_args: str) -> dict[str, str]:
    """The environment an sbatch script of the suite runs under in the tests: this Python,
    results in tmp_path/results, `extra_args` as DENOISEBENCH_ARGS."""
    return {
        "DENOISEBENCH_PYTHON": sys.executable,
        "DENOISEBENCH_RESULTS": str(tmp_path / "results"),
        "DENOISEBENCH_ARGS": extra_args,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def job_log(tmp_path: Path, job: int | str) -> str:
    """The log of sbatch job `job` rendered by render_cpu_script (slurm-logs/<name>-<job>.out)."""
    return next((tmp_path / "slurm-logs").glob(f"*-{job}.out")).read_text()


def render_cpu_script(framework: str, tmp_path: Path, nodes: int = 1, devices: int = 2) -> Path:
    """The framework's sbatch script for `nodes` x `devices` CPU workers, in tmp_path (with the
    slurm-logs/ folder it writes to)."""
    from launch.sbatch import render_sbatch
    from launch.slurm import SlurmRequest

    req = SlurmRequest(nodes=nodes, devices=devices, gpus=False, time="00:10:00", cpus_per_task=1)
    script = tmp_path / f"{framework}.sbatch"
    script.write_text(render_sbatch(framework, req))
    (tmp_path / "slurm-logs").mkdir(exist_ok=True)
    return script


def wait_for_epochs(fw_dir: Path, n: int, timeout: float = 240) -> None:
    """Until fw_dir/epochs.jsonl holds n epochs; a failed assertion after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(read_jsonl(fw_dir / "epochs.jsonl")) < n:
        assert time.monotonic() < deadline, f"fewer than {n} epochs recorded in {timeout} s"
        time.sleep(0.3)
