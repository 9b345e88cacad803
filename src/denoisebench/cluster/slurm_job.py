"""What a SLURM task runs when the job was submitted through submitit (`launch --slurm`).

One `TrainTask` is pickled by submitit and called in every task of the job:

- PyTorch: one task per device. submitit's TorchDistributedEnvironment exports RANK,
  LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from SLURM's variables, so the trainer
  runs DDP exactly as under torchrun.
- TensorFlow: one task per node (driving the node's GPUs) or, on CPUs, one per worker; TF_CONFIG
  is built from SLURM's node list and SLURM_PROCID.

When SLURM preempts the job or its time runs out, submitit calls `checkpoint()`, which requeues
the same task with resume=True: training continues from the last finished epoch's checkpoint.

submitit ignores SIGTERM (it waits for its own USR2 to requeue), so a job ended by `scancel`
would be SIGKILLed KillWait seconds later with its summary still 'running': task 0 records the
run as interrupted as soon as SIGTERM comes (record_sigterm).

One job attempt owns the run folder at a time (records.take_run_lock): task 0 holds the lock
while it trains, so a requeued job whose old processes still run is refused, not mixed into
the same records; the other tasks go on only once task 0 of their own attempt holds it
(wait_for_owner), and otherwise fail with the same refusal instead of waiting for a peer
that is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from denoisebench.core.distributed import expand_nodelist, tf_config
from denoisebench.core.records import (
    LAUNCHER_ENV,
    RunLocked,
    describe_holder,
    mark_interrupted,
    read_lock_holder,
    read_summary,
    resume_command,
    take_run_lock,
)

OWNER_WAIT_S = 300.0
"""How long the tasks other than task 0 wait for their task 0 to take the run folder."""


@dataclass(frozen=True)
class TrainTask:
    framework: str
    run_dir: Path
    devices_per_task: int = 1
    """TensorFlow: devices each worker drives (its node's GPUs); PyTorch: always 1."""
    tf_port: int = 29600
    """First port of the TensorFlow workers (worker i of a node listens on tf_port + i)."""
    resume: bool = False
    launcher: str | None = None
    """The command the user submitted with (`denoisebench`; None: `python -m launch`): the
    resume hints of the job name it."""

    def __call__(self) -> dict[str, Any]:
        owner = job_attempt(os.environ)
        if int(os.environ.get("SLURM_PROCID", "0")) != 0:
            wait_for_owner(Path(self.run_dir), owner)
            return self._train()
        with take_run_lock(Path(self.run_dir), owner=owner):
            return self._train()

    def _train(self) -> dict[str, Any]:
        from denoisebench.core.config import load_resolved

        cfg = load_resolved(Path(self.run_dir) / "config.json")
        if self.launcher:  # for the trainer's own resume hint (trainer.session)
            os.environ[LAUNCHER_ENV] = self.launcher
        record_sigterm(self.framework, Path(self.run_dir), self.launcher)
        print(
            f"[slurm] task {os.environ.get('SLURM_PROCID')} on {socket.gethostname()}: "
            f"{self.framework} into {self.run_dir} (resume={self.resume})",
            flush=True,
        )
        if self.framework == "torch":
            import submitit

            env = submitit.helpers.TorchDistributedEnvironment().export()
            if env.world_size == 1:  # a single task: no process group
                for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
                    os.environ.pop(key, None)
            from denoisebench.torch_backend import train as train_torch

            return train_torch.train(cfg, self.run_dir, resume=self.resume)
        os.environ.update(tf_environment(os.environ, self.tf_port))
        from denoisebench.tf_backend import train as train_tf

        return train_tf.train(cfg, self.run_dir, resume=self.resume, devices=self.devices_per_task)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: requeue, resuming from the checkpoint."""
        import submitit

        print(
            f"[slurm] {self.framework}: preempted or out of time, requeueing to resume", flush=True
        )
        return submitit.helpers.DelayedSubmission(replace(self, resume=True))


def job_attempt(env: dict[str, str] | os._Environ) -> str:
    """This job attempt's name as the lock file records it: a requeue keeps the job id and
    counts SLURM_RESTART_COUNT up."""
    return f"SLURM job {env.get('SLURM_JOB_ID', '?')} attempt {env.get('SLURM_RESTART_COUNT', '0')}"


def wait_for_owner(run_dir: Path, owner: str, timeout_s: float = OWNER_WAIT_S) -> None:
    """Tasks other than task 0: go on once task 0 of this attempt (`owner`) holds the run
    folder's lock, which it names in the lock file only once held; RunLocked, naming the holder,
    when it has not within timeout_s (it was refused, or it died)."""
    deadline = time.monotonic() + timeout_s
    while (holder := read_lock_holder(run_dir)).get("owner") != owner:
        if time.monotonic() > deadline:
            raise RunLocked(
                f"{run_dir}: task 0 of {owner} did not take the run folder within "
                f"{timeout_s:.0f}s; it is held by {describe_holder(holder)}"
            )
        time.sleep(0.5)


def record_sigterm(framework: str, run_dir: Path, launcher: str | None = None) -> None:
    """On task 0, chain a SIGTERM handler before submitit's: a 'running' run is recorded as
    interrupted by SIGTERM (records.mark_interrupted), with a resume command that submits it
    again (`<launcher> --resume RUN --slurm`). Training goes on until SLURM kills it; a run
    that still completes, or is requeued and resumes, writes its own status over this one (the
    interruption then stays in `history`)."""
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
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


def tf_environment(env: dict[str, str] | os._Environ, port: int) -> dict[str, str]:
    """TF_CONFIG for this SLURM task: every task of the job is one worker, in SLURM_PROCID order.

    Empty for a job of one task (a single worker needs no cluster).
    """
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    if ntasks == 1:
        return {}
    hosts = expand_nodelist(env["SLURM_JOB_NODELIST"])
    per_node = ntasks // len(hosts)
    workers = [h for h in hosts for _ in range(per_node)]
    ports = [port + i for _ in hosts for i in range(per_node)]
    return {"TF_CONFIG": tf_config(workers, ports, int(env["SLURM_PROCID"]))}
