"""Jobs across several nodes of the test cluster: both frameworks at once, the same training on
every topology, two jobs sharing nodes, a node lost (its processes SIGKILLed, its link cut),
and a requeue nobody announced.

The cluster is the session fixture `slurm_cluster` (tests/slurm_cluster.py): nodes n9, n10, n11,
each in its own network namespace with its own address and hostname, 8 CPUs and 4 fake GPUs
declared per node (all of them share this machine's cores). Every job trains on CPU workers in
float64 (helpers.EXACT), so "the same training" is checked to EXACT_ATOL against one device with
the global batch (`local_run`, tests/conftest.py). `pytest -m multinode` runs just these.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    CPU_JOB,
    EXACT_ARGS,
    FOUR_EPOCHS,
    SLURM_EXACT,
    assert_matches,
    job_log,
    launch,
    render_cpu_script,
    sbatch_env,
    wait_for_epochs,
)

from denoisebench.core.records import read_json, read_jsonl

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

SMOKE = ["--profile", "smoke", "--epochs", "1", *SLURM_EXACT]
TIMEOUT_S = 20
"""The collective timeout the fault tests set (runtime.collective_timeout_s): a peer that is
gone is noticed this long after it went."""
MID_EPOCH_S = 0.5
"""A fault this long after an epoch's record lands in the next epoch's steps (18 steps of
global batch 16 take about 1.3 s on one of these cores)."""
LOST_NODE_BOUND_S = 60
"""What the fault tests hold the job to, from the fault to the end of the step that lost a node:
TIMEOUT_S for the survivors' collective, 5 s for their check-in (torch_backend/lost_peers.py),
15 s of grace in the sbatch script before it stops waiting for srun, and 20 s for the processes
to end and the log line to be written on a busy machine."""


def job_windows(cluster, job_ids: list[str]) -> list[tuple[str, str]]:
    """Each job's (start, end) as sacct records them (ISO times, one-second resolution)."""
    deadline = time.monotonic() + 30
    while True:
        out = cluster.run(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,Start,End"]
        ).stdout
        rows = {r[0]: (r[1], r[2]) for r in (line.split("|") for line in out.splitlines())}
        if all(j in rows and rows[j][1] not in ("Unknown", "") for j in job_ids):
            return [rows[j] for j in job_ids]
        assert time.monotonic() < deadline, f"sacct has no end for {job_ids}: {out}"
        time.sleep(1)


def assert_overlapped(cluster, job_ids: list[str]) -> None:
    windows = job_windows(cluster, job_ids)
    latest_start = max(start for start, _ in windows)
    earliest_end = min(end for _, end in windows)
    assert latest_start < earliest_end, f"the jobs ran one after the other: {windows}"


def test_slurm_trains_both_frameworks_at_once_on_two_nodes_each(slurm_cluster, local_run, tmp_path):
    """`--slurm --nodes 2 --gpus 2` with the default --framework both: two jobs, side by side,
    each 2 nodes x 2 CPU workers with batch 4, the same global batch (16) and the same training
    as one device with batch 16."""
    proc = launch(
        *SMOKE, "--slurm", "--nodes", "2", "--gpus", "2", "--batch-size", "4", *CPU_JOB,
        "--wait", "--wait-timeout", "600", "--results", str(tmp_path), "--run-id", "both",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_ids = re.findall(r"submitted SLURM job (\d+)", proc.stdout)
    assert len(job_ids) == 2, proc.stdout
    assert_overlapped(slurm_cluster, job_ids)
    run = tmp_path / "both"
    for framework in ("torch", "tf"):
        summary = read_json(run / framework / "summary.json")
        assert (summary["world_size"], summary["global_batch"]) == (4, 16), framework
        assert_matches(run, local_run, framework)
        # rank 0 (worker 0) writes the records from SLURM's node 0, whatever the names sort as
        assert read_json(run / framework / "environment.json")["hostname"] == "n9", framework
        # each node's first rank sampled its node: one entry per node, named by its host
        hosts = [h["host"] for h in summary["conditions"]["hosts"]]
        assert hosts == ["n9", "n10"], framework


def test_sbatch_jobs_of_both_frameworks_share_two_nodes(slurm_cluster, local_run, tmp_path):
    """The two sbatch scripts at once on the same two nodes (n9, n10), 2 nodes x 1 worker each:
    their ports must not collide (both would use 29500 on n9), and each trains as one device."""
    extra = f"--profile smoke --epochs 1 --batch-size 8 {EXACT_ARGS}"
    env = sbatch_env(tmp_path, extra)
    jobs = {
        fw: slurm_cluster.sbatch(
            "--nodelist=n9,n10",
            str(render_cpu_script(fw, tmp_path, nodes=2, devices=1)),
            cwd=tmp_path,
            env=env,
        )
        for fw in ("torch", "tf")
    }
    for fw, job in jobs.items():
        slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"], timeout=400)
        assert slurm_cluster.job_state(job) == "COMPLETED", job_log(tmp_path, job)[-3000:]
        run = tmp_path / "results" / f"slurm-{job}"
        summary = read_json(run / fw / "summary.json")
        assert (summary["world_size"], summary["global_batch"]) == (2, 16), fw
        assert_matches(run, local_run, fw)
        assert read_json(run / fw / "environment.json")["hostname"] == "n9", fw
    assert_overlapped(slurm_cluster, [str(j) for j in jobs.values()])


@pytest.mark.horovod
def test_horovod_trains_both_frameworks_across_two_nodes_through_slurm(
    slurm_cluster, horovod_built, local_run, tmp_path
):
    """`--engine horovod --slurm --nodes 2 --gpus 2`: for each framework a job of 2 nodes x 2
    Horovod workers (a submitit task each, task 0 on n9 serving Horovod's rendezvous, no SSH),
    batch 4: global batch 16 and the same training as one device with batch 16."""
    proc = launch(
        *SMOKE, "--engine", "horovod", "--slurm", "--nodes", "2", "--gpus", "2",
        "--batch-size", "4", *CPU_JOB, "--wait", "--wait-timeout", "600",
        "--results", str(tmp_path), "--run-id", "hvd",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "hvd"
    for framework in ("torch", "tf"):
        summary = read_json(run / framework / "summary.json")
        assert (summary["engine"], summary["strategy"]) == ("horovod", "horovod"), framework
        assert (summary["world_size"], summary["global_batch"]) == (4, 16), framework
        assert_matches(run, local_run, framework)
        assert read_json(run / framework / "environment.json")["hostname"] == "n9", framework


def test_a_busy_loop_beside_a_two_node_job_disturbs_it_naming_the_nodes(slurm_cluster, tmp_path):
    """A process that is not the job's, spinning on one of the machine's cores while a 2-node
    job trains: each node's sampler (n9's and n10's) sees it as other load, so the run is
    disturbed and the reasons name the nodes. (That the job's own ranks on the other node are
    not other load is test_conditions_nodes.py's; a quiet run here is not disturbed, seen by
    hand: a test beside it on these 2 cores would disturb it.)"""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = launch(
            "--profile", "smoke", "--epochs", "2", "--framework", "torch", "--slurm",
            "--nodes", "2", "--gpus", "1", *CPU_JOB, "--wait", "--wait-timeout", "300",
            "--results", str(tmp_path), "--run-id", "busy",
        )  # fmt: skip
    finally:
        busy.kill()
        busy.wait()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = read_json(tmp_path / "busy" / "torch" / "summary.json")
    nodes = {h["host"]: h for h in summary["conditions"]["hosts"]}
    assert sorted(nodes) == ["n10", "n9"]
    assert summary["disturbed"] is True
    for host in nodes:
        assert any(r.startswith(f"{host}: other processes") for r in summary["disturbed_reasons"])


def node_processes(job: int | str, node: str) -> list[int]:
    """The job's processes on `node` (the launcher, torchrun, the trainers): every process whose
    environment says it is a task of that job on that node."""
    want = {f"SLURM_JOB_ID={job}".encode(), f"SLURMD_NODENAME={node}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env and b"SLURM_STEP_ID=batch" not in env:
            found.append(int(entry.name))
    return found


def wait_for_log(tmp_path: Path, job: int | str, text: str, after: int, deadline: float) -> float:
    """Until the job's log holds `text` more than `after` times; the time it took (monotonic)."""
    while job_log(tmp_path, job).count(text) <= after:
        assert time.monotonic() < deadline, job_log(tmp_path, job)[-3000:]
        time.sleep(0.5)
    return time.monotonic()


def lose_n10(cluster, tmp_path: Path, job: int | str, fw_dir: Path, faults: list[str]) -> None:
    """Each fault in turn, into the steps of an epoch of the running job: `sigkill` (every
    process of n10's SIGKILLed) or `link-down` (n10's link cut). Each time the step must end
    within LOST_NODE_BOUND_S and the job requeue itself."""
    for attempt, fault in enumerate(faults):
        if attempt:  # the requeued job trains again: its first epoch is done
            wait_for_log(tmp_path, job, "resuming after epoch", attempt - 1, time.monotonic() + 120)
        wait_for_epochs(fw_dir, len(read_jsonl(fw_dir / "epochs.jsonl")) + 1)
        time.sleep(MID_EPOCH_S)  # into the next epoch's steps (a fault between two still counts)
        started = time.monotonic()
        if fault == "sigkill":
            for pid in node_processes(job, "n10"):
                os.kill(pid, signal.SIGKILL)
        else:
            cluster.nodes.set_link("n10", up=False)
        try:
            deadline = started + LOST_NODE_BOUND_S
            ended = wait_for_log(tmp_path, job, "step ended", attempt, deadline) - started
        finally:
            cluster.nodes.set_link("n10", up=True)
        print(f"{fault}: the step ended {ended:.1f} s after the fault")
        wait_for_log(tmp_path, job, "requeueing", attempt, time.monotonic() + 30)


def start_lost_node_job(cluster, tmp_path: Path, *options: str) -> tuple[str, Path]:
    """An sbatch job of 2 nodes (n9, n10) x 1 CPU worker training helpers.FOUR_EPOCHS (torch),
    with the fault tests' collective timeout: its id and its framework folder."""
    extra = " ".join([*FOUR_EPOCHS, "--batch-size", "8", *options,
                      "--set", f"runtime.collective_timeout_s={TIMEOUT_S}"])  # fmt: skip
    script = render_cpu_script("torch", tmp_path, nodes=2, devices=1)
    job = cluster.sbatch(
        "--nodelist=n9,n10", str(script), cwd=tmp_path, env=sbatch_env(tmp_path, extra)
    )
    return job, tmp_path / "results" / f"slurm-{job}" / "torch"


def assert_finished_as_uninterrupted(cluster, tmp_path, job, fw_dir, uninterrupted, lost: int):
    """The job completed after `lost` failed steps, each resumed, with every epoch and the
    weights of one device without interruption."""
    cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"], timeout=400)
    log = job_log(tmp_path, job)
    assert cluster.job_state(job) == "COMPLETED", log[-4000:]
    assert log.count("resuming after epoch") == lost, log[-4000:]
    assert [e["epoch"] for e in read_jsonl(fw_dir / "epochs.jsonl")] == [0, 1, 2, 3]
    failed = [h for h in read_json(fw_dir / "summary.json")["history"] if h["status"] == "failed"]
    assert len(failed) == lost, failed
    assert_matches(fw_dir.parent, uninterrupted, "torch")
    return failed


def test_a_job_that_loses_a_node_twice_ends_each_step_requeues_and_finishes(
    slurm_cluster, uninterrupted, tmp_path
):
    """Node n10 lost twice in one sbatch job (2 nodes x 1 CPU worker): first all its processes
    SIGKILLed, then, once the requeued job trains again, its link cut. Each time the step ends
    within LOST_NODE_BOUND_S, the failure names n10, and the job requeues itself (at most
    DENOISEBENCH_MAX_REQUEUES, 2); --auto-resume finishes the run with every epoch, on the
    weights of one device without interruption."""
    job, fw_dir = start_lost_node_job(slurm_cluster, tmp_path)
    lose_n10(slurm_cluster, tmp_path, job, fw_dir, ["sigkill", "link-down"])
    lost = assert_finished_as_uninterrupted(
        slurm_cluster, tmp_path, job, fw_dir, uninterrupted, lost=2
    )
    assert all("n10" in h["error"] for h in lost), lost


@pytest.mark.horovod
def test_a_horovod_job_that_loses_a_node_link_ends_the_step_requeues_and_finishes(
    slurm_cluster, horovod_built, uninterrupted, tmp_path
):
    """The same bound under --engine horovod (the sbatch script's node launchers, no SSH): n10's
    link cut mid-epoch; the survivors' Gloo collective times out (runtime.collective_timeout_s),
    the step ends within LOST_NODE_BOUND_S, the job requeues and finishes as one device."""
    job, fw_dir = start_lost_node_job(slurm_cluster, tmp_path, "--engine", "horovod")
    lose_n10(slurm_cluster, tmp_path, job, fw_dir, ["link-down"])
    assert_finished_as_uninterrupted(slurm_cluster, tmp_path, job, fw_dir, uninterrupted, lost=1)
    assert read_json(fw_dir / "summary.json")["engine"] == "horovod"
