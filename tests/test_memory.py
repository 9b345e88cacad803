"""core/memory.py's estimate of a training step's memory, and the launcher's check of it
(launch/folders.check_step_memory): the formula's terms, the estimate against the peak of a
real run, the refusal (exit 2, one line, nothing written), and the GPU branch with a GPU whose
memory is made up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from denoisebench.core import memory
from denoisebench.core.config import ConfigError, load_config, parse_overrides
from launch import folders
from launch.__main__ import main
from launch.commands import Topology
from launch.options import build_parser

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def config(*pairs: str):
    return load_config("default", parse_overrides(["data.source=synthetic", *pairs]))


def args_for(*argv: str):
    return build_parser().parse_args(list(argv))


def test_the_default_models_terms_by_hand():
    """64x64x3 images; layer outputs 32x32x32, 16x16x64, 8x8x128, back to 16x16x64, 32x32x32,
    64x64x3 (118,784 values, the largest 32,768): kept once, two of the largest in flight, the
    MAE's two images, all float32; the global batch's clean and noisy images."""
    cfg = config()
    assert memory.image_bytes(cfg) == 4 * (118_784 + 2 * 32_768) + 2 * 4 * 12_288
    assert memory.global_image_bytes(cfg) == 2 * 4 * 12_288
    assert memory.param_bytes(cfg) == 186_371 * 16
    silu = config("model.activation=silu")  # SiLU differentiates through its input
    assert memory.image_bytes(silu) - memory.image_bytes(cfg) == 4 * (118_784 - 12_288)
    bf16 = config("runtime.precision=bfloat16")  # activations in 2 bytes, the casts added
    assert memory.image_bytes(bf16) == 2 * (118_784 + 2 * 32_768) + 2 * 4 * 12_288 + 6 * 12_288


def test_the_largest_batch_is_the_last_that_fits():
    cfg, layout = config("data.synthetic_images=5000"), memory.Layout()
    most = memory.largest_batch(cfg, "torch", layout, 8 * GIB)
    assert memory.estimate(cfg, "torch", layout, most).total <= 8 * GIB
    assert memory.estimate(cfg, "torch", layout, most + 1).total > 8 * GIB
    assert 5_000 < most < 8 * GIB / memory.image_bytes(cfg)
    assert memory.largest_batch(cfg, "torch", layout, GIB // 2) == 0  # the framework alone


def peak_rss(argv: list[str]) -> int:
    """The largest resident set of any process of a launch, in bytes: a fresh interpreter runs
    it and reads its children's peak (RUSAGE_CHILDREN: the largest waited-for descendant)."""
    code = (
        "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "launch", *argv]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return int(proc.stdout.splitlines()[-1]) * 1024


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_the_estimate_covers_a_real_runs_peak(tmp_path, framework):
    """One step of 1,024 images (1,200 synthetic ones, 1,111 for training): the estimate is
    never below the peak, and near the 1.2 to 1.5 times it of the calibration (docs/usage.md#memory)
    with room for another machine; the batch is about half of it, so an estimate that missed
    much of a step's tensors would fall below the peak."""
    pairs = ["data.synthetic_images=1200", "train.batch_size=1024", "train.epochs=1"]
    sets = [a for p in pairs for a in ("--set", p)]
    argv = ["--framework", framework, "--data", "synthetic", *sets, "--no-report"]
    peak = peak_rss([*argv, "--results", str(tmp_path), "--run-id", "m"])
    estimate = memory.estimate(config(*pairs), framework, memory.Layout()).total
    assert peak <= estimate <= 1.75 * peak, (peak / GIB, estimate / GIB)


def test_a_batch_too_large_is_refused_in_one_line_and_nothing_is_written(
    tmp_path, monkeypatch, capsys
):
    """With 4 GiB available: exit 2, one line naming the key, the value, the largest batch
    and both figures; the results folder, with an earlier run in it, as it was."""
    monkeypatch.setattr(folders, "available_bytes", lambda: 4 * GIB)
    earlier = tmp_path / "earlier" / "config.json"
    earlier.parent.mkdir()
    earlier.write_text("{}")
    argv = ["--framework", "torch", "--data", "synthetic", "--batch-size", "100000"]
    assert main([*argv, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    cfg = config("train.batch_size=100000")
    most = memory.largest_batch(cfg, "torch", memory.Layout(), 4 * GIB)
    need = memory.estimate(cfg, "torch", memory.Layout())
    terms = "0.89 MiB x 100,000 images, data 0.0 GiB, torch 0.6 GiB, x1.2"
    assert need.terms("torch", gpu=False) == terms
    assert err == (
        f"error: train.batch_size must be <= {most:,}, got 100000 (a training step needs about "
        f"{need.total / GIB:,.1f} GiB per torch process ({need.terms('torch', gpu=False)}), "
        "this machine has 4.0 GiB available); --no-memory-check starts anyway"
    )
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("earlier"),
        Path("earlier/config.json"),
    ]
    assert earlier.read_text() == "{}"


def test_the_check_passes_the_largest_batch_and_shares_the_memory(monkeypatch):
    """On a CPU: the largest batch that fits passes, one more is refused; two CPU workers
    (--gpus 2: two PyTorch processes) each get half; --no-memory-check and --slurm skip it."""
    monkeypatch.setattr(folders, "available_bytes", lambda: 6 * GIB)
    monkeypatch.setattr(folders, "gpu_info", lambda: {"gpus": None})
    args = args_for("--framework", "torch")
    most = memory.largest_batch(config(), "torch", memory.Layout(), 6 * GIB)
    folders.check_step_memory(args, config(f"train.batch_size={most}"), None)
    with pytest.raises(ConfigError, match=f"must be <= {most:,}, got {most + 1} "):
        folders.check_step_memory(args, config(f"train.batch_size={most + 1}"), None)
    two = memory.Layout(processes=2, world=2)
    half = memory.largest_batch(config(), "torch", two, 3 * GIB)
    assert half < most / 2
    with pytest.raises(ConfigError, match=r"3\.0 GiB for each of 2 processes"):
        folders.check_step_memory(args, config(f"train.batch_size={half + 1}"), Topology(2))
    folders.check_step_memory(args, config(f"train.batch_size={half}"), Topology(2))
    huge = config("train.batch_size=1000000")
    folders.check_step_memory(args_for("--framework", "torch", "--no-memory-check"), huge, None)
    folders.check_step_memory(args_for("--framework", "torch", "--slurm"), huge, None)


def fake_gpus(total_gib: float, count: int = 1) -> dict:
    gpu = {"name": "Fake GPU", "memory_total_gib": total_gib, "compute_capability": [9, 0]}
    return {"gpus": [{**gpu, "index": i} for i in range(count)], "node_gpus": count}


def test_on_a_gpu_the_batch_is_checked_against_the_gpus_memory(monkeypatch):
    """A made-up 16 GiB GPU: the estimate per device against its memory, whatever the host
    has (1 byte here); the largest batch passes, one more is refused naming the GPU; two ranks
    sharing it (runtime.share_gpus) each get half; train.device=cpu checks the host instead."""
    monkeypatch.setattr(folders, "available_bytes", lambda: 1)
    monkeypatch.setattr(folders, "gpu_info", lambda: fake_gpus(16.0))
    args, gpu = args_for("--framework", "both"), memory.Layout(gpu=True)
    most = memory.largest_batch(config(), "torch", gpu, 16 * GIB)
    folders.check_step_memory(args, config(f"train.batch_size={most}"), None)
    with pytest.raises(ConfigError) as e:
        folders.check_step_memory(args, config(f"train.batch_size={most + 1}"), None)
    assert f"must be <= {most:,}, got {most + 1} (" in str(e.value)
    assert "per device" in str(e.value) and "the GPU has 16.0 GiB)" in str(e.value)
    shared = memory.Layout(processes=2, world=2, gpu=True)
    half = memory.largest_batch(config(), "torch", shared, 8 * GIB)
    sharing = ["runtime.share_gpus=true", f"train.batch_size={half + 1}"]
    with pytest.raises(ConfigError, match=r"8\.0 GiB for each of the 2 ranks on it"):
        folders.check_step_memory(args_for("--framework", "torch"), config(*sharing), Topology(2))
    with pytest.raises(ConfigError, match=r"this machine has 0\.0 GiB available"):
        folders.check_step_memory(args, config("train.device=cpu"), None)
    monkeypatch.setattr(folders, "gpu_info", lambda: {"gpus": [{"memory_total_gib": None}]})
    folders.check_step_memory(args, config("train.batch_size=1000000"), None)  # MIG: unknown
