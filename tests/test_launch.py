"""Command builders and topology helpers: pure functions, checked without GPUs or clusters."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import gpu_node

from denoisebench.core.config import ConfigError
from denoisebench.core.distributed import maybe_inject_fault, tf_config, tf_worker_index
from denoisebench.core.placement import job_port
from launch.__main__ import main
from launch.commands import Topology, build_tf_cmds, build_torchrun_cmd
from launch.options import build_parser
from launch.run import resolve_topology

RUN = Path("/r/run1")


def test_torchrun_one_node_is_standalone():
    argv, env = build_torchrun_cmd(
        RUN, Topology(devices=4, cpu_threads=3), run_id="run1", base_env={}
    )
    assert argv[:5] == [
        sys.executable,
        "-m",
        "denoisebench.cluster.torchrun",
        "--record-failures-in",  # the wrapper's own option, before torchrun's
        str(RUN / "torch"),
    ]
    assert "--standalone" in argv and "--nproc-per-node=4" in argv
    assert argv[-3:] == ["-m", "denoisebench.torch_backend.train", str(RUN)]
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": "3",
    }


def test_torchrun_multi_node_uses_the_static_rendezvous_at_node_0():
    """torchrun's static rendezvous: rank = node rank x devices + local rank, the store on node
    0. (c10d's would order the nodes by host name and pid: rank 0 on n10 before n9.)"""
    from torch.distributed.run import config_from_args, parse_args

    topo = Topology(devices=8, gpus=True, nodes=2, node_rank=1, master_addr="n9", master_port=29400)
    argv, env = build_torchrun_cmd(RUN, topo, run_id="run1", resume=True, base_env={})
    assert "--standalone" not in argv
    for flag in ("--nnodes=2", "--node-rank=1", "--master-addr=n9", "--master-port=29400"):
        assert flag in argv
    assert not any(a.startswith(("--rdzv-backend", "--rdzv-endpoint", "--rdzv-conf")) for a in argv)
    assert argv[-1] == "--resume"
    assert "OMP_NUM_THREADS" not in env  # GPUs: leave threads alone
    # what torchrun makes of it: the static backend, this node's rank, node 0's address
    torchrun_args = argv[argv.index("--record-failures-in") + 2 :]
    config, _, _ = config_from_args(parse_args(torchrun_args))
    assert (config.rdzv_backend, config.rdzv_endpoint) == ("static", "n9:29400")
    assert config.rdzv_configs["rank"] == 1 and config.nproc_per_node == 8


def test_tf_mirrored_is_one_process_driving_all_devices():
    [(argv, env)] = build_tf_cmds(
        RUN, Topology(devices=4, gpus=True), multi_worker=False, base_env={}
    )
    assert argv[-2:] == ["--devices", "4"] and "TF_CONFIG" not in env


def test_tf_multi_worker_on_one_node_gets_a_worker_per_device():
    cmds = build_tf_cmds(
        RUN, Topology(devices=2, gpus=True), multi_worker=True, ports=[1111, 2222], base_env={}
    )
    assert len(cmds) == 2
    for i, (argv, env) in enumerate(cmds):
        cfg = json.loads(env["TF_CONFIG"])
        assert cfg == {
            "cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]},
            "task": {"type": "worker", "index": i},
        }
        assert env["CUDA_VISIBLE_DEVICES"] == str(i)
        assert argv[-2:] == ["--devices", "1"]
    with pytest.raises(ValueError, match="needs 2 ports"):
        build_tf_cmds(RUN, Topology(devices=2), multi_worker=True, ports=None, base_env={})


def test_tf_multi_worker_takes_each_gpu_from_the_parents_mask():
    topo = Topology(devices=2, gpus=True)
    for mask, expected in [
        ("4,5,6,7", ["4", "5"]),  # SLURM's GPUs 4-7: worker 0 gets 4, not 0
        (
            "GPU-8932f937-d72c-4106, MIG-1b2c3d4e-5f60-7182",
            ["GPU-8932f937-d72c-4106", "MIG-1b2c3d4e-5f60-7182"],
        ),
    ]:
        cmds = build_tf_cmds(
            RUN, topo, True, ports=[1111, 2222], base_env={"CUDA_VISIBLE_DEVICES": mask}
        )
        assert [env["CUDA_VISIBLE_DEVICES"] for _, env in cmds] == expected
    with pytest.raises(
        ValueError, match=r"CUDA_VISIBLE_DEVICES='3' lists 1 GPU\(s\), fewer than the 2"
    ):
        build_tf_cmds(RUN, topo, True, ports=[1111, 2222], base_env={"CUDA_VISIBLE_DEVICES": "3"})
    # CPU workers leave the mask alone
    cmds = build_tf_cmds(
        RUN, Topology(devices=2), True, ports=[1, 2], base_env={"CUDA_VISIBLE_DEVICES": "3"}
    )
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in cmds] == ["3", "3"]


def test_trainers_number_gpus_in_nvml_order_unless_told_otherwise():
    # CUDA's default order is fastest first, NVML's is PCI bus: PCI_BUS_ID makes them agree
    _, env = build_torchrun_cmd(RUN, Topology(devices=2, gpus=True), run_id="r", base_env={})
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    [(_, env)] = build_tf_cmds(
        RUN, Topology(), False, base_env={"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    )
    assert env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # the user's choice stands


def test_tf_multi_node_lists_every_host():
    topo = Topology(devices=4, gpus=True, nodes=2, node_rank=1, master_port=12345, hosts=("a", "b"))
    [(argv, env)] = build_tf_cmds(RUN, topo, multi_worker=False, base_env={})
    assert argv[-2:] == ["--devices", "4"]  # each worker drives its node's GPUs
    assert json.loads(env["TF_CONFIG"])["cluster"]["worker"] == ["a:12345", "b:12345"]
    assert json.loads(env["TF_CONFIG"])["task"]["index"] == 1
    with pytest.raises(ValueError, match="every node's host"):
        build_tf_cmds(RUN, Topology(nodes=2, hosts=("a",)), multi_worker=False, base_env={})


def test_tf_multi_node_on_cpus_runs_a_worker_per_device_as_torch_runs_a_rank():
    """2 nodes x 2 CPU workers: torch trains 4 ranks, so TensorFlow trains 4 workers (not 2
    workers of one CPU device each: half the global batch)."""
    topo = Topology(devices=2, nodes=2, node_rank=1, master_port=20064, hosts=("n9", "n10"))
    cmds = build_tf_cmds(RUN, topo, multi_worker=False, base_env={})
    assert [argv[-2:] for argv, _ in cmds] == [["--devices", "1"]] * 2
    configs = [json.loads(env["TF_CONFIG"]) for _, env in cmds]
    for c in configs:
        assert c["cluster"]["worker"] == ["n9:20064", "n9:20065", "n10:20064", "n10:20065"]
    assert [c["task"]["index"] for c in configs] == [2, 3]  # node 1's, node-major


def test_slurm_environment_gives_the_topology(monkeypatch, capsys):
    import launch.run

    monkeypatch.setattr(launch.run, "this_host", lambda: ("gpu2", "10.0.0.2"))
    monkeypatch.setattr(launch.run, "gpu_info", lambda: {"gpus": [], "reason": "none here"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    env = {
        "SLURM_JOB_NODELIST": "gpu[1-2]",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_CPUS_PER_TASK": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    topo = resolve_topology(build_parser().parse_args(["--gpus", "2"]))
    assert (topo.nodes, topo.node_rank, topo.master_addr, topo.hosts) == (
        2,
        1,
        "gpu1",
        ("gpu1", "gpu2"),
    )
    assert topo.master_port == job_port("77") != 29500  # two jobs on a node: their own ports
    assert topo.cpu_threads == 2  # SLURM's 4 CPUs for 2 workers, not 64 // 2
    # what each framework runs: the same 4 devices in both
    assert (
        "running 2 CPU workers per node instead (torch: gloo ranks, 2 per node on 2 nodes, 4 in "
        "all; tf: MultiWorkerMirroredStrategy workers, 2 per node on 2 nodes, 4 in all)"
    ) in capsys.readouterr().out
    explicit = resolve_topology(build_parser().parse_args(["--gpus", "2", "--master-port", "1234"]))
    assert explicit.master_port == 1234
    monkeypatch.setattr(launch.run, "this_host", lambda: ("gpu2", "127.0.1.1"))
    with pytest.raises(ConfigError, match=r"'gpu2' resolves to 127\.0\.1\.1, a loopback"):
        resolve_topology(build_parser().parse_args(["--gpus", "2"]))


def test_outside_slurm_the_port_and_threads_are_as_before(monkeypatch):
    import launch.run

    for key in ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(launch.run, "gpu_info", lambda: {"gpus": [], "reason": "none here"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    topo = resolve_topology(build_parser().parse_args(["--gpus", "2"]))
    assert (topo.master_port, topo.cpu_threads) == (29500, 4)


def test_tf_config_and_worker_index():
    cfg = tf_config(["h0", "h1"], 5000, 1)
    assert tf_worker_index({"TF_CONFIG": cfg}) == (1, 2)
    assert tf_worker_index({}) == (0, 1)
    with pytest.raises(ValueError, match="worker index 2"):
        tf_config(["h0", "h1"], 5000, 2)


def test_fault_injection_only_where_asked(monkeypatch):
    maybe_inject_fault(range(1, 2), 3)  # unset: nothing happens
    monkeypatch.setenv("DENOISEBENCH_FAULT", "1:3")
    maybe_inject_fault(range(0, 1), 3)
    maybe_inject_fault(range(1, 2), 2)
    with pytest.raises(RuntimeError, match="on rank 1 at step 3"):
        maybe_inject_fault(range(1, 2), 3)
    # a MirroredStrategy process drives replicas 0 and 1: rank 1's fault is its own
    with pytest.raises(RuntimeError, match="on rank 1 at step 3"):
        maybe_inject_fault(range(0, 2), 3)


def test_horovod_needs_a_worker_count_and_every_node_host(tmp_path, capsys, monkeypatch):
    """--engine horovod stops at once, writing nothing, without --gpus, across nodes without
    every node's host (outside SLURM), and with --sweep (tests/test_horovod.py trains with it)."""
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert main(["--engine", "horovod", "--results", str(tmp_path)]) == 2
    assert "give --gpus N" in capsys.readouterr().err
    two_nodes = ["--nodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1", "--run-id", "h"]
    assert main(["--engine", "horovod", "--gpus", "1", *two_nodes, "--results", str(tmp_path)]) == 2
    assert "--hosts h0,h1" in capsys.readouterr().err
    assert main(["--engine", "horovod", "--sweep", "smoke", "--results", str(tmp_path)]) == 2
    assert "no --sweep" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_multi_node_needs_a_shared_run_id(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    assert main(["--nodes", "2", "--results", str(tmp_path)]) == 2
    assert "--run-id" in capsys.readouterr().err


NODE = gpu_node(8)


@pytest.mark.parametrize(
    ("mask", "shown"),
    [
        (None, [0, 1, 2, 3, 4, 5, 6, 7]),
        ("3,1", [3, 1]),  # CUDA's order is the mask's
        ("GPU-5aa, 2", [5, 2]),  # a UUID prefix names one GPU
        ("0,9,1", [0]),  # an index past the node's GPUs ends the list
        ("0,0,1", [0]),  # so does a GPU named twice
        ("GPU-", []),  # a prefix of every UUID names no one GPU
        ("", []),
        ("-1", []),
    ],
)
def test_the_gpus_a_process_sees_follow_cuda_visible_devices(mask, shown):
    from denoisebench.measure.environment import visible_gpus

    env = {} if mask is None else {"CUDA_VISIBLE_DEVICES": mask}
    info = visible_gpus(NODE, env)
    assert [g["index"] for g in info["gpus"]] == shown
    assert ("reason" in info) == (not shown)


def test_gpus_beyond_the_mask_are_refused_and_a_mask_of_none_means_cpu_workers(monkeypatch, capsys):
    import launch.run
    from denoisebench.measure.environment import visible_gpus

    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.setattr(launch.run, "gpu_info", lambda: visible_gpus(NODE, os.environ))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError) as refused:
        resolve_topology(build_parser().parse_args(["--gpus", "4"]))
    assert str(refused.value) == (
        "--gpus 4, but CUDA_VISIBLE_DEVICES='0,1' shows 2 of this node's 8 GPU(s)"
    )
    assert resolve_topology(build_parser().parse_args(["--gpus", "2"])).gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    topo = resolve_topology(build_parser().parse_args(["--gpus", "2"]))
    assert not topo.gpus
    assert "CUDA_VISIBLE_DEVICES='' shows none of this node's 8 GPU(s)" in capsys.readouterr().out


def test_a_results_path_the_system_refuses_is_named_in_one_line(tmp_path, capsys):
    """A folder name over 255 bytes raised ENAMETOOLONG from Path.exists() (a traceback)."""
    long_name = tmp_path / ("a" * 256)
    assert main(["--profile", "smoke", "--results", str(long_name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --results {str(long_name)[:80]}...: File name too long")
    assert len(err.strip().splitlines()) == 1


def test_repeats_have_an_upper_bound_checked_before_anything_is_written(tmp_path, capsys):
    """--repeats 1000000 wrote 10,856 repeat folders in 40 s before any training."""
    argv = ["--profile", "smoke", "--results", str(tmp_path), "--no-space-check"]
    assert main([*argv, "--repeats", "1000000"]) == 2
    assert "--repeats 1000000 must be in 1..100" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
