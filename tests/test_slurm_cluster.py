"""The `slurm_cluster` fixture itself: real jobs through sbatch, srun, sacct, scontrol, submitit.

Every test runs against the cluster of several nodes (network namespaces) that
tests/slurm_cluster.py starts for the session.
Functions handed to submitit are defined inside the tests: cloudpickle then sends them by value,
so the job's Python need not import this test module (tests/ is not on its path).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import slurm_cluster as slurm_cluster_module
import submitit
from slurm_cluster import NODES, SlurmCluster
from submitit.core.utils import FailedJobError, UncompletedJobError

pytestmark = pytest.mark.slurm


def _wait_done(job: submitit.Job, timeout: float) -> None:
    """submitit's own waits have no deadline; a job it cannot classify would hang the suite."""
    deadline = time.monotonic() + timeout
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after {timeout} s: {job.state}")
        time.sleep(0.5)


def test_missing_programs_without_apt_skip_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No cluster here: with nothing found on PATH, not even apt-get, the fixture must skip
    # and say why rather than pass or crash.
    monkeypatch.setattr(slurm_cluster_module, "_which", lambda _name: None)
    monkeypatch.delenv(slurm_cluster_module.REQUIRE_VAR, raising=False)
    monkeypatch.setattr(slurm_cluster_module.os, "geteuid", lambda: 0)
    with pytest.raises(pytest.skip.Exception, match="no apt-get"):
        slurm_cluster_module.ensure_installed()


def test_nodes_are_up_with_their_cpus_and_fake_gpus(slurm_cluster: SlurmCluster) -> None:
    info = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %P %c %G %t"]).stdout.splitlines()
    gres = f"gpu:{slurm_cluster_module.GPUS_PER_NODE}"
    want = [f"{n} {slurm_cluster.partition}* {slurm_cluster.cpus} {gres}" for n in NODES]
    assert sorted(line.rsplit(" ", 1)[0] for line in info) == sorted(want)
    # up: idle, or running another test's job (mixed, allocated), never down or drained
    assert {line.rsplit(" ", 1)[1] for line in info} <= {"idle", "mix", "alloc"}, info
    # The session's environment points every client (and submitit) at this cluster.
    assert os.environ["SLURM_CONF"] == slurm_cluster.env["SLURM_CONF"]


def test_sbatch_wait_hostname(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "hostname.out"
    slurm_cluster.run(["sbatch", "--wait", "-o", str(out), "--wrap", "hostname"], timeout=60)
    assert out.read_text().strip() in NODES
    assert socket.gethostname() not in NODES  # the job ran on a node, not on the host


def test_each_node_has_its_own_address_and_name(slurm_cluster: SlurmCluster, tmp_path) -> None:
    # one task a node; each prints its hostname, node id, and its address as its hosts file says
    out = tmp_path / "nodes.out"
    script = tmp_path / "node.sh"
    script.write_text('echo "$(hostname) $SLURM_NODEID $(getent hosts "$(hostname)")"\n')
    job = slurm_cluster.sbatch(
        f"--nodes={len(NODES)}", "-o", str(out), "--wrap", f"srun bash {script}"
    )
    assert slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"]) == "COMPLETED"
    nodes = slurm_cluster.nodes
    rows = sorted(line.split()[:3] for line in out.read_text().splitlines())
    # SLURM numbers nodes in its own order, n9 first, though "n10" < "n9" as strings
    want = sorted([n, str(i), nodes.addr(n)] for i, n in enumerate(NODES))
    assert rows == want


def test_fake_gpus_reach_the_job_as_slurm_sets_them(slurm_cluster: SlurmCluster, tmp_path):
    out = tmp_path / "gpus.out"
    show = "echo $SLURM_LOCALID $CUDA_VISIBLE_DEVICES $SLURM_GPUS_ON_NODE"
    job = slurm_cluster.sbatch(
        "--nodes=1", "--ntasks=2", "--gpus-per-task=1", "-o", str(out),
        "--wrap", f"srun bash -c '{show}'",
    )  # fmt: skip
    assert slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"]) == "COMPLETED"
    # one GPU each, by the node's index (no cgroup device constraint here)
    assert sorted(out.read_text().splitlines()) == ["0 0 2", "1 1 2"]


def test_two_tasks_get_ranks_0_and_1(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "ranks.out"
    job = slurm_cluster.sbatch(
        "--nodes=1",
        "--ntasks-per-node=2",
        "-o",
        str(out),
        "--wrap",
        "srun bash -c 'echo rank=$SLURM_PROCID'",
    )
    assert slurm_cluster.wait_for_state(job, ["COMPLETED", "FAILED", "CANCELLED"]) == "COMPLETED"
    assert sorted(out.read_text().split()) == ["rank=0", "rank=1"]


def test_sacct_reports_completed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch("-o", str(tmp_path / "true.out"), "--wrap", "true")
    # Accounting is filed asynchronously after the job ends: poll sacct itself.
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        state = slurm_cluster.run(["sacct", "-j", str(job), "-n", "-X", "-o", "State"]).stdout
        if state.strip() == "COMPLETED":
            break
        time.sleep(0.2)
    assert state.strip() == "COMPLETED", slurm_cluster.log_tails()


def test_submitit_two_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def rank_and_size() -> tuple[int, int]:
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition, tasks_per_node=2, timeout_min=2
    )
    job = executor.submit(rank_and_size)
    _wait_done(job, timeout=60)
    assert sorted(job.results()) == [(0, 2), (1, 2)]


def test_submitit_exception_is_failed_job_error(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    def boom() -> None:
        raise ValueError("raised inside the job")

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=2)
    job = executor.submit(boom)
    _wait_done(job, timeout=60)
    with pytest.raises(FailedJobError, match="raised inside the job"):
        job.result()


def test_submitit_hard_exit_is_reported_failed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def hard_exit() -> None:
        os._exit(3)  # no exception, no result file: only SLURM's accounting knows it failed

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=2)
    job = executor.submit(hard_exit)
    # With no result file, result() first waits this long for one to appear on a slow shared
    # file system (submitit's default: 15 s); here the folder is local.
    job._results_timeout_s = 1
    _wait_done(job, timeout=60)
    assert job.state == "FAILED"
    with pytest.raises(UncompletedJobError, match="FAILED"):
        job.result()


def test_scontrol_requeue_runs_the_job_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "requeue.out"
    job = slurm_cluster.sbatch(
        "--open-mode=append",  # keep the first run's line when the requeued run starts
        "-o",
        str(out),
        "--wrap",
        "echo run=${SLURM_RESTART_COUNT:-0}; sleep 120",
    )
    slurm_cluster.wait_for_state(job, ["RUNNING"], timeout=30)
    slurm_cluster.run(["scontrol", "requeue", str(job)])
    # The job goes back to the queue: REQUEUED briefly, then PENDING until cred_expire passes.
    slurm_cluster.wait_for_state(job, ["PENDING", "REQUEUED"], timeout=15)
    slurm_cluster.wait_for_state(job, ["RUNNING"], timeout=45)
    deadline = time.monotonic() + 15
    while "run=1" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    details = slurm_cluster.run(["scontrol", "show", "job", str(job)]).stdout
    text = out.read_text()
    slurm_cluster.run(["scancel", str(job)])
    # slurmstepd also writes "*** JOB n ON node CANCELLED ... DUE TO JOB REQUEUE ***" there.
    assert [ln for ln in text.splitlines() if ln.startswith("run=")] == ["run=0", "run=1"], text
    assert "DUE TO JOB REQUEUE" in text
    assert "Restarts=1" in details
