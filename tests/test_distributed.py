"""Data-parallel training on CPU: N workers with batch b equal one worker with batch N*b.

Every run here goes through `python -m launch` on the smoke profile (148 training images):
torchrun with 2 gloo ranks, MirroredStrategy over 2 logical CPUs, MultiWorkerMirroredStrategy
with 2 workers on 127.0.0.1, and a 2-node torchrun (static) rendezvous on localhost. The equivalence
checks use the exact mode: float64 runs, weights equal to helpers.EXACT_ATOL (its comment
derives it; test_planted_bugs.py shows these checks fail on real data-parallel bugs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    EXACT,
    INJECTED_FAULT,
    assert_failed_fast_on_the_fault,
    assert_same_training,
)

from denoisebench.core.records import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
EPOCH1 = ["--profile", "smoke", "--epochs", "1"]
EXACT1 = [*EPOCH1, *EXACT]  # the equivalence runs: float64, like the `single` reference


def launch(*args: str, env: dict[str, str] | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "launch", *args]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if not wait:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def test_torch_ddp_two_ranks_equals_one_device(single, tmp_path):
    proc = launch(
        *EXACT1,
        "--framework",
        "torch",
        "--gpus",
        "2",
        "--batch-size",
        "8",
        "--results",
        str(tmp_path),
        "--run-id",
        "ddp",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running 2 CPU workers instead" in proc.stdout
    assert "global batch 16 (8 per device)" in proc.stdout
    run = tmp_path / "ddp"
    assert_same_training(run, single, "torch")
    summary = read_json(run / "torch" / "summary.json")
    assert (summary["strategy"], summary["world_size"], summary["global_batch"]) == ("ddp", 2, 16)
    # one row per rank and step, gathered by rank 0
    rows = read_jsonl(run / "torch" / "steps.jsonl")
    assert sorted({(r["rank"], r["step"]) for r in rows}) == [
        (k, s) for k in (0, 1) for s in range(9)
    ]
    assert all(r["batch_size"] == 8 for r in rows)


def test_tf_mirrored_two_logical_cpus_equals_one_device(single, tmp_path):
    proc = launch(
        *EXACT1,
        "--framework",
        "tf",
        "--gpus",
        "2",
        "--batch-size",
        "8",
        "--results",
        str(tmp_path),
        "--run-id",
        "mirrored",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "mirrored"
    summary = read_json(run / "tf" / "summary.json")
    assert (summary["strategy"], summary["world_size"], summary["processes"]) == ("mirrored", 2, 1)
    assert_same_training(run, single, "tf")
    rows = read_jsonl(run / "tf" / "steps.jsonl")
    assert {(r["rank"], r["replicas"], r["batch_size"]) for r in rows} == {(0, 2, 16)}


def test_tf_multi_worker_two_workers_equals_one_device(single, tmp_path):
    proc = launch(
        *EXACT1,
        "--framework",
        "tf",
        "--gpus",
        "2",
        "--batch-size",
        "8",
        "--tf-strategy",
        "multiworker",
        "--results",
        str(tmp_path),
        "--run-id",
        "mwms",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "mwms"
    summary = read_json(run / "tf" / "summary.json")
    assert (summary["strategy"], summary["processes"]) == ("multi_worker_mirrored", 2)
    assert_same_training(run, single, "tf")
    rows = read_jsonl(run / "tf" / "steps.jsonl")
    assert sorted({(r["rank"], r["step"]) for r in rows}) == [
        (k, s) for k in (0, 1) for s in range(9)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torch_two_node_rendezvous_on_localhost(single, tmp_path):
    port = str(free_port())
    common = [
        *EXACT1,
        "--framework",
        "torch",
        "--gpus",
        "1",
        "--nodes",
        "2",
        "--batch-size",
        "8",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "--results",
        str(tmp_path),
        "--run-id",
        "twonode",
    ]
    node0 = launch(*common, "--node-rank", "0", wait=False)
    node1 = launch(*common, "--node-rank", "1", wait=False)
    try:
        out0, _ = node0.communicate(timeout=300)
        out1, _ = node1.communicate(timeout=300)
    finally:  # a hung rendezvous must not outlive the test
        for node in (node0, node1):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert node0.returncode == 0 and node1.returncode == 0, out0 + out1
    # torchrun's static rendezvous: node 0's launcher hosts the store, ranks node-major
    assert f"--master-addr=127.0.0.1 --master-port={port}" in out0 and "--node-rank=1" in out1
    assert "--rdzv-backend" not in out0 + out1
    run = tmp_path / "twonode"
    assert_same_training(run, single, "torch")
    assert read_json(run / "torch" / "summary.json")["world_size"] == 2
    assert "results:" in out0 and "results:" not in out1  # node 0 reports


@pytest.mark.parametrize(
    ("framework", "extra", "process"),
    [
        ("torch", [], "torch rank 1"),
        ("tf", ["--tf-strategy", "multiworker"], "tf worker 1"),
        ("tf", [], "tf"),  # MirroredStrategy: both replicas in one process
    ],
    ids=["torch-ddp", "tf-multiworker", "tf-mirrored"],
)
def test_a_crashing_rank_fails_the_job_fast_and_keeps_results(tmp_path, framework, extra, process):
    t0 = time.monotonic()
    proc = launch(
        "--profile",
        "smoke",
        "--framework",
        framework,
        "--gpus",
        "2",
        "--batch-size",
        "8",
        *extra,
        "--results",
        str(tmp_path),
        "--run-id",
        "crash",
        env=INJECTED_FAULT,
    )
    elapsed = time.monotonic() - t0
    summary = assert_failed_fast_on_the_fault(
        proc, elapsed, tmp_path / "crash" / framework, process
    )
    knock_on = summary["knock_on_errors"]
    assert all(k["process"] != process and "injected" not in k["error"] for k in knock_on)
    if process != "tf":  # two processes: the other one's error, if it had one, is listed
        assert {k["process"] for k in knock_on} <= {process.replace("1", "0")}
    assert summary["signal"] is None and summary["resume_command"] is None
    # the finished epoch and its steps are kept
    assert [e["epoch"] for e in read_jsonl(tmp_path / "crash" / framework / "epochs.jsonl")] == [0]


def test_a_rank_killed_by_sigkill_is_named_as_the_cause(tmp_path):
    """A rank the out-of-memory killer ends records nothing itself; the torchrun wrapper records
    it, so the summary names it, not its peer's broken collective. (The launcher's own record
    of a killed process: test_interrupt.py, test_run_group_names_a_killed_process_....)"""
    proc = launch(
        "--profile", "smoke", "--framework", "torch", "--gpus", "2", "--batch-size", "8",
        "--results", str(tmp_path), "--run-id", "killed",
        env={"DENOISEBENCH_FAULT": "1:11:kill"},  # step 11: in the second epoch
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    summary = read_json(tmp_path / "killed" / "torch" / "summary.json")
    assert (summary["status"], summary["failed_process"]) == ("failed", "torch rank 1"), summary
    assert summary["error"].startswith("killed by SIGKILL: most often the kernel's out-of-memory")
    assert all(k["process"] == "torch rank 0" for k in summary["knock_on_errors"])
    assert summary["epochs_completed"] == 1


@pytest.mark.parametrize(
    "message",
    [
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error",
        "Application timeout caused pair closure",  # seen: the link-down test's rank 0, busy
        "Connection closed by peer [10.213.1.3]:53461",
    ],
)
def test_every_gloo_failure_of_a_collective_is_one(message):
    """Such a rank waits for the others to check in, so the lost node is named; with 'pair
    closure' it did not, and the failure read 'RuntimeError: Application timeout ...'."""
    from denoisebench.torch_backend.lost_peers import collective_failed

    assert collective_failed(RuntimeError(message))
    assert not collective_failed(RuntimeError("injected fault on rank 1 at step 11"))
