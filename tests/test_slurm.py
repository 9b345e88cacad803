"""SLURM on a real controller: submitit jobs, the sbatch scripts, preemption, golden files.

The cluster is the session fixture `slurm_cluster` (tests/slurm_cluster.py): three nodes in
network namespaces on this machine's CPUs, so every job here runs the CPU paths (gloo,
TensorFlow workers). Jobs across several nodes are in test_multinode.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    CPU_JOB,
    EXACT,
    FOUR_EPOCHS,
    assert_matches,
    job_log,
    launch,
    refused_slurm_launch,
    render_cpu_script,
    sbatch_env,
    wait_for_epochs,
)

from denoisebench.core.records import read_json, read_jsonl
from launch.__main__ import main
from launch.sbatch import render_sbatch
from launch.slurm import SlurmRequest, devices_per_task, submitit_params, time_minutes

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
SMOKE = ["--profile", "smoke", "--epochs", "1", *EXACT]  # float64: compared to EXACT_ATOL


# --- generated submissions against golden files ------------------------------------------------

REQUEST = SlurmRequest(
    nodes=2,
    devices=4,
    partition="gpu",
    time="02:30:00",
    account="proj42",
    qos="high",
    constraint="a100|h100",
    mem="64G",
    extra=(("mail-type", "END,FAIL"), ("exclusive", None), ("comment", "paper run")),
)


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
    params["defaults"] = submitit_params("torch", SlurmRequest())
    assert params == json.loads((GOLDEN / "submitit_params.json").read_text())
    assert "slurm_partition" not in params["defaults"]  # SLURM's default partition


def test_submitit_writes_the_requested_options_into_its_script(tmp_path):
    """submitit takes the parameters by these names and writes them as #SBATCH lines."""
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**submitit_params("torch", REQUEST))
    text = executor._executor._make_submission_file_text("true", "uid")
    lines = set(text.splitlines())
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "#SBATCH --constraint='a100|h100'",  # sbatch reads the quotes as a shell would
        "#SBATCH --mem=64G",
        "#SBATCH --mail-type=END,FAIL",
        "#SBATCH --exclusive",
        "#SBATCH --comment='paper run'",
    ]:
        assert line in lines, text
    plain = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    plain.update_parameters(**submitit_params("torch", SlurmRequest()))
    assert "--partition" not in plain._executor._make_submission_file_text("true", "uid")


def test_horovod_asks_slurm_for_a_task_per_device_in_both_frameworks(tmp_path, capsys):
    """--engine horovod: submitit runs one task per device for TensorFlow too (a Horovod worker
    each, driving one device), where native TensorFlow on GPUs runs a task per node; the sbatch
    script's launcher line passes --engine horovod to every node's launcher."""
    req = replace(REQUEST, engine="horovod")
    assert [submitit_params(fw, req)["tasks_per_node"] for fw in ("torch", "tf")] == [4, 4]
    assert submitit_params("tf", REQUEST)["tasks_per_node"] == 1
    assert [devices_per_task(fw, req) for fw in ("torch", "tf")] == [1, 1]
    assert devices_per_task("tf", REQUEST) == 4
    out = tmp_path / "job.sbatch"
    argv = ["--framework", "tf", "--engine", "horovod", "--gpus", "2", "--sbatch-out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    script = out.read_text()
    assert "TensorFlow under Horovod (Gloo)" in script
    assert '-m launch --framework tf --engine horovod --gpus "$DEVICES"' in script
    assert "#SBATCH --ntasks-per-node=1" in script  # one launcher per node starts its workers


def test_sbatch_out_writes_qos_constraint_mem_and_passed_options(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    argv = ["--framework", "tf", "--sbatch-out", str(out), "--gpus", "2"]
    argv += ["--qos", "high", "--constraint", "a100", "--mem", "32G"]
    argv += ["--sbatch-option", "mail-type=END", "--sbatch-option=--exclusive"]
    assert main(argv) == 0, capsys.readouterr().err
    sbatch = [line for line in out.read_text().splitlines() if line.startswith("#SBATCH")]
    for line in ["--qos=high", "--constraint=a100", "--mem=32G", "--mail-type=END", "--exclusive"]:
        assert f"#SBATCH {line}" in sbatch
    assert not any("--partition" in line for line in sbatch)  # SLURM's default partition
    assert main([*argv, "--partition", "a100", "--sbatch-out", str(out)]) == 0
    assert "#SBATCH --partition=a100" in out.read_text().splitlines()


REFUSED = [
    # (--sbatch-option ..., what the one line says)
    ("nodes=2", "the launcher sets --nodes; use --nodes"),
    ("time=10", "use --time"),
    ("partition=a100", "use --partition"),
    ("gpus-per-node=2", "use --gpus"),
    ("ntasks-per-node=4", "use --gpus"),
    ("output=/tmp/x.out", "log files"),
    ("signal=USR1@60", "requeue"),
    ("gres=gpu:a100:2", "a GPU type with --constraint"),
    ("N=2", "an sbatch long option's name"),
    ("mail_type=END", "an sbatch long option's name"),
    ("bad key=1", "an sbatch long option's name"),
    ("=x", "an sbatch long option's name"),
    ("mail-type=END\n#SBATCH --wrap=id", "a value of"),
    ("comment=$(touch owned)", "a value of"),
    ("comment=it's", "a value of"),
    ("comment=", "a value of"),
]


@pytest.mark.parametrize(("option", "says"), REFUSED)
@pytest.mark.parametrize("how", ["--sbatch-out", "--slurm"])
def test_bad_sbatch_options_are_refused_in_one_line_before_anything_is_written(
    tmp_path, capsys, option, says, how
):
    err = refused_slurm_launch(tmp_path, capsys, how, "--sbatch-option", option)
    assert err.startswith("error: --sbatch-option ") and says in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--sbatch-option", "mail-type=END", "--sbatch-option", "mail-type=FAIL"],  # twice
        ["--mem", "8G", "--sbatch-option", "mem-per-gpu=8G"],  # SLURM takes one
        ["--qos", "high;id"],
        ["--constraint", "a100 h100"],
        ["--mem", "lots"],
        ["--mem", "8G\n#SBATCH --wrap=id"],
    ],
)
def test_bad_qos_constraint_and_mem_are_refused_in_one_line(tmp_path, capsys, argv):
    out = tmp_path / "x.sbatch"
    code = main(["--framework", "torch", "--sbatch-out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: --"), err
    assert not out.exists()


def run_script_here(script: Path, tmp_path: Path, env: dict[str, str]):
    """Run an sbatch script with bash, srun replaced by a stub that prints its arguments."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (fake / "srun").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    return subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env={**clean, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "devices"),
    [
        ({"SLURM_GPUS_ON_NODE": "3", "SLURM_GPUS_PER_NODE": "3"}, "3"),  # sbatch --gpus-per-node=3
        ({"SLURM_GPUS_PER_NODE": "a100:2"}, "2"),  # a typed request, the count after the type
        ({"SLURM_GPUS_ON_NODE": "8", "DEVICES_PER_NODE": "5"}, "5"),  # the override wins
        ({"SLURM_GPUS_ON_NODE": "0"}, "4"),  # no GPUs: the script's own count
        ({}, "4"),
    ],
)
def test_sbatch_script_takes_devices_per_node_from_slurm(tmp_path, env, devices):
    """--gpus-per-node alone is enough: the script reads the count SLURM sets for the job."""
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch("torch", REQUEST))
    proc = run_script_here(script, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[args.index("--gpus") + 1] == devices


def test_sbatch_script_refuses_a_device_count_that_is_not_one(tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch("torch", REQUEST))
    proc = run_script_here(script, tmp_path, {"DEVICES_PER_NODE": "four"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        "devices per node: 'four' is not a count of devices; set DEVICES_PER_NODE"
    )


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
    proc = denoisebench(
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
    # submitted with the installed command, so the hint names it, not `python -m launch`
    assert summary["resume_command"] == f"denoisebench --resume {run} --slurm"
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


def denoisebench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The installed `denoisebench` command (the venv's console script), output captured."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "denoisebench"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
    )


@pytest.mark.slurm
def test_qos_mem_and_passed_options_reach_slurm(slurm_cluster, tmp_path):
    """A script with no partition line, a QOS, memory and a passed-through option: SLURM runs
    it in its default partition with each of them. Its Python is `echo`, so the job prints the
    launcher's command (devices per node included) instead of training."""
    slurm_cluster.run(["sacctmgr", "-i", "add", "qos", "denoisebench"], check=False)
    req = SlurmRequest(
        devices=2, gpus=False, time="00:05:00", cpus_per_task=1, qos="denoisebench",
        mem="100M", extra=(("comment", "passed through"),),
    )  # fmt: skip
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch("torch", req))
    (tmp_path / "slurm-logs").mkdir()
    env = {"DENOISEBENCH_PYTHON": "echo"}
    job = slurm_cluster.sbatch("--wait", str(script), cwd=tmp_path, timeout=120, env=env)
    log = job_log(tmp_path, job)
    assert slurm_cluster.job_state(job) == "COMPLETED", log
    assert f"-m launch --framework torch --gpus 2 --run-id slurm-{job} " in log
    details = slurm_cluster.run(["scontrol", "show", "job", str(job)]).stdout
    for field in [
        f"Partition={slurm_cluster.partition}",
        "QOS=denoisebench",
        "MinMemoryNode=100M",
        "Comment=passed through",
    ]:
        assert field in details, details
    # a constraint reaches SLURM too: this node has no such feature
    script.write_text(render_sbatch("torch", replace(req, constraint="nosuchfeature")))
    proc = slurm_cluster.run(["sbatch", "--test-only", str(script)], check=False, cwd=tmp_path)
    assert proc.returncode != 0 and "Invalid feature specification" in proc.stderr


@pytest.mark.slurm
def test_preempted_sbatch_job_requeues_and_resumes(slurm_cluster, uninterrupted, tmp_path):
    """USR1 (what SLURM sends before the time limit) -> requeue -> resume; no epoch is lost,
    and the weights are those of one device without interruption."""
    script = render_cpu_script("torch", tmp_path)  # 2 CPU workers x batch 8
    extra = " ".join([*FOUR_EPOCHS, "--batch-size", "8"])
    job = slurm_cluster.sbatch(str(script), cwd=tmp_path, env=sbatch_env(tmp_path, extra))
    run = tmp_path / "results" / f"slurm-{job}"
    wait_for_epochs(run / "torch", 1)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"], timeout=300)
    log = job_log(tmp_path, job)
    assert slurm_cluster.job_state(job) == "COMPLETED", log[-3000:]
    assert "requeueing" in log and "--auto-resume" in log and "resuming after epoch" in log
    epochs = read_jsonl(run / "torch" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert_matches(run, uninterrupted, "torch")


@pytest.mark.slurm
def test_a_submitit_job_resumes_after_a_preemption_and_an_unannounced_requeue(
    slurm_cluster, uninterrupted, tmp_path
):
    """Two requeues of one submitit job: a preemption (SIGTERM then USR2, as submitit's own
    _interrupt sends them), where TrainTask.checkpoint() resubmits with resume=True; then
    `scontrol requeue` (an admin, a node failure), where checkpoint() never runs and SLURM
    reruns the original task, which must resume all the same (SLURM_RESTART_COUNT). Every
    epoch is kept, and the weights are those of one device without interruption."""
    proc = launch(
        *FOUR_EPOCHS, "--framework", "torch", "--batch-size", "16", "--slurm", *CPU_JOB,
        "--results", str(tmp_path), "--run-id", "requeued",
        env={"DENOISEBENCH_EVAL_DELAY_S": "2"},  # 4 epochs of at least 2 s: time to requeue
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [job] = re.findall(r"submitted SLURM job (\d+)", proc.stdout)
    fw_dir = tmp_path / "requeued" / "torch"
    for requeue in (["scancel", job, "--signal", "SIGTERM"], ["scontrol", "requeue", job]):
        wait_for_epochs(fw_dir, len(read_jsonl(fw_dir / "epochs.jsonl")) + 1)
        slurm_cluster.run(requeue)
        if requeue[0] == "scancel":
            slurm_cluster.run(["scancel", job, "--signal", "USR2"])
        # until the requeued attempt runs: its start moves the interruption into `history`
        deadline = time.monotonic() + 120
        while len((read_json(fw_dir / "summary.json") or {}).get("history", [])) < (
            1 if requeue[0] == "scancel" else 2
        ):
            assert time.monotonic() < deadline, read_json(fw_dir / "summary.json")
            time.sleep(0.5)
    deadline = time.monotonic() + 300
    while read_json(fw_dir / "summary.json").get("status") != "completed":
        assert time.monotonic() < deadline, read_json(fw_dir / "summary.json")
        time.sleep(1)
    summary = read_json(fw_dir / "summary.json")
    assert [e["epoch"] for e in read_jsonl(fw_dir / "epochs.jsonl")] == [0, 1, 2, 3]
    assert [h["status"] for h in summary["history"]] == ["interrupted", "interrupted"]
    log = (tmp_path / "requeued" / "slurm-logs" / f"{job}_0_log.out").read_text()
    assert log.count("resuming after epoch") == 2, log[-3000:]
    assert_matches(fw_dir.parent, uninterrupted, "torch")


def test_a_job_sbatch_refuses_ends_in_one_line_and_removes_the_new_run(
    tmp_path, capsys, monkeypatch
):
    """sbatch installed but no controller to reach: submitit raised FailedJobError (a traceback
    of about 12 frames) and left the new run's folder behind. Here sbatch and srun are stand-ins
    that fail as sbatch does (its message, seen on the test cluster with SlurmctldPort=1)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    said = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    results = tmp_path / "results"
    argv = ["--slurm", "--profile", "smoke", "--framework", "torch", "--cpu-workers"]
    assert main([*argv, "--results", str(results), "--run-id", "r"]) == 1
    err = capsys.readouterr().err  # sbatch's own line (submitit passes it on), then ours
    assert err.strip().splitlines()[-1] == (
        f"error: SLURM did not take the torch job: {said}; {results / 'r'} removed (nothing "
        "was submitted)"
    )
    assert "Traceback" not in err
    assert not (results / "r").exists()
    assert main([*argv, "--repeats", "2", "--results", str(results)]) == 2
    assert "submit a sweep instead" in capsys.readouterr().err
    assert list(results.iterdir()) == []
