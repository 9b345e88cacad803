"""Pure functions that build the command lines the launcher runs: no side effects, tested alone.

Each returns `(argv, env)` pairs. `Topology` says where the job runs; the launcher fills it
from its options or from SLURM's environment and then runs what these functions return.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from denoisebench.core.distributed import WRAPPER_FAILURES_FLAG, tf_config
from denoisebench.core.placement import DEFAULT_MASTER_PORT, tf_cluster

TRAINER_MODULES = {
    "torch": "denoisebench.torch_backend.train",
    "tf": "denoisebench.tf_backend.train",
}
Command = tuple[list[str], dict[str, str]]


@dataclass(frozen=True)
class Topology:
    """Where a job runs: devices per node, nodes, and how the nodes find each other."""

    devices: int = 1
    """Devices per node: GPUs, or CPU workers on a machine without GPUs."""
    gpus: bool = False
    """True when the devices are GPUs."""
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    """Rendezvous host (torch) and the first worker (TensorFlow multi-worker)."""
    master_port: int = DEFAULT_MASTER_PORT
    """Torch's rendezvous; TensorFlow's worker i of a node listens on master_port + i."""
    hosts: tuple[str, ...] = field(default_factory=tuple)
    """All nodes' hosts, in node-rank order (TensorFlow multi-worker across nodes)."""
    cpu_threads: int = 0
    """Threads per CPU worker (0: leave the frameworks' default)."""


def _base_env(base_env: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONUNBUFFERED"] = "1"
    # CUDA numbers GPUs fastest first by default, NVML by PCI bus: with PCI_BUS_ID the CUDA
    # ordinal a trainer runs on is the NVML index its profiler samples (on mixed-GPU machines)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


def build_train_cmd(
    framework: str,
    run_dir: Path,
    resume: bool = False,
    base_env: dict[str, str] | None = None,
    verbose: bool = False,
) -> Command:
    """(argv, env) that trains one framework on one device into run_dir.

    Each framework runs in its own process, so a PyTorch run never imports TensorFlow.
    TensorFlow's C++ logging is kept to errors (TF_CPP_MIN_LOG_LEVEL=2: no INFO or WARNING
    lines) unless `verbose` or the environment sets its own level; it changes only what is
    printed, never how TensorFlow runs.
    """
    if framework not in TRAINER_MODULES:
        raise ValueError(f"framework {framework!r} is not one of {', '.join(TRAINER_MODULES)}")
    argv = [sys.executable, "-m", TRAINER_MODULES[framework], str(run_dir)]
    if resume:
        argv.append("--resume")
    env = _base_env(base_env)
    if framework == "tf" and not verbose:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
    return argv, env


def build_torchrun_cmd(
    run_dir: Path,
    topo: Topology,
    run_id: str,
    resume: bool = False,
    base_env: dict[str, str] | None = None,
) -> Command:
    """torchrun (torch.distributed.run) starting topo.devices DDP ranks on this node.

    One node: --standalone. Several: torchrun's static rendezvous, the store on node 0
    (master_addr:master_port): every node runs the same command with its own --node-rank, and
    rank = node rank x devices + local rank, node 0 being SLURM's node 0 (c10d's dynamic
    rendezvous would order the nodes by host name and process id instead: on nodes n9, n10
    rank 0 would land on n10). `run_id` labels the rendezvous in torchrun's logs.
    """
    # torch.distributed.run, ended by a stop signal without its traceback (denoisebench.cluster.torchrun)
    # it records the ranks a signal killed (SIGKILL by the OOM killer) in the framework folder
    argv = [sys.executable, "-m", "denoisebench.cluster.torchrun"]
    argv += [WRAPPER_FAILURES_FLAG, str(Path(run_dir) / "torch")]
    if topo.nodes == 1:
        argv += ["--standalone", "--nnodes=1"]
    else:
        argv += [
            f"--nnodes={topo.nodes}",
            f"--node-rank={topo.node_rank}",
            f"--master-addr={topo.master_addr}",
            f"--master-port={topo.master_port}",
            f"--rdzv-id={run_id}",
        ]
    argv += [f"--nproc-per-node={topo.devices}", "--max-restarts=0", "--monitor-interval=0.5"]
    argv += ["-m", TRAINER_MODULES["torch"], str(run_dir)]
    if resume:
        argv.append("--resume")
    env = _base_env(base_env)
    if topo.cpu_threads:
        env["OMP_NUM_THREADS"] = str(topo.cpu_threads)
    return argv, env


def build_horovodrun_cmd(
    framework: str,
    run_dir: Path,
    topo: Topology,
    resume: bool = False,
    base_env: dict[str, str] | None = None,
    verbose: bool = False,
) -> Command:
    """horovodrun starting topo.devices Horovod workers of one framework on this machine.

    Gloo, not MPI (the build has none): `-H localhost:N` runs the N workers here, without ssh.
    Each worker is the framework's usual trainer; it finds itself under Horovod by the
    HOROVOD_RANK horovodrun sets, and sets Gloo's timeout from runtime.collective_timeout_s.
    """
    trainer, env = _horovod_worker(framework, run_dir, topo, resume, base_env, verbose)
    n = topo.devices
    # horovodrun, ended by a failed worker without its traceback (denoisebench.cluster.horovodrun);
    # it records a worker a signal killed (SIGKILL by the OOM killer) in the framework folder
    argv = [sys.executable, "-m", "denoisebench.cluster.horovodrun"]
    argv += [WRAPPER_FAILURES_FLAG, str(Path(run_dir) / framework), "-np", str(n)]
    argv += ["-H", f"localhost:{n}"]
    argv += ["--gloo", *trainer]
    return argv, env


def _horovod_worker(
    framework: str,
    run_dir: Path,
    topo: Topology,
    resume: bool,
    base_env: dict[str, str] | None,
    verbose: bool,
) -> Command:
    """A Horovod worker's command, the framework's usual trainer, and its environment: on CPU
    workers each framework's thread count set to the topology's (either framework may run)."""
    trainer, env = build_train_cmd(
        framework, run_dir, resume=resume, base_env=base_env, verbose=verbose
    )
    if topo.cpu_threads:
        env["OMP_NUM_THREADS"] = str(topo.cpu_threads)
        env["TF_NUM_INTRAOP_THREADS"] = str(topo.cpu_threads)
    return trainer, env


def build_horovod_node_cmd(
    framework: str,
    run_dir: Path,
    topo: Topology,
    resume: bool = False,
    base_env: dict[str, str] | None = None,
    verbose: bool = False,
) -> Command:
    """This node's topo.devices Horovod workers of a job across topo.nodes nodes, started by
    denoisebench.cluster.horovod_nodes (no SSH between nodes: horovodrun's way needs it); node
    0's also serves Horovod's rendezvous on master_port. Every node runs the same command with
    its own node rank; rank = node rank x devices + local rank, as under torchrun."""
    if len(topo.hosts) != topo.nodes:
        raise ValueError(
            f"Horovod across {topo.nodes} nodes needs every node's host "
            f"(--hosts or SLURM's node list), got {list(topo.hosts)}"
        )
    trainer, env = _horovod_worker(framework, run_dir, topo, resume, base_env, verbose)
    argv = [sys.executable, "-m", "denoisebench.cluster.horovod_nodes"]
    argv += [WRAPPER_FAILURES_FLAG, str(Path(run_dir) / framework)]
    argv += ["--hosts", ",".join(topo.hosts), "--node-rank", str(topo.node_rank)]
    argv += ["--per-node", str(topo.devices), "--master-addr", topo.master_addr]
    argv += ["--master-port", str(topo.master_port), "--", *trainer]
    return argv, env


def build_tf_cmds(
    run_dir: Path,
    topo: Topology,
    multi_worker: bool,
    ports: list[int] | None = None,
    resume: bool = False,
    base_env: dict[str, str] | None = None,
    verbose: bool = False,
) -> list[Command]:
    """The TensorFlow processes to start on this node.

    - one node, MirroredStrategy: one process driving topo.devices GPUs (or logical CPUs);
    - one node, multi_worker: topo.devices worker processes on 127.0.0.1 (ports[i]), one
      device each: MultiWorkerMirroredStrategy without a cluster; on GPUs worker i sees the
      i-th GPU this process sees (CUDA_VISIBLE_DEVICES' i-th entry, or GPU i without one);
    - several nodes on GPUs: this node's one worker, driving its GPUs; TF_CONFIG lists every
      node's host at master_port;
    - several nodes on CPUs: a worker per device on every node, as torch runs a rank per
      device (the same global batch): TF_CONFIG lists nodes x devices workers, node-major,
      worker i of a node at master_port + i (placement.tf_cluster).

    `verbose`: TensorFlow's C++ logging at its own default level (build_train_cmd).
    """
    argv, env = build_train_cmd("tf", run_dir, resume=resume, base_env=base_env, verbose=verbose)
    if topo.cpu_threads:
        env["TF_NUM_INTRAOP_THREADS"] = str(topo.cpu_threads)
    if topo.nodes > 1:
        return _tf_node_workers(argv, env, topo)
    if not multi_worker:
        return [([*argv, "--devices", str(topo.devices)], env)]
    if ports is None or len(ports) != topo.devices:
        raise ValueError(f"multi-worker on one node needs {topo.devices} ports, got {ports}")
    # SLURM and container runtimes hand a job its GPUs as a mask (`4,5,6,7`, or `GPU-<uuid>` /
    # `MIG-<uuid>` entries): worker i gets the mask's i-th entry verbatim, not GPU i of the node
    mask = env.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = [str(i) for i in range(topo.devices)]
    if topo.gpus and mask is not None:
        gpu_ids = [e.strip() for e in mask.split(",") if e.strip()]
        if len(gpu_ids) < topo.devices:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={mask!r} lists {len(gpu_ids)} GPU(s), fewer than the "
                f"{topo.devices} TensorFlow workers (one GPU each)"
            )
    cmds = []
    hosts = ["127.0.0.1"] * topo.devices
    for i in range(topo.devices):
        worker_env = env | {"TF_CONFIG": tf_config(hosts, ports, i)}
        if topo.gpus:
            worker_env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i]  # one GPU per worker
        cmds.append(([*argv, "--devices", "1"], worker_env))
    return cmds


def _tf_node_workers(argv: list[str], env: dict[str, str], topo: Topology) -> list[Command]:
    """This node's TensorFlow workers in a job across nodes: one driving its GPUs, or one per
    CPU device; TF_CONFIG lists every node's, node-major (placement.tf_cluster)."""
    if len(topo.hosts) != topo.nodes:
        raise ValueError(
            f"TensorFlow across {topo.nodes} nodes needs every node's host "
            f"(--hosts or SLURM's node list), got {list(topo.hosts)}"
        )
    per_node = 1 if topo.gpus else topo.devices
    hosts, ports = tf_cluster(topo.hosts, per_node, topo.master_port)
    first = topo.node_rank * per_node
    return [
        (
            [*argv, "--devices", str(topo.devices // per_node)],
            env | {"TF_CONFIG": tf_config(hosts, ports, first + i)},
        )
        for i in range(per_node)
    ]
