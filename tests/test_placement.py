"""Where a process is in its job (core.placement): pure functions of recorded environments.

The SLURM environments below are what the fake-GRES test cluster (nodes n9, n10; docs in
/work/shared/FACTS.md's "Fake GPUs for SLURM") gives each task: `--gpus-per-node=G` shows every
task of a node all G GPUs; `--gpus-per-task=1` shows task l GPU l; a site with
ConstrainDevices=yes renumbers each task's only GPU to 0; submitit's default export() then sets
CUDA_VISIBLE_DEVICES to the local rank. `cuda_visible` counts what CUDA would see there.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys

import pytest

from denoisebench.core.config import ConfigError
from denoisebench.core.placement import (
    DEFAULT_MASTER_PORT,
    PORT_BLOCK,
    PORT_HIGH,
    PORT_LOW,
    Placement,
    check_routable_hostname,
    cpu_threads,
    cuda_device,
    expand_nodelist,
    job_port,
    read_placement,
    slurm_hostnames,
    slurm_placement,
    tf_cluster,
    torch_env,
    torchrun_placement,
)

NODES = ("n9", "n10")


def slurm_task(node: int, local: int, gpus: int, mode: str, job: str = "4242") -> dict[str, str]:
    """One task's environment in a job of 2 nodes x `gpus` tasks, as SLURM sets it.
    mode: per_node (--gpus-per-node), per_task (--gpus-per-task=1), constrained (per_task on a
    site with ConstrainDevices=yes), plus '+export' for after submitit's default export()."""
    base, _, export = mode.partition("+")
    env = {
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NODELIST": "n[9-10]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": str(2 * gpus),
        "SLURM_NODEID": str(node),
        "SLURM_LOCALID": str(local),
        "SLURM_PROCID": str(node * gpus + local),
        "SLURM_CPUS_PER_TASK": "4",
    }
    if base == "per_node":
        every = ",".join(str(i) for i in range(gpus))
        env |= {"CUDA_VISIBLE_DEVICES": every, "SLURM_STEP_GPUS": every}
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    elif base == "per_task":
        env |= {"CUDA_VISIBLE_DEVICES": str(local), "SLURM_STEP_GPUS": str(local)}
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    else:  # constrained: the task's cgroup holds one GPU, which CUDA numbers 0
        env |= {"CUDA_VISIBLE_DEVICES": "0", "SLURM_STEP_GPUS": str(local)}
        env["SLURM_GPUS_ON_NODE"] = "1"
    if export:
        env["CUDA_VISIBLE_DEVICES"] = str(local)  # TorchDistributedEnvironment().export()
    return env


def cuda_visible(env: dict[str, str], node_gpus: int, constrained: bool) -> int:
    """torch.cuda.device_count() there: the mask's entries up to the first one the process
    cannot see (a cgroup of one GPU shows only device 0)."""
    present = 1 if constrained else node_gpus
    count = 0
    for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
        if not entry.isdigit() or int(entry) >= present:
            break
        count += 1
    return count


@pytest.mark.parametrize("gpus", [1, 2, 4])
@pytest.mark.parametrize("mode", ["per_node", "per_task", "constrained", "per_node+export"])
def test_every_task_gets_its_own_gpu(gpus, mode):
    seen = set()
    for node in range(2):
        for local in range(gpus):
            env = slurm_task(node, local, gpus, mode)
            place = slurm_placement(env, NODES)
            visible = cuda_visible(env, gpus, mode.startswith("constrained"))
            device = cuda_device(place, visible, env)
            # the physical GPU that ordinal is: the mask's entry (constrained: the cgroup's one)
            physical = (
                int(env["SLURM_STEP_GPUS"])
                if mode == "constrained"
                else int(env["CUDA_VISIBLE_DEVICES"].split(",")[device])
            )
            seen.add((node, physical))
            assert device == (local if mode == "per_node" and gpus > 1 else 0)
    assert len(seen) == 2 * gpus  # no two tasks of a node on one GPU


def test_submitit_export_on_a_constrained_site_hides_the_gpu_and_says_so():
    """Why the submitit task does not call export(): task 1 of a node sees only GPU 0, and
    CUDA_VISIBLE_DEVICES=1 leaves it none."""
    env = slurm_task(0, 1, 2, "constrained+export")
    place = slurm_placement(env, NODES)
    with pytest.raises(ConfigError) as refused:
        cuda_device(place, cuda_visible(env, 2, constrained=True), env)
    assert str(refused.value) == (
        "local rank 1 of 2 processes on this node sees 0 GPU(s) (CUDA_VISIBLE_DEVICES='1'): "
        "give each process one GPU, or every process at least 2"
    )
    # fewer GPUs than processes on the node, more than one: which one is whose is not known
    with pytest.raises(ConfigError, match=r"sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES unset\)"):
        cuda_device(Placement(local_rank=1, local_world_size=4), 2, {})


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_slurm_ranks_are_node_major_from_slurms_node_0(gpus):
    places = [
        slurm_placement(slurm_task(node, local, gpus, "per_node"), NODES)
        for node in range(2)
        for local in range(gpus)
    ]
    assert [p.rank for p in places] == list(range(2 * gpus))
    for p in places:
        assert (p.world_size, p.local_world_size, p.nodes) == (2 * gpus, gpus, 2)
        assert (p.master_addr, p.hosts, p.host) == ("n9", NODES, NODES[p.node_rank])
    assert places[0].host == "n9"  # rank 0 on SLURM's node 0, though 'n10' < 'n9' as text
    # srun --distribution=cyclic numbers SLURM_PROCID across nodes: the rank stays node-major
    cyclic = slurm_task(1, 0, 2, "per_node") | {"SLURM_PROCID": "1"}
    assert slurm_placement(cyclic, NODES).rank == 2


def test_torch_env_round_trips_through_torchruns_names():
    place = slurm_placement(slurm_task(1, 1, 2, "per_node"), NODES)
    env = torch_env(place)
    assert env == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "MASTER_ADDR": "n9",
        "MASTER_PORT": str(job_port("4242")),
    }
    back = torchrun_placement(env)
    assert (back.rank, back.local_rank, back.node_rank, back.nodes) == (3, 1, 1, 2)
    # torchrun's variables win over SLURM's (torchrun inside a SLURM job)
    both = slurm_task(0, 0, 2, "per_node") | env
    assert read_placement(both).rank == 3
    assert read_placement({}) == Placement()


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [  # what `scontrol show hostnames` prints for each
        ("node1", ["node1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[8-10]-ib", ["a8-ib", "a9-ib", "a10-ib"]),
        ("x[1,3],y[009-010]", ["x1", "x3", "y009", "y010"]),
        ("n[9-10]", ["n9", "n10"]),
        ("rack[1-2]-gpu[01-02]", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"]),
        ("r[1-2]n[1,3],login", ["r1n1", "r1n3", "r2n1", "r2n3", "login"]),
    ],
)
def test_expand_nodelist_as_scontrol_does(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_node_lists_are_scontrols_where_it_runs(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('b-first a-second')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert slurm_hostnames("whatever[1-2]") == ("b-first", "a-second")
    fake.write_text("#!/bin/sh\necho 'no config' >&2\nexit 1\n")  # a client without a config
    assert slurm_hostnames("n[9-10]") == NODES
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert slurm_hostnames("n[9-10]") == NODES


def test_ports_come_from_the_job_id_below_the_ephemeral_range():
    assert job_port(None) == DEFAULT_MASTER_PORT == 29500  # outside SLURM: torchrun's
    assert job_port("4242", override=1234) == 1234  # --master-port wins
    firsts = [job_port(str(job)) for job in range(100_000, 101_000)]
    assert all(p >= PORT_LOW and p + PORT_BLOCK - 1 <= PORT_HIGH < 32768 for p in firsts)
    # neighbouring jobs (two jobs sharing a node) take disjoint blocks
    for a, b in itertools.pairwise(firsts):
        assert abs(a - b) >= PORT_BLOCK
    assert job_port("777_3") == job_port("777")  # an array task's id form
    assert slurm_placement(slurm_task(0, 0, 1, "per_node", job="5000"), NODES).master_port == (
        job_port("5000")
    )


def test_tf_workers_are_node_major_at_consecutive_ports():
    hosts, ports = tf_cluster(NODES, 2, 20032)
    assert list(zip(hosts, ports, strict=True)) == [
        ("n9", 20032),
        ("n9", 20033),
        ("n10", 20032),
        ("n10", 20033),
    ]
    with pytest.raises(ConfigError, match=f"more than the {PORT_BLOCK} ports"):
        tf_cluster(NODES, PORT_BLOCK + 1, 20000)


def test_tf_config_of_a_submitit_task_is_node_major():
    from denoisebench.cluster.slurm_job import tf_environment

    env = slurm_task(1, 0, 2, "per_node", job="4242")
    cfg = json.loads(tf_environment(slurm_placement(env, NODES))["TF_CONFIG"])
    port = job_port("4242")
    assert cfg["cluster"]["worker"] == [
        f"n9:{port}",
        f"n9:{port + 1}",
        f"n10:{port}",
        f"n10:{port + 1}",
    ]
    assert cfg["task"] == {"type": "worker", "index": 2}
    one = slurm_task(0, 0, 1, "per_node") | {"SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n9"}
    assert tf_environment(slurm_placement(one)) == {}


def test_cpu_threads_follow_slurms_cpus_per_task():
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "4"}, workers=2, cpus=64) == 2
    assert cpu_threads({}, workers=2, cpus=64) == 32
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "1"}, workers=2, cpus=64) == 1


def test_cpu_tasks_of_a_submitit_job_share_their_cpus():
    from denoisebench.cluster.slurm_job import cpu_thread_environment

    cpu = {"SLURM_CPUS_PER_TASK": "4"}
    assert cpu_thread_environment(cpu, 1) == {"OMP_NUM_THREADS": "4", "TF_NUM_INTRAOP_THREADS": "4"}
    assert cpu_thread_environment(cpu | {"OMP_NUM_THREADS": "3"}, 2) == {
        "TF_NUM_INTRAOP_THREADS": "2"
    }
    assert cpu_thread_environment(slurm_task(0, 0, 2, "per_node"), 1) == {}  # GPUs: left alone
    assert cpu_thread_environment({}, 1) == {}


def test_a_hostname_on_loopback_is_refused_across_nodes():
    with pytest.raises(ConfigError) as refused:
        check_routable_hostname("n9", "127.0.1.1", 2, "n9", {})
    message = str(refused.value)
    assert "'n9' resolves to 127.0.1.1, a loopback address" in message
    assert "/etc/hosts" in message and "\n" not in message
    check_routable_hostname("n9", "10.0.0.9", 2, "n9", {})  # routable
    check_routable_hostname("n9", "127.0.1.1", 1, "n9", {})  # one node
    check_routable_hostname("vm", "127.0.0.1", 2, "127.0.0.1", {})  # every node on this machine
    check_routable_hostname("n9", "127.0.1.1", 2, "n9", {"GLOO_SOCKET_IFNAME": "eth0"})


# --- the collective timeout each trainer is given (runtime.collective_timeout_s) --------------


def test_the_collective_timeout_is_a_checked_setting():
    from denoisebench.core.config import load_config, parse_overrides

    assert load_config("smoke").runtime.collective_timeout_s == 300.0  # minutes, not gloo's 30
    cfg = load_config("smoke", parse_overrides(["runtime.collective_timeout_s=20"]))
    assert cfg.runtime.collective_timeout_s == 20.0
    with pytest.raises(ConfigError, match=r"runtime.collective_timeout_s must be >= 1, got 0"):
        load_config("smoke", parse_overrides(["runtime.collective_timeout_s=0"]))


def test_torch_process_group_waits_the_configured_timeout(monkeypatch):
    import datetime

    from denoisebench.core.config import load_config, parse_overrides
    from denoisebench.torch_backend import train as train_torch

    asked = {}
    monkeypatch.setattr(train_torch.dist, "init_process_group", lambda **kw: asked.update(kw))
    monkeypatch.setattr(train_torch.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_torch.dist, "get_world_size", lambda: 2)
    cfg = load_config(
        "smoke", parse_overrides(["runtime.collective_timeout_s=42", "train.device=cpu"])
    )
    assert train_torch.init_process(cfg, "ddp")[1:] == (1, 2, None)  # no GPU place on CPUs
    assert asked == {"backend": "gloo", "timeout": datetime.timedelta(seconds=42)}


def test_tf_multi_worker_collectives_wait_the_configured_timeout(monkeypatch):
    import tensorflow as tf

    from denoisebench.tf_backend import train as train_tf

    made = {}

    def fake_strategy(communication_options=None):
        made["options"] = communication_options
        return "strategy"

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", fake_strategy)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["h:1"]}, "task": {"index": 0}}')
    strategy, name, _ = train_tf.build_strategy(1, "cpu", timeout_s=42.0)
    assert (strategy, name) == ("strategy", "multi_worker_mirrored")
    assert made["options"].timeout_seconds == 42.0
