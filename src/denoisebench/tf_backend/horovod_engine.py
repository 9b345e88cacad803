"""Horovod for the TensorFlow trainer (`--engine horovod`): what it does instead of tf.distribute's
collectives.

Started one process per device (Gloo; CPU workers without GPUs): by horovodrun on one node,

    horovodrun -np 2 -H localhost:2 --gloo python -m denoisebench.tf_backend.train RUN_DIR

and across nodes by one launcher per node (denoisebench.cluster.horovod_nodes) or a submitit
task per device (core.placement.horovod_env).

Each worker trains its one device under OneDeviceStrategy, so the trainer's step, batch rule and
records stay its own; the worker's rank picks its slice of the global batch. The step's
gradients (a plain tf.GradientTape) are averaged over the workers with one grouped all-reduce,
and rank 0's model and optimizer variables are broadcast before the first step. Horovod's own
wrappers are not used: under Keras 3, `hvd.DistributedGradientTape(...).gradient` fails
(`'Variable' object has no attribute 'ref'`, horovod#4290), and horovod.tensorflow.keras is
written for Keras 2.
"""

from __future__ import annotations

from typing import Any

import horovod.tensorflow as hvd
import tensorflow as tf

from denoisebench.core.config import ConfigError
from denoisebench.core.distributed import horovod_gloo_timeout
from denoisebench.tf_backend.model import pick_device


def join(choice: str, timeout_s: float) -> tuple[tf.distribute.Strategy, str, str, int, int]:
    """Join the Horovod job: (this worker's strategy, "horovod", its device, rank, workers).
    With GPUs, worker k trains on its node's GPU k (all stay visible, so the profiler's CUDA
    ordinals are the node's). `timeout_s`: runtime.collective_timeout_s, Gloo's timeout."""
    horovod_gloo_timeout(timeout_s)
    hvd.init()
    device = pick_device(choice)
    if device.startswith("/GPU"):
        if not hvd.cuda_built():  # `horovod-build` builds Gloo on CPUs only
            raise ConfigError(
                "this Horovod was built without CUDA (python -m launch horovod-build builds "
                "Gloo on CPUs only): train CPU workers with --device cpu, or --engine native "
                "on GPUs"
            )
        device = f"/GPU:{hvd.local_rank()}"
    return tf.distribute.OneDeviceStrategy(device), "horovod", device, hvd.rank(), hvd.size()


def average(grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """The gradients averaged over the workers: each worker's are those of its slice's mean
    loss, so the average is the gradient of the global batch's mean loss."""
    return hvd.grouped_allreduce(grads, op=hvd.Average)


def broadcast_start(variables: list[Any]) -> None:
    """Rank 0's values of `variables` (Keras variables) on every worker. Horovod assigns to
    TensorFlow variables: a Keras 3 variable's is its `.value`. The optimizer is built before
    this (its slots exist), so one broadcast before the first step covers them."""
    hvd.broadcast_variables([v.value for v in variables], root_rank=0)


def all_gather(obj: Any) -> list[Any]:
    """Every worker's `obj` (pickled), on every worker, in rank order."""
    return hvd.allgather_object(obj)
