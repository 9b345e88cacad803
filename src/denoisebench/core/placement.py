"""Where one process is in its job: its ranks, its node, the job's hosts, ports and its device.

One reader per launcher, each a pure function of an environment mapping (as submitit's
JobEnvironment and torchrun's WorkerSpec do it): `torchrun_placement` (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), `slurm_placement`
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_NODEID, SLURM_JOB_NODELIST, SLURM_JOB_ID);
`read_placement` picks the one that applies; `horovod_env` turns a place into Horovod's
variables. The launcher (topology, ports, threads), the
submitit task (torch's variables, TF_CONFIG) and the torch trainer (its GPU, and gloo where
ranks share one: `gpu_place`) ask these instead
of working out ranks, hosts or ports from SLURM_* themselves. Only `slurm_hostnames` (scontrol) and `this_host` (the resolver)
touch the machine; everything else is arithmetic on strings, tested exhaustively
against recorded environments (tests/test_placement.py).

SLURM's node 0 is the first host of its node list, in SLURM's order (`scontrol show
hostnames`), and is the master: torchrun's static rendezvous there, TensorFlow's worker 0.
Global rank = node rank x processes per node + local rank, the same in both frameworks.

Ports (`job_port`): a job under SLURM takes a block of PORT_BLOCK ports derived from its job
id, below Linux's ephemeral range (32768-60999), so two jobs sharing a node do not collide;
torch's rendezvous and Horovod's listen on the block's first port, TensorFlow's worker i of a
node on first + i (torch and TensorFlow of one launch run one after the other). An explicit
--master-port wins; outside SLURM it is 29500, as torchrun's.
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from denoisebench.core.config import ConfigError

DEFAULT_MASTER_PORT = 29500
"""Rendezvous port outside SLURM without --master-port (torchrun's default)."""
PORT_LOW, PORT_HIGH = 20000, 32767
"""The ports a SLURM job's block is taken from: above the common services' ports and below
Linux's default ephemeral range (net.ipv4.ip_local_port_range 32768-60999), where the
kernel hands out the client side of connections and a fixed listener could find its port
taken."""
PORT_BLOCK = 32
"""Ports per job: torch's rendezvous on the first, TensorFlow worker i of a node on first + i."""
PORT_BLOCKS = (PORT_HIGH + 1 - PORT_LOW) // PORT_BLOCK
"""399 blocks: jobs whose ids differ by a multiple of this share a block."""
LOOPBACK_PREFIX = "127."


@dataclass(frozen=True)
class Placement:
    """Where one process is in its job (torchrun's names)."""

    rank: int = 0
    """Global rank: node_rank x local_world_size + local_rank."""
    local_rank: int = 0
    """Rank among this node's processes."""
    world_size: int = 1
    """Processes in the job."""
    local_world_size: int = 1
    """Processes on this node."""
    node_rank: int = 0
    """This node's index in SLURM's node order (node 0 hosts the rendezvous)."""
    nodes: int = 1
    hosts: tuple[str, ...] = ()
    """Every node's host, in node-rank order (empty when not known: one node, or torchrun)."""
    master_addr: str = "127.0.0.1"
    """Node 0's host: torch's rendezvous, TensorFlow's worker 0."""
    master_port: int = DEFAULT_MASTER_PORT
    job_id: str | None = None
    """SLURM's job id, None outside SLURM."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def host(self) -> str | None:
        """This node's host as the node list names it (None when the list is not known)."""
        return self.hosts[self.node_rank] if self.node_rank < len(self.hosts) else None


# --- node lists ------------------------------------------------------------------------------


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list as names, in SLURM's order, as `scontrol show hostnames`
    gives them: 'gpu[01-03,07],login1' -> gpu01 gpu02 gpu03 gpu07 login1; several bracket
    groups in one name multiply out, the first group slowest: 'rack[1-2]-gpu[01-02]' ->
    rack1-gpu01 rack1-gpu02 rack2-gpu01 rack2-gpu02."""
    hosts: list[str] = []
    # split on the commas outside brackets
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        # literal text and bracket groups alternate: 'rack', '1-2', '-gpu', '01-02', ''
        parts = re.split(r"\[([^\]]*)\]", item)
        choices = [[p] if i % 2 == 0 else _expand_ranges(p) for i, p in enumerate(parts)]
        hosts += ["".join(names) for names in itertools.product(*choices)]
    return hosts


def _expand_ranges(ranges: str) -> list[str]:
    """'01-03,07' -> 01 02 03 07 (zero padding kept at the width of the range's start)."""
    out: list[str] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not hi:
            out.append(lo)
            continue
        out += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
    return out


def slurm_hostnames(nodelist: str) -> tuple[str, ...]:
    """The node list's hosts in SLURM's order: `scontrol show hostnames` where scontrol is on
    the PATH (SLURM's own reading of every form it writes), else expand_nodelist."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
            if out:
                return tuple(out)
        except (OSError, subprocess.SubprocessError):
            pass  # a client that cannot run: the node list's own syntax is enough
    return tuple(expand_nodelist(nodelist))


def job_nodelist(env: Mapping[str, str]) -> str | None:
    """SLURM's node list of the job (SLURM_JOB_NODELIST, or the older SLURM_NODELIST)."""
    return env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or None


# --- ports -----------------------------------------------------------------------------------


def job_port(job_id: str | None, override: int | None = None) -> int:
    """The job's first port: `override` (--master-port) when given; under SLURM
    PORT_LOW + (job id mod PORT_BLOCKS) x PORT_BLOCK, so the block [port, port + PORT_BLOCK)
    lies in PORT_LOW..PORT_HIGH; outside SLURM DEFAULT_MASTER_PORT."""
    if override is not None:
        return override
    if not job_id:
        return DEFAULT_MASTER_PORT
    digits = re.match(r"\d+", job_id)  # an array task's id: '1234_5' (SLURM_JOB_ID is plain)
    number = int(digits.group()) if digits else sum(job_id.encode())
    return PORT_LOW + (number % PORT_BLOCKS) * PORT_BLOCK


def worker_ports(first: int, per_node: int) -> list[int]:
    """The ports of a node's TensorFlow workers: first, first + 1, ..."""
    if per_node > PORT_BLOCK:
        raise ConfigError(
            f"{per_node} TensorFlow workers per node need more than the {PORT_BLOCK} ports a "
            "job takes; use fewer CPU workers per node"
        )
    return [first + i for i in range(per_node)]


def tf_cluster(
    hosts: tuple[str, ...] | list[str], per_node: int, first_port: int
) -> tuple[list[str], list[int]]:
    """TF_CONFIG's workers as (hosts, ports): `per_node` workers on each host, node-major
    (worker index = node rank x per_node + local index, as a torch rank), worker i of a node
    at first_port + i."""
    ports = worker_ports(first_port, per_node)
    return [h for h in hosts for _ in ports], [p for _ in hosts for p in ports]


# --- the readers -----------------------------------------------------------------------------


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: not an integer") from None


def slurm_placement(
    env: Mapping[str, str],
    hosts: tuple[str, ...] | None = None,
    master_port: int | None = None,
) -> Placement | None:
    """A SLURM task's place from SLURM's variables; None outside a SLURM allocation.
    `hosts`: the node list already expanded (slurm_hostnames); else expand_nodelist.
    `master_port`: an explicit override of the job's port (job_port)."""
    nodelist = job_nodelist(env)
    if nodelist is None:
        return None
    hosts = tuple(expand_nodelist(nodelist)) if hosts is None else tuple(hosts)
    nodes = len(hosts)
    tasks = _int(env, "SLURM_NTASKS", nodes)
    node_rank = _int(env, "SLURM_NODEID", 0)
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"SLURM_NODEID={node_rank} outside the node list {nodelist!r}")
    job_id = env.get("SLURM_JOB_ID") or None
    per_node, uneven = divmod(tasks, nodes)
    local_rank = _int(env, "SLURM_LOCALID", 0)
    # node-major whatever srun's --distribution: SLURM_PROCID only where nodes run unequal counts
    rank = (
        _int(env, "SLURM_PROCID", 0)
        if uneven or not per_node
        else node_rank * per_node + local_rank
    )
    return Placement(
        rank=rank,
        local_rank=local_rank,
        world_size=tasks,
        local_world_size=max(1, per_node),
        node_rank=node_rank,
        nodes=nodes,
        hosts=hosts,
        master_addr=hosts[0],
        master_port=job_port(job_id, master_port),
        job_id=job_id,
    )


def slurm_job_placement(env: Mapping[str, str], master_port: int | None = None) -> Placement | None:
    """slurm_placement with the node list in SLURM's own order (`scontrol show hostnames`):
    what the launcher and a submitit task run under SLURM; None outside an allocation."""
    nodelist = job_nodelist(env)
    hosts = slurm_hostnames(nodelist) if nodelist else None
    return slurm_placement(env, hosts, master_port)


def torchrun_placement(env: Mapping[str, str]) -> Placement | None:
    """A worker's place from what torchrun (or the submitit task, torch_env) exported; None
    without RANK."""
    if "RANK" not in env:
        return None
    world = _int(env, "WORLD_SIZE", 1)
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    rank = _int(env, "RANK", 0)
    return Placement(
        rank=rank,
        local_rank=_int(env, "LOCAL_RANK", rank),
        world_size=world,
        local_world_size=local_world,
        node_rank=_int(env, "GROUP_RANK", rank // max(1, local_world)),
        nodes=max(1, world // max(1, local_world)),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_MASTER_PORT),
        job_id=env.get("SLURM_JOB_ID") or None,
    )


def read_placement(env: Mapping[str, str], hosts: tuple[str, ...] | None = None) -> Placement:
    """This process' place: torchrun's variables first (a rank under torchrun inside a SLURM
    job is torchrun's), then SLURM's, else a single process."""
    return torchrun_placement(env) or slurm_placement(env, hosts) or Placement()


def torch_env(p: Placement) -> dict[str, str]:
    """What torch's env:// initialisation reads (the variables torchrun exports), for a
    process placed by SLURM directly (a submitit task per device). CUDA_VISIBLE_DEVICES is
    left as SLURM set it: cuda_device picks the device from what the process sees."""
    return {
        "RANK": str(p.rank),
        "LOCAL_RANK": str(p.local_rank),
        "WORLD_SIZE": str(p.world_size),
        "LOCAL_WORLD_SIZE": str(p.local_world_size),
        "GROUP_RANK": str(p.node_rank),
        "MASTER_ADDR": p.master_addr,
        "MASTER_PORT": str(p.master_port),
    }


def horovod_env(p: Placement) -> dict[str, str]:
    """What Horovod's Gloo controller reads at hvd.init(), for a process placed by SLURM (a
    submitit task per device) or by the node launcher (denoisebench.cluster.horovod_nodes): the
    variables horovodrun sets for each slot it starts (horovod.runner.gloo_run:
    create_slot_env_vars, create_run_env_vars), without horovodrun, which reaches other nodes
    over SSH. HOROVOD_HOSTNAME is this node's host as the node list names it: Horovod groups a
    node's processes by it (its rendezvous scope `local_<host>`), so every process of a node
    must give the same one, and the rendezvous server's plan names the same hosts. With one
    process there is no rendezvous: Horovod runs it alone."""
    env = {
        "HOROVOD_RANK": str(p.rank),
        "HOROVOD_SIZE": str(p.world_size),
        "HOROVOD_LOCAL_RANK": str(p.local_rank),
        "HOROVOD_LOCAL_SIZE": str(p.local_world_size),
        "HOROVOD_CROSS_RANK": str(p.node_rank),
        "HOROVOD_CROSS_SIZE": str(p.nodes),
        "HOROVOD_HOSTNAME": p.host or "localhost",
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
    }
    if p.world_size > 1:
        env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] = p.master_addr
        env["HOROVOD_GLOO_RENDEZVOUS_PORT"] = str(p.master_port)
    return env


def node_placements(
    hosts: tuple[str, ...], node_rank: int, per_node: int, master_addr: str, master_port: int
) -> list[Placement]:
    """The places of one node's `per_node` processes in a job of len(hosts) nodes, node-major
    (rank = node rank x per_node + local rank), as torchrun numbers its ranks."""
    if not 0 <= node_rank < len(hosts):
        raise ConfigError(f"node rank {node_rank} outside the {len(hosts)} hosts {list(hosts)}")
    return [
        Placement(
            rank=node_rank * per_node + local,
            local_rank=local,
            world_size=len(hosts) * per_node,
            local_world_size=per_node,
            node_rank=node_rank,
            nodes=len(hosts),
            hosts=hosts,
            master_addr=master_addr,
            master_port=master_port,
        )
        for local in range(per_node)
    ]


# --- the device, the CPU threads, the host's address ------------------------------------------


def _shown(env: Mapping[str, str]) -> str:
    mask = env.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={mask!r}" if mask is not None else "CUDA_VISIBLE_DEVICES unset"


def cuda_device(p: Placement, visible_gpus: int, env: Mapping[str, str]) -> int:
    """The CUDA ordinal of this process' GPU among the `visible_gpus` it sees. One visible GPU
    is its own (SLURM's --gpus-per-task, a site's ConstrainDevices, submitit's export each
    leave one, numbered 0); at least local_world_size visible: the node's GPUs are shared out
    by local rank (torchrun, --gpus-per-node). Anything else is refused, naming the counts."""
    if visible_gpus == 1:
        return 0
    if visible_gpus >= p.local_world_size and p.local_rank < visible_gpus:
        return p.local_rank
    raise ConfigError(
        f"local rank {p.local_rank} of {p.local_world_size} processes on this node sees "
        f"{visible_gpus} GPU(s) ({_shown(env)}): give each process one GPU, or every process at "
        f"least {p.local_world_size}"
    )


def ranks_per_gpu(ranks: int, gpus: int, shown: str) -> int:
    """How many of a node's `ranks` DDP processes share each of the `gpus` they see under
    runtime.share_gpus: ranks / gpus, a whole number above 1, else ConfigError naming the
    counts (`shown`: where the GPUs come from, e.g. CUDA_VISIBLE_DEVICES)."""
    if gpus >= 1 and ranks > gpus and ranks % gpus == 0:
        return ranks // gpus
    fix = (
        "each has its own GPU: leave runtime.share_gpus false (NCCL), or show fewer GPUs, "
        "e.g. CUDA_VISIBLE_DEVICES=0"
        if ranks <= gpus
        else f"give a multiple of {gpus} ranks"
    )
    raise ConfigError(
        f"runtime.share_gpus: {ranks} DDP rank(s) on this node cannot share {gpus} GPU(s) "
        f"({shown}) evenly: {fix}"
    )


@dataclass(frozen=True)
class GpuPlace:
    """A DDP rank's GPU: its CUDA ordinal, and how many of its node's ranks train on it."""

    ordinal: int
    ranks_per_gpu: int = 1
    gpus: int = 1
    """GPUs the node's ranks share (runtime.share_gpus), 1 otherwise."""

    @property
    def backend(self) -> str:
        """The process group's backend: NCCL, or gloo where ranks share a GPU.

        NCCL refuses two ranks of one host on one GPU: its communicator set-up (NVIDIA/nccl
        src/init.cc, initTransportsRank) compares the ranks' host hashes and PCI bus ids and
        fails, ncclInvalidUsage "Duplicate GPU detected : rank 1 and rank 0 both on CUDA device
        ...", since NCCL 2.5, and would not work without that check (NVIDIA/nccl#418). Gloo
        stages CUDA tensors through pinned host memory (torch's ProcessGroupGloo.cpp:
        AsyncAllreduceCUDAWork, AsyncBroadcastCUDAWork, AsyncAllgatherCUDAWork; gloo's GPU
        broadcast and all_reduce in torch.distributed's backend table; Backend.backend_capability
        gloo: cpu, cuda) and never asks which GPU a tensor is on: all DDP needs (an all-gather of
        the parameters' shapes, rank 0's weights broadcast, an all-reduce per gradient bucket)."""
        return "gloo" if self.ranks_per_gpu > 1 else "nccl"

    @property
    def speed_reason(self) -> str | None:
        """Why the run's speed figures are none: its ranks share GPUs (None when they do not)."""
        if self.ranks_per_gpu == 1:
            return None
        where = "one GPU" if self.gpus == 1 else "each GPU"
        return f"{self.ranks_per_gpu} ranks share {where}: correctness check, no speed figure"

    def runtime_fields(self) -> dict[str, int | str]:
        """What summary.json's `runtime` records of a shared GPU (nothing for a GPU of its own)."""
        if self.speed_reason is None:
            return {}
        return {
            "ranks_per_gpu": self.ranks_per_gpu,
            "backend": self.backend,
            "speed_reason": self.speed_reason,
        }


def gpu_place(
    p: Placement, visible_gpus: int, env: Mapping[str, str], share: bool = False
) -> GpuPlace:
    """A DDP rank's GPU among the `visible_gpus` it sees: cuda_device's, or with `share`
    (runtime.share_gpus) GPU local_rank // ranks_per_gpu, every rank of the node seeing the
    same GPUs (CUDA_VISIBLE_DEVICES="0" for two ranks: both on ordinal 0, over gloo)."""
    if not share:
        return GpuPlace(cuda_device(p, visible_gpus, env))
    per_gpu = ranks_per_gpu(p.local_world_size, visible_gpus, _shown(env))
    return GpuPlace(p.local_rank // per_gpu, per_gpu, visible_gpus)


def cpu_threads(env: Mapping[str, str], workers: int, cpus: int) -> int:
    """Threads per CPU worker when `workers` share this process' CPUs: SLURM_CPUS_PER_TASK
    where SLURM set it (the CPUs the task was given), else `cpus`; at least 1."""
    given = _int(env, "SLURM_CPUS_PER_TASK", 0) or cpus
    return max(1, given // max(1, workers))


def this_host() -> tuple[str, str]:
    """This machine's hostname and the address it resolves to here ('' when it does not)."""
    name = socket.gethostname()
    try:
        return name, socket.gethostbyname(name)
    except OSError:
        return name, ""


def check_routable_hostname(
    hostname: str, address: str, nodes: int, master_addr: str, env: Mapping[str, str]
) -> None:
    """A job across several nodes needs this node's hostname to resolve to an address the
    others can reach: gloo binds to it, and on Debian /etc/hosts maps the hostname to
    127.0.1.1. `address`: what `hostname` resolves to here. ConfigError in one line; nodes all
    on this machine (master_addr a loopback address) and an interface named for Gloo
    (GLOO_SOCKET_IFNAME for torch, HOROVOD_GLOO_IFACE for Horovod) are fine."""
    if nodes <= 1 or master_addr.startswith(LOOPBACK_PREFIX) or master_addr == "localhost":
        return
    if env.get("GLOO_SOCKET_IFNAME") or env.get("HOROVOD_GLOO_IFACE"):
        return
    if not address.startswith(LOOPBACK_PREFIX):
        return
    raise ConfigError(
        f"this node's hostname {hostname!r} resolves to {address}, a loopback address, so the "
        f"other {nodes - 1} node(s) cannot reach its processes: map it to the node's network "
        "address in /etc/hosts (or DNS), or name the network interface in GLOO_SOCKET_IFNAME "
        "(and HOROVOD_GLOO_IFACE for --engine horovod)"
    )
