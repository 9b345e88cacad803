"""What a SLURM task runs when the job was submitted through submitit (`launch --slurm`).

One `TrainTask` is pickled by submitit and called in every task of the job:

- PyTorch: one task per device. The task exports RANK, LOCAL_RANK, WORLD_SIZE,
  LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from its place in the job (core.placement:
  SLURM's variables, node 0 = SLURM's first node, the port from the job id), so the trainer runs
  DDP exactly as under torchrun. Not submitit's TorchDistributedEnvironment().export(): by
  default it sets CUDA_VISIBLE_DEVICES to the local rank, which hides a task's only GPU where
  SLURM binds one per task and numbers it 0 (--gpus-per-task, ConstrainDevices); the trainer
  picks its GPU from what it sees (placement.cuda_device).
- TensorFlow: one task per node (driving the node's GPUs) or, on CPUs, one per worker; TF_CONFIG
  lists every task as a worker, node-major in SLURM's node order (placement.tf_cluster).
- Horovod (either framework): one task per device; each exports the variables horovodrun would
  give its slot (placement.horovod_env) and task 0 serves Horovod's rendezvous on the job's port
  while it trains (cluster.horovod_nodes.serve_rendezvous): no horovodrun, no SSH.

When SLURM preempts the job or its time runs out, submitit calls `checkpoint()`, which requeues
the same task with resume=True: training continues from the last finished epoch's checkpoint.

submitit ignores SIGTERM (it waits for its own USR2 to requeue), so a job ended by `scancel`
would be SIGKILLed KillWait seconds later with its summary still 'running': task 0 records the
run as interrupted as soon as SIGTERM comes (record_sigterm).

One job attempt owns its framework's records at a time (core.runlock: one lock per framework,
so the torch job and the tf job of one run train side by side): task 0 holds the lock while it
trains, so a requeued job whose old processes still run is refused, not mixed into the same
records; the other tasks go on only once task 0 of their own attempt holds it (wait_for_owner),
and otherwise fail with the same refusal instead of waiting for a peer that is gone. A requeued
attempt waits up to runlock.REQUEUE_WAIT_S for the lock first: on a shared file system a dead
node's lock can outlive it by the server's lease.

A requeue resumes, whoever started it (`resumes`): submitit's checkpoint() asks for it, and a
requeue it did not start (a node failure, `scontrol requeue`, preemption without USR2) reruns
the original task, which SLURM_RESTART_COUNT or the run's checkpoint gives away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from denoisebench.cluster.horovod_nodes import serve_rendezvous
from denoisebench.core.distributed import tf_config
from denoisebench.core.failures import mark_interrupted
from denoisebench.core.fingerprint import check_unchanged
from denoisebench.core.placement import (
    Placement,
    check_routable_hostname,
    cpu_threads,
    horovod_env,
    slurm_job_placement,
    tf_cluster,
    this_host,
    torch_env,
)
from denoisebench.core.records import LAUNCHER_ENV, read_summary, resume_command
from denoisebench.core.runlock import (
    REQUEUE_WAIT_S,
    RunLocked,
    describe_holder,
    read_lock_holder,
    requeued,
    take_run_lock,
)

OWNER_WAIT_S = REQUEUE_WAIT_S + 150.0
"""How long the tasks other than task 0 wait for their task 0 to take the framework's lock
(which task 0 of a requeued attempt may itself wait REQUEUE_WAIT_S for)."""


@dataclass(frozen=True)
class TrainTask:
    framework: str
    run_dir: Path
    devices_per_task: int = 1
    """TensorFlow: devices each worker drives (its node's GPUs); PyTorch: always 1."""
    master_port: int | None = None
    """The job's first port (--master-port): torch's rendezvous, TensorFlow's worker i of a node
    on it + i; None: derived from the job id (placement.job_port)."""
    resume: bool = False
    launcher: str | None = None
    """The command the user submitted with (`denoisebench`; None: `python -m launch`): the
    resume hints of the job name it."""
    engine: str = "native"
    """horovod: every task is one Horovod worker (horovod_env), task 0 serves the rendezvous."""

    def __call__(self) -> dict[str, Any]:
        owner = job_attempt(os.environ)
        task = replace(self, resume=True) if self.resumes(os.environ) else self
        if not is_task_0(os.environ):
            wait_for_owner(Path(self.run_dir), self.framework, owner)
            return task._train()
        wait_s = REQUEUE_WAIT_S if requeued(os.environ) else 0.0
        with take_run_lock(Path(self.run_dir), self.framework, owner=owner, wait_s=wait_s):
            return task._train()

    def resumes(self, env: dict[str, str] | os._Environ) -> bool:
        """Whether this attempt continues the run instead of starting it over: asked to
        (checkpoint()'s requeue, --resume), or a requeue that checkpoint() did not start
        (SLURM_RESTART_COUNT > 0), or a checkpoint of the framework is there already. Every
        task of an attempt decides alike: its tasks must agree on the epoch they start from."""
        checkpoints = Path(self.run_dir) / self.framework / "checkpoints"
        has_checkpoint = checkpoints.is_dir() and any(checkpoints.iterdir())
        return self.resume or requeued(env) or has_checkpoint

    def _train(self) -> dict[str, Any]:
        from denoisebench.core.config import load_resolved

        cfg = load_resolved(Path(self.run_dir) / "config.json")
        if self.resume:  # a requeue continues the run as it started (core.fingerprint)
            check_unchanged(Path(self.run_dir))
        if self.launcher:  # for the trainer's own resume hint (trainer.session)
            os.environ[LAUNCHER_ENV] = self.launcher
        record_sigterm(self.framework, Path(self.run_dir), self.launcher)
        place = slurm_job_placement(os.environ, self.master_port) or Placement()
        print(
            f"[slurm] rank {place.rank} of {place.world_size} on {socket.gethostname()} "
            f"(node {place.node_rank} of {place.nodes}): "
            f"{self.framework} into {self.run_dir} (resume={self.resume})",
            flush=True,
        )
        if place.nodes > 1:
            check_routable_hostname(*this_host(), place.nodes, place.master_addr, os.environ)
        os.environ.update(cpu_thread_environment(os.environ, self.devices_per_task))
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
            os.environ.pop(key, None)  # a single task: no process group
        if self.engine == "horovod":
            os.environ.update(horovod_env(place))
            with serve_rendezvous(place):  # task 0's, for as long as it trains
                return self._run_trainer(cfg)
        if self.framework == "torch" and place.world_size > 1:
            os.environ.update(torch_env(place))
        elif self.framework == "tf":
            os.environ.update(tf_environment(place))
        return self._run_trainer(cfg)

    def _run_trainer(self, cfg: Any) -> dict[str, Any]:
        if self.framework == "torch":
            from denoisebench.torch_backend import train as train_torch

            return train_torch.train(cfg, self.run_dir, resume=self.resume)
        from denoisebench.tf_backend import train as train_tf

        return train_tf.train(cfg, self.run_dir, resume=self.resume, devices=self.devices_per_task)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: requeue, resuming from the checkpoint.
        Task 0 records a run still 'running' as interrupted by SIGUSR2 (submitit's signal; a
        preemption's SIGTERM before it has recorded it already): submitit then ends the task
        with sys.exit, which the trainer does not record as a failure (trainer.session)."""
        import submitit

        print(
            f"[slurm] {self.framework}: preempted or out of time, requeueing to resume", flush=True
        )
        summary = read_summary(Path(self.run_dir), self.framework)
        if summary and summary.get("status") == "running" and is_task_0(os.environ):
            with contextlib.suppress(OSError):  # a full disk: the requeued task resumes anyway
                # the requeued job resumes by itself; the command is for one that never starts
                again = f"{resume_command(Path(self.run_dir), self.launcher)} --slurm"
                mark_interrupted(Path(self.run_dir), self.framework, "SIGUSR2", again)
        return submitit.helpers.DelayedSubmission(replace(self, resume=True))


def is_task_0(env: Mapping[str, str]) -> bool:
    """Task 0 of the job (SLURM_PROCID 0): the one that holds the lock and records stops."""
    return int(env.get("SLURM_PROCID", "0")) == 0


def job_attempt(env: dict[str, str] | os._Environ) -> str:
    """This job attempt's name as the lock file records it: a requeue keeps the job id and
    counts SLURM_RESTART_COUNT up."""
    return f"SLURM job {env.get('SLURM_JOB_ID', '?')} attempt {env.get('SLURM_RESTART_COUNT', '0')}"


def wait_for_owner(
    run_dir: Path, framework: str, owner: str, timeout_s: float = OWNER_WAIT_S
) -> None:
    """Tasks other than task 0: go on once task 0 of this attempt (`owner`) holds the
    framework's lock, which it names in the lock file only once held; RunLocked, naming the
    holder, when it has not within timeout_s (it was refused, or it died)."""
    deadline = time.monotonic() + timeout_s
    while (holder := read_lock_holder(run_dir, framework)).get("owner") != owner:
        if time.monotonic() > deadline:
            raise RunLocked(
                f"{run_dir}: task 0 of {owner} did not take the {framework} lock within "
                f"{timeout_s:.0f}s; it is held by {describe_holder(holder)}"
            )
        time.sleep(0.5)


def record_sigterm(framework: str, run_dir: Path, launcher: str | None = None) -> None:
    """On task 0, chain a SIGTERM handler before submitit's: a 'running' run is recorded as
    interrupted by SIGTERM (failures.mark_interrupted), with a resume command that submits it
    again (`<launcher> --resume RUN --slurm`). Training goes on until SLURM kills it; a run
    that still completes, or is requeued and resumes, writes its own status over this one (the
    interruption then stays in `history`)."""
    if not is_task_0(os.environ):
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        summary = read_summary(run_dir, framework)
        if summary and summary.get("status") == "running":
            with contextlib.suppress(OSError):  # a full disk: the record stays as it is
                again = f"{resume_command(run_dir, launcher)} --slurm"
                mark_interrupted(run_dir, framework, "SIGTERM", again)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def tf_environment(place: Placement) -> dict[str, str]:
    """TF_CONFIG for this SLURM task: every task of the job is one worker, node-major in
    SLURM's node order (worker index = its rank), worker i of a node at the job's port + i.

    Empty for a job of one task (a single worker needs no cluster).
    """
    if place.world_size == 1:
        return {}
    hosts, ports = tf_cluster(place.hosts, place.local_world_size, place.master_port)
    return {"TF_CONFIG": tf_config(hosts, ports, place.rank)}


def cpu_thread_environment(env: Mapping[str, str], devices: int) -> dict[str, str]:
    """A task without GPUs that SLURM gave SLURM_CPUS_PER_TASK CPUs: that many threads shared
    by the devices it drives (OMP_NUM_THREADS, TF_NUM_INTRAOP_THREADS), not the node's every
    core in each task; nothing when SLURM gave GPUs or no CPU count, or the user set them."""
    if "SLURM_CPUS_PER_TASK" not in env or env.get("SLURM_GPUS_ON_NODE", "0") not in ("", "0"):
        return {}
    threads = str(cpu_threads(env, devices, 1))
    return {key: threads for key in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS") if key not in env}
