"""SLURM on a real controller: submitit jobs, the sbatch scripts, preemption, golden files.

The cluster is the session fixture `slurm_cluster` (tests/slurm_cluster.py): one node with the
machine's CPUs, so every job here runs the CPU paths with 2 tasks (gloo, TensorFlow workers).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import EXACT, EXACT_ATOL, launch, weights

from denoisebench.core.records import read_json, read_jsonl
from launch.slurm import SlurmRequest, render_sbatch, submitit_params, time_minutes

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
SMOKE = ["--profile", "smoke", "--epochs", "1", *EXACT]  # float64: compared to EXACT_ATOL
EXACT_ARGS = " ".join(EXACT)  # the same, in DENOISEBENCH_ARGS
CPU_JOB = ["--partition", "debug", "--time", "00:10:00", "--cpus-per-task", "1", "--cpu-workers"]


@pytest.fixture(scope="session")  # once, on the worker that runs its xdist group
def local_run(tmp_path_factory) -> Path:
    """The same training on this machine, one device with the global batch, in float64
    (helpers.EXACT): the reference."""
    root = tmp_path_factory.mktemp("local")
    proc = launch(*SMOKE, "--batch-size", "16", "--results", str(root), "--run-id", "ref")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "ref"


def assert_matches(run: Path, reference: Path, framework: str, atol: float = EXACT_ATOL) -> None:
    summary = read_json(run / framework / "summary.json")
    assert summary["status"] == "completed", summary.get("error")
    for a, b in zip(weights(run, framework), weights(reference, framework), strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


# --- generated submissions against golden files ------------------------------------------------

REQUEST = SlurmRequest(nodes=2, devices=4, partition="gpu", time="02:30:00", account="proj42")


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_sbatch_scripts_in_slurm_are_the_rendered_defaults(framework):
    assert (REPO / "slurm" / f"{framework}.sbatch").read_text() == render_sbatch(
        framework, SlurmRequest()
    )


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_rendered_sbatch_matches_golden(framework):
    assert render_sbatch(framework, REQUEST) == (GOLDEN / f"{framework}_2x4.sbatch").read_text()


def test_submitit_parameters_match_golden():
    params = {fw: submitit_params(fw, REQUEST) for fw in ("torch", "tf")}
    params["tf_cpu"] = submitit_params("tf", SlurmRequest(devices=2, gpus=False))
    assert params == json.loads((GOLDEN / "submitit_params.json").read_text())


def test_time_limits():
    assert [time_minutes(t) for t in ("30", "01:00:00", "00:10:30", "1-02:00:00")] == [
        30,
        60,
        11,
        1560,
    ]
    with pytest.raises(ValueError, match="--time"):
        time_minutes("an hour")


# --- real jobs -------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_submitit_job_with_two_tasks_matches_a_local_run(
    slurm_cluster, local_run, tmp_path, framework
):
    proc = launch(
        *SMOKE,
        "--framework",
        framework,
        "--slurm",
        "--gpus",
        "2",
        "--batch-size",
        "8",
        *CPU_JOB,
        "--wait",
        "--wait-timeout",
        "300",
        "--results",
        str(tmp_path),
        "--run-id",
        "sub",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "submitted SLURM job" in proc.stdout and str(tmp_path / "sub" / "slurm-logs") in proc.stdout
    )
    run = tmp_path / "sub"
    summary = read_json(run / framework / "summary.json")
    assert summary["world_size"] == 2 and summary["processes"] == 2
    assert_matches(run, local_run, framework)
    # every rank's rows were gathered into the one results folder
    assert {r["rank"] for r in read_jsonl(run / framework / "steps.jsonl")} == {0, 1}
    assert any((run / "slurm-logs").glob("*_log.out"))


@pytest.mark.slurm
def test_submitit_failure_is_reported_and_recorded(slurm_cluster, tmp_path):
    proc = launch(
        *SMOKE,
        "--framework",
        "torch",
        "--slurm",
        "--gpus",
        "2",
        "--batch-size",
        "8",
        *CPU_JOB,
        "--wait",
        "--wait-timeout",
        "300",
        "--results",
        str(tmp_path),
        "--run-id",
        "bad",
        env={"DENOISEBENCH_FAULT": "1:2"},
    )
    assert proc.returncode == 1
    assert "failed" in proc.stderr
    summary = read_json(tmp_path / "bad" / "torch" / "summary.json")
    assert summary["status"] == "failed"


@pytest.mark.slurm
def test_a_submitit_job_cancelled_by_scancel_is_recorded_interrupted(slurm_cluster, tmp_path):
    """submitit ignores SIGTERM; SLURM SIGKILLs the job KillWait (5) seconds after it. The run
    must not stay 'running': task 0 records it interrupted, resumable, on the SIGTERM. Each
    epoch takes at least 3 s (DENOISEBENCH_EVAL_DELAY_S), so the job is still training when
    SLURM kills it, and the resumed job has only a few epochs left even on a busy machine."""
    slow = {"DENOISEBENCH_EVAL_DELAY_S": "3"}
    proc = launch(
        "--profile", "smoke", "--epochs", "10", "--framework", "torch", "--slurm",
        *CPU_JOB, "--results", str(tmp_path), "--run-id", "cancelled", env=slow,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [job_id] = re.findall(r"submitted SLURM job (\d+)", proc.stdout)
    fw_dir = tmp_path / "cancelled" / "torch"
    deadline = time.monotonic() + 300
    while len(read_jsonl(fw_dir / "epochs.jsonl")) < 1:  # training, past its start-up
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.5)
    slurm_cluster.run(["scancel", job_id])
    deadline = time.monotonic() + 60
    while slurm_cluster.run(["squeue", "-h", "-j", job_id], check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job_id} still queued after scancel"
        time.sleep(1)
    summary = read_json(fw_dir / "summary.json")
    assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM"), summary
    run = tmp_path / "cancelled"
    assert summary["resume_command"] == f"python -m launch --resume {run} --slurm"
    assert 1 <= summary["epochs_completed"] < 10

    # the resume command, on the cluster: the finished epochs are kept, the rest trained
    proc = launch(
        "--resume", str(run), "--slurm", *CPU_JOB, "--wait", "--wait-timeout", "600", env=slow
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = read_json(fw_dir / "summary.json")
    assert (summary["status"], summary["epochs_completed"]) == ("completed", 10)
    assert [h["status"] for h in summary["history"]] == ["interrupted"]
    assert [e["epoch"] for e in read_jsonl(fw_dir / "epochs.jsonl")] == list(range(10))
    [again] = re.findall(r"submitted SLURM job (\d+)", proc.stdout)
    assert "resuming after epoch" in (run / "slurm-logs" / f"{again}_0_log.out").read_text()


def sbatch_env(tmp_path: Path, extra_args: str) -> dict[str, str]:
    return {
        "DENOISEBENCH_PYTHON": sys.executable,
        "DENOISEBENCH_RESULTS": str(tmp_path / "results"),
        "DENOISEBENCH_ARGS": extra_args,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def render_cpu_script(framework: str, tmp_path: Path) -> Path:
    script = tmp_path / f"{framework}.sbatch"
    script.write_text(
        render_sbatch(
            framework,
            SlurmRequest(
                devices=2, gpus=False, partition="debug", time="00:10:00", cpus_per_task=1
            ),
        )
    )
    (tmp_path / "slurm-logs").mkdir()
    return script


@pytest.mark.slurm
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_sbatch_script_trains_with_two_workers(slurm_cluster, local_run, tmp_path, framework):
    script = render_cpu_script(framework, tmp_path)
    extra = f"--profile smoke --epochs 1 --batch-size 8 {EXACT_ARGS}"
    if framework == "tf":
        extra += " --tf-strategy multiworker"
    job = slurm_cluster.sbatch(
        "--wait", str(script), cwd=tmp_path, timeout=300, env=sbatch_env(tmp_path, extra)
    )
    log = next((tmp_path / "slurm-logs").glob(f"*-{job}.out")).read_text()
    assert slurm_cluster.job_state(job) == "COMPLETED", log[-3000:]
    run = tmp_path / "results" / f"slurm-{job}"
    assert_matches(run, local_run, framework)
    assert "results:" in log  # flushed to the log as written


@pytest.mark.slurm
def test_preempted_sbatch_job_requeues_and_resumes(slurm_cluster, tmp_path):
    """USR1 (what SLURM sends before the time limit) -> requeue -> resume; no epoch is lost."""
    script = render_cpu_script("torch", tmp_path)
    extra = f"--profile smoke --epochs 4 --batch-size 8 --limit 320 {EXACT_ARGS}"
    job = slurm_cluster.sbatch(str(script), cwd=tmp_path, env=sbatch_env(tmp_path, extra))
    run = tmp_path / "results" / f"slurm-{job}"
    deadline = time.monotonic() + 180
    while len(read_jsonl(run / "torch" / "epochs.jsonl")) < 1:
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.5)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"], timeout=300)
    log = next((tmp_path / "slurm-logs").glob(f"*-{job}.out")).read_text()
    assert slurm_cluster.job_state(job) == "COMPLETED", log[-3000:]
    assert "requeueing" in log and "--auto-resume" in log and "resuming after epoch" in log
    epochs = read_jsonl(run / "torch" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]

    # the same run without interruption ends on the same weights
    proc = launch(
        "--profile",
        "smoke",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--limit",
        "320",
        *EXACT,
        "--framework",
        "torch",
        "--gpus",
        "2",
        "--results",
        str(tmp_path),
        "--run-id",
        "straight",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(weights(run, "torch"), weights(tmp_path / "straight", "torch"), strict=True):
        np.testing.assert_allclose(a, b, atol=EXACT_ATOL, rtol=0)


@pytest.mark.slurm
def test_submitit_checkpoint_requeues_and_resumes(slurm_cluster, tmp_path):
    """submitit's preemption path: TrainTask.checkpoint() resubmits with resume=True."""
    import submitit

    from denoisebench.cluster.slurm_job import TrainTask
    from denoisebench.core.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(
        "smoke",
        {
            "train": {"epochs": "4", "batch_size": "8"},
            "data": {"limit": "320"},
            "runtime": {"precision": "float64"},  # helpers.EXACT
        },
    )
    (run / "config.json").write_text(cfg.to_json())
    executor = submitit.AutoExecutor(folder=tmp_path / "logs")
    executor.update_parameters(
        **submitit_params(
            "torch",
            SlurmRequest(
                devices=1, gpus=False, partition="debug", time="00:10:00", cpus_per_task=1
            ),
        )
    )
    job = executor.submit(TrainTask("torch", run))
    deadline = time.monotonic() + 180
    while len(read_jsonl(run / "torch" / "epochs.jsonl")) < 1:
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.5)
    job._interrupt()  # what SLURM's preemption signal does: submitit checkpoints and requeues
    deadline = time.monotonic() + 300
    while not job.done():
        assert time.monotonic() < deadline, f"job still {job.state}"
        time.sleep(1)
    summary = job.result()
    assert summary["status"] == "completed" and summary["epochs_completed"] == 4
    assert [e["epoch"] for e in read_jsonl(run / "torch" / "epochs.jsonl")] == [0, 1, 2, 3]
    assert "resuming after epoch" in job.stdout()

    # the same training without interruption ends on the same weights
    proc = launch(
        "--profile",
        "smoke",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--limit",
        "320",
        *EXACT,
        "--framework",
        "torch",
        "--results",
        str(tmp_path),
        "--run-id",
        "straight",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(weights(run, "torch"), weights(tmp_path / "straight", "torch"), strict=True):
        np.testing.assert_allclose(a, b, atol=EXACT_ATOL, rtol=0)
