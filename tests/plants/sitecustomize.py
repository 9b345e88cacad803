"""Planted bugs for the equivalence tests: proof that "N devices equal one device" catches them.

A test puts this folder first on PYTHONPATH and names a bug in DENOISEBENCH_PLANT; Python
imports this module at start-up in every process of the run (the launcher, torchrun, each
rank), before the trainer's own imports, so the trainer picks up the replaced pieces. Nothing
happens without DENOISEBENCH_PLANT. The bugs (each one a mistake a data-parallel trainer can
really make):

- `local_gradients`: DDP's all-reduce replaced by nothing: each rank steps on its own
  half-batch's gradient (PyTorch ranks only).
- `summed_gradients`: the all-reduce sums the ranks' gradients instead of averaging them
  (PyTorch ranks only; Adam is nearly blind to a gradient's scale, only eps sees it).
- `skipped_slice`: every device trains on the first device's slice of the global batch, so the
  other slices are never trained on.
- `rank_noise`: each device draws other noise than the one-device run would (its generator
  or seed shifted by its rank).

Each prints `[plant] NAME` on stderr in the processes it changed, so a test can see it acted.
"""

from __future__ import annotations

import os
import sys

PLANT = os.environ.get("DENOISEBENCH_PLANT", "")
RANK = int(os.environ.get("RANK", "0"))  # set by torchrun for its ranks


def _announce() -> None:
    print(f"[plant] {PLANT} (rank {RANK})", file=sys.stderr, flush=True)


def _plant_ddp_hook() -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.parallel

    def local(_state, bucket):  # no communication: the rank's own gradient
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    def summed(_state, bucket):  # all-reduce without DDP's division by the world size
        work = dist.all_reduce(bucket.buffer(), async_op=True)
        return work.get_future().then(lambda f: f.value()[0])

    hook = local if PLANT == "local_gradients" else summed
    base = torch.nn.parallel.DistributedDataParallel

    class PlantedDDP(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.register_comm_hook(None, hook)
            _announce()

    torch.nn.parallel.DistributedDataParallel = PlantedDDP


def _plant_skipped_slice() -> None:
    from denoisebench.core import distributed

    def first_slice(_replica, batch_size):
        return slice(0, batch_size)

    distributed.replica_slice = first_slice
    _announce()


def _plant_rank_noise() -> None:
    if "RANK" in os.environ:  # a PyTorch rank: its generator shifted by one draw on rank 1
        import torch

        from denoisebench.torch_backend import model

        add_noise = model.add_noise

        def shifted(x, cfg, generator):
            if RANK == 1:
                torch.rand(1, generator=generator, device=x.device)
            return add_noise(x, cfg, generator)

        model.add_noise = shifted
    else:  # TensorFlow: each replica's stateless seed offset by its replica id
        import tensorflow as tf

        from denoisebench.tf_backend import model

        add_noise = model.add_noise

        def offset(x, cfg, seed):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return add_noise(x, cfg, seed + tf.cast(tf.stack([0, replica]), seed.dtype))

        model.add_noise = offset
    _announce()


def _is_trainer() -> bool:
    """Only processes that train: a torchrun rank, or a TensorFlow trainer."""
    argv = " ".join(sys.orig_argv)
    return "RANK" in os.environ or "denoisebench.tf_backend.train" in argv


if PLANT and _is_trainer():
    if PLANT in ("local_gradients", "summed_gradients"):
        _plant_ddp_hook()
    elif PLANT == "skipped_slice":
        _plant_skipped_slice()
    elif PLANT == "rank_noise":
        _plant_rank_noise()
    else:
        raise SystemExit(f"DENOISEBENCH_PLANT={PLANT!r}: no such planted bug")
