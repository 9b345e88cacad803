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
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from denoisebench.core.distributed import expand_nodelist, tf_config
from denoisebench.core.records import mark_interrupted, read_summary, resume_command


@dataclass(frozen=True)
class TrainTask:
    framework: str
    run_dir: Path
    devices_per_task: int = 1
    """TensorFlow: devices each worker drives (its node's GPUs); PyTorch: always 1."""
    tf_port: int = 29600
    """First port of the TensorFlow workers (worker i of a node listens on tf_port + i)."""
    resume: bool = False

    def __call__(self) -> dict[str, Any]:
        from denoisebench.core.config import load_resolved

        cfg = load_resolved(Path(self.run_dir) / "config.json")
        record_sigterm(self.framework, Path(self.run_dir))
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


def record_sigterm(framework: str, run_dir: Path) -> None:
    """On task 0, chain a SIGTERM handler before submitit's: a 'running' run is recorded as
    interrupted by SIGTERM (records.mark_interrupted), with a resume command that submits it
    again (`--resume RUN --slurm`). Training goes on until SLURM kills it; a run that still
    completes, or is requeued and resumes, writes its own status over this one (the
    interruption then stays in `history`)."""
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        summary = read_summary(run_dir, framework)
        if summary and summary.get("status") == "running":
            with contextlib.suppress(OSError):  # a full disk: the record stays as it is
                again = f"{resume_command(run_dir)} --slurm"
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
