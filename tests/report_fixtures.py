"""Helpers for tests/test_report.py: real tiny results, a headless Chromium, GPU-like records.

`make_results(root)` trains real tiny runs through the launcher (both frameworks, 2 repeats on
one device, and one run on 2 CPU workers), so the report reads what the trainers wrote.
`ensure_chromium()` installs Debian's chromium with apt-get when it is missing (waiting for a
dpkg lock held by someone else's install), and skips with the reason when that cannot work;
set DENOISEBENCH_REQUIRE_BROWSER=1 to fail instead. `add_gpu_records` writes GPU figures into
a copy of a CPU run (values made up, marked as such in the records) so the code paths that
only a GPU machine reaches (energy, power over time) are exercised here too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import apt_install, skip_or_fail
from helpers import launch as run_launch

from denoisebench.core.records import atomic_write_json, read_json, read_jsonl

REQUIRE_VAR = "DENOISEBENCH_REQUIRE_BROWSER"
BROWSERS = ("chromium", "chromium-browser")


def _skip_or_fail(reason: str) -> None:
    skip_or_fail(reason, REQUIRE_VAR)


def launch(*args: str, timeout: float = 300.0) -> None:
    """Run `python -m launch ARGS` like a user would; fail with its output if it fails."""
    proc = run_launch(*args, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"python -m launch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def make_results(root: Path) -> dict[str, Path]:
    """Tiny real runs: `rep` (2 repeats, 1 device) and `g2` (2 CPU workers), both frameworks."""
    common = ["--profile", "smoke", "--epochs", "2", "--results", str(root)]
    launch(*common, "--run-id", "rep", "--repeats", "2")
    launch(*common, "--run-id", "g2", "--gpus", "2")
    return {"rep": root / "rep", "g2": root / "g2"}


def chromium() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def ensure_chromium() -> str:
    """The path of a Chromium binary, installing Debian's package when none is found."""
    found = chromium()
    if found:
        return found
    if os.geteuid() != 0:
        _skip_or_fail("chromium missing and not root to install it")
    apt = shutil.which("apt-get")
    if apt is None:
        _skip_or_fail("chromium missing and no apt-get")
    apt_install(apt, ["chromium"], REQUIRE_VAR, install_timeout=600)
    found = chromium()
    if not found:
        _skip_or_fail("apt-get installed chromium, but no chromium binary is on PATH")
    return found


def dump_dom(browser: str, html_path: Path, timeout: float = 60.0) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="denoisebench-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # needed as root; the page is our own file
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",  # let the load event and its script run
            "--dump-dom",
            html_path.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        pytest.fail(f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def add_gpu_records(run_dir: Path, framework: str, energy_per_epoch_j: list[float]) -> None:
    """Turn one framework's CPU records in run_dir into GPU-like ones (made-up values).

    Fills the energy fields the trainers fill on a GPU (epochs, summary, devices.jsonl) and
    writes a gpu_samples.rank0.jsonl, so the report's energy and power code is exercised.
    """
    fw_dir = run_dir / framework
    epochs = read_jsonl(fw_dir / "epochs.jsonl")
    assert len(epochs) == len(energy_per_epoch_j)
    images = 0.0
    for rec, energy in zip(epochs, energy_per_epoch_j, strict=True):
        n = rec["throughput_img_s"] * rec["train_time_s"]
        images += n
        rec.update(
            gpu_energy_j=energy,
            gpu_energy_method="power_integration",
            gpu_energy_reason=None,
            gpu_energy_per_image_j=energy / n,
            gpu_mem_alloc_peak_gib=0.5,
            note="synthetic GPU figures written by tests/report_fixtures.py",
        )
    (fw_dir / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    (fw_dir / "devices.jsonl").write_text(
        "".join(
            json.dumps({"epoch": r["epoch"], "index": 0, "energy_j": r["gpu_energy_j"]}) + "\n"
            for r in epochs
        )
    )
    t0 = time.perf_counter()
    samples = [
        {"t_s": t0 + 0.1 * i, "wall": 0.0, "rank": 0, "device_index": 0, "power_w": 100.0 + i}
        for i in range(20)
    ]
    (fw_dir / "gpu_samples.rank0.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = read_json(fw_dir / "summary.json")
    total = float(sum(energy_per_epoch_j))
    summary.update(
        final=epochs[-1],
        gpu_energy_j=total,
        gpu_energy_per_image_j=total / images,
        gpu_energy_per_epoch_j=total / len(epochs),
        gpu_energy_method="power_integration",
        gpu_energy_reason=None,
        gpu_mem_alloc_peak_gib=0.5,
    )
    atomic_write_json(fw_dir / "summary.json", summary)
