"""A stop signal to `claims` (launch/claims.py) reaches the launch it started, which records
where it was; claims waits for it, says what finished and how to continue, and leaves nothing
running (launch.supervise.run_launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from denoisebench.core.records import read_summary

STOP_BOUND_S = 60
"""From the signal to claims' exit: the trainer's epoch in flight and its records (a few
seconds), the launcher's 10 s grace, and a busy 2-core machine."""


def processes_naming(root: Path) -> list[int]:
    """Live processes whose command line names `root` (the launch and its trainers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if entry.name.isdigit() and str(root).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_claims_run_stops_its_training_and_says_how_to_continue(tmp_path, stop):
    """Before: SIGTERM ended claims without a word while its launch, reparented to PID 1,
    kept training (and a rerun was refused by the run lock); Ctrl-C printed a 24-line
    KeyboardInterrupt traceback."""
    root = tmp_path / "c"
    argv = ["claims", "--data", "builtin", "--limit", "160", "--batch-size", "16",
            "--epochs", "30", "--seeds", "0", "--baseline-images", "0",
            "--results", str(tmp_path), "--run-id", "c"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", *argv], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    epochs = root / "native" / "torch" / "epochs.jsonl"
    deadline = time.monotonic() + 300
    while not (epochs.is_file() and epochs.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    os.kill(proc.pid, stop)  # claims alone, as a scheduler's SIGTERM or kill would
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=STOP_BOUND_S + 30)
    assert time.monotonic() - sent < STOP_BOUND_S
    assert proc.returncode == 128 + stop, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"claims: stopped by {stop.name} during the native-init runs" in err
    assert f"continue with: python -m launch {' '.join(argv)}" in err
    assert processes_naming(root) == []
    assert read_summary(root / "native", "torch")["status"] == "interrupted"
