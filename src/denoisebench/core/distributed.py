"""Plain-Python pieces of distributed training, shared by the launcher and both trainers.

Nothing here imports a framework: TensorFlow's TF_CONFIG, how processes are named, each
device's slice of the batch, and the fault injection the crash tests use. Where a process is
in its job (ranks, nodes, hosts, ports, its device) is placement.py's.

Batch rule, the same for both frameworks: `train.batch_size` is per device (per replica). The
global batch is batch_size x devices; every step takes one global batch from the epoch's shared
permutation, draws its noise from one generator seeded by (seed, epoch) or (seed, step), and
each device trains on its own contiguous slice. N devices with batch b therefore see exactly
the images and noise that one device with batch N*b sees.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FAULT_ENV = "DENOISEBENCH_FAULT"
"""For tests: "RANK:STEP" makes that rank raise an exception at that global step;
"RANK:STEP:kill" makes its process die by SIGKILL there instead, as the kernel's out-of-memory
killer would end it (no exception, nothing recorded by the process itself)."""
WRAPPER_FAILURES_FLAG = "--record-failures-in"
"""The first option of the launcher's torchrun and horovodrun (denoisebench.cluster.torchrun,
.horovodrun): the framework folder where they record a rank that a signal killed."""
EVAL_DELAY_ENV = "DENOISEBENCH_EVAL_DELAY_S"
"""For tests: seconds the main process sleeps after each epoch's evaluation (a slow one)."""


def tf_config(hosts: list[str] | tuple[str, ...], port: int | list[int], index: int) -> str:
    """TF_CONFIG for MultiWorkerMirroredStrategy: one worker per host (or per port on one host)."""
    ports = port if isinstance(port, list) else [port] * len(hosts)
    workers = [f"{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
    if not 0 <= index < len(workers):
        raise ValueError(f"worker index {index} outside 0..{len(workers) - 1}")
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def tf_worker_index(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(worker index, number of workers) from TF_CONFIG; (0, 1) without it."""
    env = os.environ if env is None else env
    if "TF_CONFIG" not in env:
        return 0, 1
    cfg = json.loads(env["TF_CONFIG"])
    return int(cfg["task"]["index"]), len(cfg["cluster"]["worker"])


def horovod_gloo_timeout(seconds: float) -> None:
    """Horovod's Gloo timeout (HOROVOD_GLOO_TIMEOUT_SECONDS, whole seconds, read by hvd.init())
    set to runtime.collective_timeout_s: how long a worker waits for its peers at the
    rendezvous and in every collective, so a node lost mid-run ends the others' collectives
    within it, as it ends torch's and TensorFlow's (Horovod's own default is 30 s, horovodrun's
    --gloo-timeout-seconds sets the same variable)."""
    os.environ["HOROVOD_GLOO_TIMEOUT_SECONDS"] = str(max(1, math.ceil(seconds)))


def take_failures_dir(argv: list[str]) -> tuple[Path | None, list[str]]:
    """A wrapper's own leading `WRAPPER_FAILURES_FLAG FW_DIR`, and the arguments after it."""
    if argv[:1] == [WRAPPER_FAILURES_FLAG]:
        return Path(argv[1]), argv[2:]
    return None, argv


def process_name(framework: str, rank: int, processes: int) -> str:
    """A training process as failures and summaries name it: 'torch' or 'tf' when it is the
    only one, else 'torch rank 1' (DDP, Horovod), 'tf worker 1' (MultiWorkerMirrored,
    Horovod)."""
    if processes == 1:
        return framework
    return f"{framework} {'rank' if framework == 'torch' else 'worker'} {rank}"


def replica_slice(replica: Any, batch_size: int) -> slice:
    """The rows of the step's global batch that device `replica` trains on (the batch rule
    above): its own contiguous slice. `replica` is a rank, or TensorFlow's replica id tensor."""
    return slice(replica * batch_size, (replica + 1) * batch_size)


def maybe_inject_fault(ranks: range, step: int) -> None:
    """Raise, or die by SIGKILL, where DENOISEBENCH_FAULT=RANK:STEP[:kill] asks: how the tests
    crash one worker on purpose.

    `ranks`: the devices (replicas) this process drives: one torch rank, or every replica of a
    TensorFlow worker (all of them under MirroredStrategy, which runs in one process)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, at, *how = spec.split(":")
    if int(rank) in ranks and int(at) == step:
        if how == ["kill"]:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec}) on rank {rank} at step {step}")


def maybe_delay_after_eval() -> None:
    """Sleep where DENOISEBENCH_EVAL_DELAY_S asks: how the tests make rank 0's evaluation slow,
    to check that the other ranks' wait for it stays out of the training figures."""
    delay = float(os.environ.get(EVAL_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
