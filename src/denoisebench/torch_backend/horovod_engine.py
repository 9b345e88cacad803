"""Horovod for the PyTorch trainer (`--engine horovod`): what it does instead of DDP.

Started one process per device (Gloo; CPU workers without GPUs): by horovodrun on one node,

    horovodrun -np 2 -H localhost:2 --gloo python -m denoisebench.torch_backend.train RUN_DIR

and across nodes by one launcher per node (denoisebench.cluster.horovod_nodes) or a submitit
task per device, which set the variables horovodrun would (core.placement.horovod_env).

The trainer finds itself under Horovod by HOROVOD_RANK and imports this module; everything else
(model, step, batch rule, records) is the trainer's own. Instead of DDP's wrapper, Horovod's
DistributedOptimizer averages the gradients over the workers (each all-reduced as backward
produces it, waited for in step()), and rank 0's parameters (and a restored optimizer state)
are broadcast to every worker before the first step.
"""

from __future__ import annotations

import os
from typing import Any

import horovod.torch as hvd
import torch

from denoisebench.core.config import Config, ConfigError
from denoisebench.core.distributed import horovod_gloo_timeout
from denoisebench.core.placement import Placement, cuda_device


def init_process(cfg: Config) -> tuple[torch.device, int, int]:
    """Join horovodrun's job: (this worker's device, rank, workers)."""
    if cfg.runtime.cuda_graphs or cfg.runtime.precision == "float16":
        # a CUDA graph cannot hold Horovod's asynchronous all-reduces, and GradScaler's step
        # needs DistributedOptimizer's synchronize/skip_synchronize pattern, not written here
        raise ConfigError(
            "--engine horovod trains without runtime.cuda_graphs and runtime.precision=float16 "
            "(set runtime.cuda_graphs=false, runtime.precision=float32 or bfloat16)"
        )
    horovod_gloo_timeout(cfg.runtime.collective_timeout_s)
    hvd.init()
    device = torch.device("cpu")
    if torch.cuda.is_available() and cfg.train.device != "cpu":
        check_cuda_built()
        # the worker's GPU among those it sees, as a DDP rank picks its own (one visible GPU
        # where SLURM binds one per task, else the node's GPU local rank)
        place = Placement(local_rank=hvd.local_rank(), local_world_size=hvd.local_size())
        device = torch.device("cuda", cuda_device(place, torch.cuda.device_count(), os.environ))
        torch.cuda.set_device(device)
    return device, hvd.rank(), hvd.size()


def check_cuda_built() -> None:
    """Refuse GPUs where Horovod cannot reduce their tensors (`horovod-build` builds CPU only)."""
    if not hvd.cuda_built():
        raise ConfigError(
            "this Horovod was built without CUDA (python -m launch horovod-build builds Gloo on "
            "CPUs only): train CPU workers with --device cpu, or --engine native on GPUs"
        )


def distributed_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module
) -> torch.optim.Optimizer:
    """The optimizer whose step() averages the gradients over the workers. It is a new
    optimizer over the same parameter groups, with a state of its own: restore into it."""
    return hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(), op=hvd.Average
    )


def broadcast_start(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Rank 0's parameters, and its optimizer state when there is one (a restored checkpoint),
    on every worker. A fresh Adam has no state yet and is left alone: Horovod would create it
    by a zero-gradient step, which advances Adam's step count and so changes every later
    step's bias correction, and the run would no longer be the one-device run it equals."""
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if optimizer.state:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)


def barrier() -> None:
    hvd.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Every worker's `obj` (pickled), on every worker, in rank order."""
    return hvd.allgather_object(obj)


def shutdown() -> None:
    hvd.shutdown()
