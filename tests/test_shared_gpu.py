"""DDP ranks sharing one GPU (runtime.share_gpus): the multi-GPU path as a correctness check.

The environments are the ones two ranks on a one-GPU node really get: torchrun's (LOCAL_RANK
0/1, LOCAL_WORLD_SIZE 2, CUDA_VISIBLE_DEVICES="0" in both) and SLURM's (--ntasks-per-node=2
--gpus-per-node=1: SLURM_LOCALID 0/1, CUDA_VISIBLE_DEVICES=0 in both, as the fake-GRES cluster
of FACTS.md shows it). Both ranks must land on ordinal 0 over gloo (NCCL refuses two ranks on
one GPU: core/placement.py's GpuPlace.backend), and the run must say it has no speed figure.
The GPU check's step (bench/gpu_shared.py) runs for real here at its CPU rehearsal's sizes.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import gpu_node

from denoisebench.bench import gpu_shared
from denoisebench.bench.gpu_runner import Run, StepFailed, StepResult
from denoisebench.bench.gpu_steps import GPU_SIZES, REHEARSAL_SIZES, Context
from denoisebench.core.config import ConfigError, load_config, parse_overrides
from denoisebench.core.placement import (
    GpuPlace,
    gpu_place,
    read_placement,
    slurm_placement,
    torchrun_placement,
)
from denoisebench.measure.environment import visible_gpus
from launch.checks import check_gpu_count, check_local_inputs

REASON = "2 ranks share one GPU: correctness check, no speed figure"


def torchrun_rank(local: int, ranks: int = 2, mask: str = "0") -> dict[str, str]:
    """What torchrun --standalone --nproc-per-node `ranks` exports to local rank `local`."""
    return {
        "RANK": str(local),
        "LOCAL_RANK": str(local),
        "WORLD_SIZE": str(ranks),
        "LOCAL_WORLD_SIZE": str(ranks),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "CUDA_VISIBLE_DEVICES": mask,
    }


def slurm_task(local: int) -> dict[str, str]:
    """Task `local` of `sbatch -N1 --ntasks-per-node=2 --gpus-per-node=1` (one GPU, both see it)."""
    return {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "n9",
        "SLURM_NTASKS": "2",
        "SLURM_NODEID": "0",
        "SLURM_LOCALID": str(local),
        "SLURM_PROCID": str(local),
        "CUDA_VISIBLE_DEVICES": "0",
        "SLURM_STEP_GPUS": "0",
        "SLURM_GPUS_ON_NODE": "1",
    }


@pytest.mark.parametrize(
    "env_of",
    [torchrun_rank, slurm_task],
    ids=["torchrun", "slurm"],
)
def test_two_ranks_seeing_one_gpu_share_ordinal_0_over_gloo(env_of):
    places = []
    for local in (0, 1):
        env = env_of(local)
        where = read_placement(env) if "RANK" in env else slurm_placement(env, ("n9",))
        places.append(gpu_place(where, 1, env, share=True))
    assert [g.ordinal for g in places] == [0, 0]
    assert {(g.backend, g.ranks_per_gpu, g.speed_reason) for g in places} == {(
        "gloo", 2, REASON
    )}  # fmt: skip
    assert places[0].runtime_fields() == {
        "ranks_per_gpu": 2,
        "backend": "gloo",
        "speed_reason": REASON,
    }
    # without share_gpus each rank takes the one GPU it sees as its own (--gpus-per-task, a
    # site's ConstrainDevices), on NCCL, labelled as nothing
    alone = gpu_place(torchrun_placement(torchrun_rank(1)), 1, torchrun_rank(1))
    assert alone == GpuPlace(0) and alone.backend == "nccl" and alone.runtime_fields() == {}


def test_four_ranks_share_two_gpus_two_on_each():
    envs = [torchrun_rank(local, ranks=4, mask="0,1") for local in range(4)]
    places = [gpu_place(torchrun_placement(env), 2, env, share=True) for env in envs]
    assert [g.ordinal for g in places] == [0, 0, 1, 1]
    assert places[0].speed_reason == "2 ranks share each GPU: correctness check, no speed figure"


@pytest.mark.parametrize(
    ("ranks", "gpus", "mask", "said"),
    [
        (3, 2, "0,1", "3 DDP rank(s) on this node cannot share 2 GPU(s) "
         "(CUDA_VISIBLE_DEVICES='0,1') evenly: give a multiple of 2 ranks"),
        (2, 2, "0,1", "each has its own GPU: leave runtime.share_gpus false (NCCL), or show "
         "fewer GPUs, e.g. CUDA_VISIBLE_DEVICES=0"),
        (1, 1, "0", "1 DDP rank(s) on this node cannot share 1 GPU(s)"),
        (2, 0, "", "cannot share 0 GPU(s) (CUDA_VISIBLE_DEVICES='')"),
    ],
)  # fmt: skip
def test_ranks_that_cannot_share_the_gpus_evenly_are_refused(ranks, gpus, mask, said):
    env = torchrun_rank(0, ranks=ranks, mask=mask)
    with pytest.raises(ConfigError) as refused:
        gpu_place(torchrun_placement(env), gpus, env, share=True)
    assert said in str(refused.value) and "\n" not in str(refused.value)


NODE = gpu_node(2)


def test_the_launcher_counts_ranks_against_gpus_with_share_gpus():
    one = visible_gpus(NODE, {"CUDA_VISIBLE_DEVICES": "0"})
    check_gpu_count(2, one, share_gpus=True)  # 2 ranks on the one GPU shown
    with pytest.raises(ConfigError, match=r"^--gpus 2, but CUDA_VISIBLE_DEVICES='0' shows 1 of"):
        check_gpu_count(2, one, share_gpus=False)
    uneven = r"3 DDP rank\(s\) .* share 2 GPU\(s\) \(--gpus 3; this node has 2 GPU\(s\)\)"
    with pytest.raises(ConfigError, match=uneven):
        check_gpu_count(3, NODE, share_gpus=True)
    check_gpu_count(4, NODE, share_gpus=True)
    check_gpu_count(8, {"gpus": [], "reason": "none"}, share_gpus=True)  # CPU workers


def test_resolve_topology_lets_two_ranks_share_one_gpu(monkeypatch):
    import launch.run
    from launch.options import build_parser

    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(
        launch.run, "gpu_info", lambda: visible_gpus(NODE, {"CUDA_VISIBLE_DEVICES": "1"})
    )
    args = build_parser().parse_args(["--gpus", "2"])
    with pytest.raises(ConfigError, match="--gpus 2, but"):
        launch.run.resolve_topology(args)
    topo = launch.run.resolve_topology(args, share_gpus=True)
    assert (topo.devices, topo.gpus, topo.cpu_threads) == (2, True, 0)


def test_share_gpus_is_pytorch_only_and_not_with_cuda_graphs():
    cfg = load_config("smoke", parse_overrides(["runtime.share_gpus=true"]))
    assert cfg.runtime.share_gpus and not load_config("smoke").runtime.share_gpus
    with pytest.raises(ConfigError, match="add --framework torch"):
        check_local_inputs(cfg, ["torch", "tf"])
    check_local_inputs(cfg, ["torch"])
    with pytest.raises(ConfigError, match=r"runtime\.share_gpus with runtime\.cuda_graphs"):
        load_config(
            "smoke", parse_overrides(["runtime.share_gpus=true", "runtime.cuda_graphs=true"])
        )


@pytest.mark.parametrize("share", [True, False])
def test_the_trainer_joins_over_gloo_on_the_gpu_it_shares(monkeypatch, share):
    """What init_process asks of torch for rank 1 of 2 seeing CUDA_VISIBLE_DEVICES=0, with a
    stand-in CUDA: gloo and ordinal 0 with share_gpus; NCCL (which would refuse) without."""
    import torch

    from denoisebench.torch_backend import train as train_torch

    for key, value in torchrun_rank(1).items():
        monkeypatch.setenv(key, value)
    asked: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: asked.setdefault("set_device", d))
    monkeypatch.setattr(train_torch.dist, "init_process_group", lambda **kw: asked.update(kw))
    monkeypatch.setattr(train_torch.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_torch.dist, "get_world_size", lambda: 2)
    cfg = load_config("smoke", parse_overrides([f"runtime.share_gpus={share}", "train.device=gpu"]))
    device, rank, ranks, gpu = train_torch.init_process(cfg, "ddp")
    assert (device, rank, ranks, asked["set_device"]) == (torch.device("cuda", 0), 1, 2, 0)
    timeout = datetime.timedelta(seconds=cfg.runtime.collective_timeout_s)
    assert asked["backend"] == ("gloo" if share else "nccl") and asked["timeout"] == timeout
    label = train_torch.device_label(device, "ddp", ranks, gpu)
    assert label == ("2 ranks on cuda, 2 per GPU" if share else "2 x cuda")


# --- the GPU check's step ------------------------------------------------------------------


def test_the_step_runs_one_device_then_two_shared_ranks_with_the_same_global_batch(tmp_path):
    ctx = Context(GPU_SIZES, ["torch"], tmp_path, tmp_path)
    one, two = gpu_shared.commands(ctx)
    for argv in (one, two):
        assert argv[argv.index("--epochs") + 1] == "3"
        assert "runtime.precision=float64" in argv and "train.device=gpu" in argv
    assert one[one.index("--batch-size") + 1] == "16" and "--gpus" not in one
    assert two[two.index("--batch-size") + 1] == "8" and two[two.index("--gpus") + 1] == "2"
    assert "runtime.share_gpus=true" in two and "runtime.share_gpus=true" not in one


def fake_run(folder: Path, epochs: int, weights: list[np.ndarray], runtime: dict) -> Path:
    """A framework folder with what compare_runs reads."""
    fw = folder / "torch"
    fw.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 0.25 - e / 100, "test_loss": 0.23 - e / 100}
            for e in range(epochs)]  # fmt: skip
    (fw / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"strategy": "ddp", "world_size": 2, "global_batch": 16, "device": "x"}
    (fw / "summary.json").write_text(json.dumps(summary | {"runtime": runtime}))
    np.savez(fw / "weights.npz", *weights)
    return fw


def test_the_report_fails_on_a_difference_or_a_missing_label(tmp_path):
    w = [np.full((3, 3), 0.5), np.zeros(4)]
    one = fake_run(tmp_path / "one", 3, w, {})
    labelled = {"ranks_per_gpu": 2, "backend": "gloo", "speed_reason": REASON}
    good = fake_run(tmp_path / "good", 3, [x + 1e-12 for x in w], labelled)
    figures = gpu_shared.compare_runs(one, good, on_gpu=True)
    assert figures["problems"] == [] and figures["max_weight_diff"] < 1e-9
    assert gpu_shared.table_lines(figures)[0] == gpu_shared.NOTE
    unlabelled = fake_run(tmp_path / "unlabelled", 3, w, {})
    assert gpu_shared.compare_runs(one, unlabelled, on_gpu=False)["problems"] == []  # CPU
    said = gpu_shared.compare_runs(one, unlabelled, on_gpu=True)["problems"]
    assert "the shared run's summary.json carries no runtime.speed_reason" in said
    off = fake_run(tmp_path / "off", 3, [w[0] + 3e-3, w[1]], labelled)
    said = gpu_shared.compare_runs(one, off, on_gpu=True)["problems"]
    assert said == ["final weights differ by up to 0.003 (tolerance 1e-09)"]
    short = fake_run(tmp_path / "short", 2, w, labelled)
    assert (
        "epochs recorded: 3 on one device, 2 with 2 ranks"
        in gpu_shared.compare_runs(one, short, on_gpu=True)["problems"]
    )


def test_a_failed_run_ends_the_step_with_its_last_lines(tmp_path):
    class Failing:
        def run(self, argv, check=True, share=1.0):
            return Run(argv, 1, 2.0, False, "Traceback\nRuntimeError: Duplicate GPU detected\n")

    ctx = Context(REHEARSAL_SIZES, ["torch"], tmp_path, tmp_path)
    res = StepResult("shared-gpu", "t")
    with pytest.raises(StepFailed) as failed:
        gpu_shared.report(Failing(), ctx, res, gpu_shared.commands(ctx))  # type: ignore[arg-type]
    assert failed.value.status == "failed"
    assert (
        "the one device run: exit 1: Traceback | RuntimeError: Duplicate GPU" in failed.value.reason
    )


def test_the_report_takes_no_speed_figure_from_ranks_sharing_a_gpu():
    """A shared run's summary gives runtime.speed_reason: its time and energy figures are
    missing with that reason in the report's rows, its quality stays; and the new key at its
    default leaves the setup id of older run folders (which lack it) unchanged."""
    from denoisebench.report import runs

    row = {fig: 1.0 for fig in runs.SPEED_FIGURES} | {"test_psnr_db": 27.0}
    out = runs.without_speed_figures(dict(row), gpu_shared.NOTE)
    assert all(out[fig] is None for fig in runs.SPEED_FIGURES)
    assert {out[why] for why in runs.SPEED_FIGURES.values()} == {gpu_shared.NOTE}
    assert out["test_psnr_db"] == 27.0
    assert runs.without_speed_figures(dict(row), None) == row
    old = {"profile": "default", "runtime": {"precision": "float32"}}
    new = {"profile": "default", "runtime": {"precision": "float32", "share_gpus": False}}
    shared = {"profile": "default", "runtime": {"precision": "float32", "share_gpus": True}}
    assert runs._setup_id(new) == runs._setup_id(old) != runs._setup_id(shared)
