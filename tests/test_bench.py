"""The benchmark of the suite's trainers against hand-written loops (denoisebench.bench.suite).

The hand-written loops train for real on the smoke profile (the loss must go down); the table
and the suite's figures are checked with known numbers; the command runs end to end for one
framework with a few steps.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from denoisebench.bench import cli
from denoisebench.bench import suite as bench
from denoisebench.core.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_handwritten_loop_trains_and_reports_sane_figures(framework: str) -> None:
    module = pytest.importorskip(f"denoisebench.bench.handwritten_{framework}")
    cfg = load_config("smoke", {"train": {"lr": "5e-3"}})
    out = module.run(cfg, steps=24, warmup=6)
    assert out["framework"] == framework
    assert out["steps"] == 24 and out["batch_size"] == cfg.train.batch_size
    assert out["img_s"] > 0 and out["window_s"] > 0
    assert 0.0 <= out["data_wait_fraction"] <= 1.0
    assert len(out["losses"]) == 30 and all(math.isfinite(v) for v in out["losses"])
    # each batch is a different set of images: compare means over several steps
    assert np.mean(out["losses"][-5:]) < 0.8 * np.mean(out["losses"][:5])


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_tight_loop_trains_on_the_images_it_is_given(tmp_path: Path, framework: str) -> None:
    from denoisebench.data.images import load_images

    images = load_images(load_config("smoke").data, 64, seed=0).images[:96]
    np.save(tmp_path / "train.npy", images)
    argv = [
        sys.executable, "-m", f"denoisebench.bench.tight_{framework}", "--images",
        str(tmp_path / "train.npy"), "--batch-size", "16", "--steps", "54", "--warmup", "6",
        "--lr", "5e-3", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["framework"] == framework and out["steps"] == 54 and out["img_s"] > 0
    assert len(out["losses"]) == 60  # Keras' initialisation starts slower: 60 steps for both
    assert np.mean(out["losses"][-10:]) < 0.8 * np.mean(out["losses"][:10])
    too_big = subprocess.run(
        [*argv[:5], "--batch-size", "4096"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert too_big.returncode == 2 and "larger than the 96 images" in too_big.stderr


def test_tight_loop_applies_to_the_papers_model_only() -> None:
    assert bench.tight_reason(load_config("default")) is None
    reason = bench.tight_reason(load_config("smoke", {"train": {"loss": "ssim"}}))
    assert reason is not None and "train.loss=ssim" in reason
    assert "train.deterministic=true" in reason  # the smoke profile's deterministic kernels


def test_tight_command_passes_the_runs_settings(tmp_path: Path) -> None:
    cfg = load_config("default", {"runtime": {"precision": "bfloat16", "tf32": "true"}})
    args = bench.argparse.Namespace(batch_size=32, steps=7, warmup=3)
    cmd = bench.tight_cmd("torch", cfg, tmp_path / "x.npy", args)
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--batch-size"] == "32" and flags["--precision"] == "bfloat16"
    assert flags["--eps"] == str(cfg.train.eps) and flags["--widths"] == "32,64,128"
    assert "--tf32" in cmd and "--cudnn-benchmark" in cmd
    tf_cmd = bench.tight_cmd("tf", cfg, tmp_path / "x.npy", args)
    assert "denoisebench.bench.tight_tf" in tf_cmd and "--xla" not in tf_cmd


def test_handwritten_loop_rejects_bad_step_counts() -> None:
    from denoisebench.bench import handwritten_torch

    with pytest.raises(ValueError, match="steps=0"):
        handwritten_torch.run(load_config("smoke"), steps=0, warmup=1)


def test_suite_epochs_cover_warmup_and_steps() -> None:
    # 888 images / 64 = 13 steps per epoch: 1 warm-up epoch (>= 10 steps), 5 for >= 60 steps
    assert bench.suite_epochs(888, 64, steps=60, warmup=10) == (6, 1)
    assert bench.suite_epochs(888, 64, steps=13, warmup=0) == (1, 0)
    assert bench.suite_epochs(888, 64, steps=14, warmup=14) == (4, 2)
    with pytest.raises(ConfigError, match="larger than the training split"):
        bench.suite_epochs(10, 64, steps=5, warmup=1)


def test_suite_figures_use_wall_time_of_steady_epochs() -> None:
    epochs = [
        {"epoch": 0, "train_time_s": 100.0},  # warm-up: left out
        {"epoch": 1, "train_time_s": 2.0},
        {"epoch": 2, "train_time_s": 3.0},
    ]
    steps = [
        {"epoch": e, "step": 2 * e + i, "batch_size": 10, "step_time_s": 1.0, "data_wait_s": 0.1}
        for e in range(3)
        for i in range(2)
    ]
    out = bench.suite_figures(epochs, steps, first_steady_epoch=1)
    assert out["steps"] == 4
    assert out["img_s"] == pytest.approx(40 / 5.0)  # 4 steps x 10 images over 5 s of wall time
    assert out["reported_img_s"] == pytest.approx(40 / 4.0)  # the per-step clocks sum to 4 s
    assert out["unclocked_fraction"] == pytest.approx(0.2)
    assert out["data_wait_fraction"] == pytest.approx(0.4 / 5.0)
    with pytest.raises(ValueError, match="no epoch from 3"):
        bench.suite_figures(epochs, steps, first_steady_epoch=3)


def test_bench_frame_medians_ratio_spread_and_flops() -> None:
    raw = {
        "torch": {
            "suite": [
                {"img_s": 90.0, "data_wait_fraction": 0.01},
                {"img_s": 110.0, "data_wait_fraction": 0.03},
                {"img_s": 100.0, "data_wait_fraction": 0.02},
            ],
            "hand": [
                {"img_s": 80.0, "data_wait_fraction": 0.2},
                {"img_s": 70.0, "data_wait_fraction": 0.1},
                {"img_s": 75.0, "data_wait_fraction": 0.3},
            ],
            "tight": [
                {"img_s": 120.0, "data_wait_fraction": 0.0},
                {"img_s": 125.0, "data_wait_fraction": 0.0},
                {"img_s": 130.0, "data_wait_fraction": 0.0},
            ],
        },
        "tf": {
            "suite": [{"img_s": 50.0, "data_wait_fraction": 0.5}],
            "hand": [{"img_s": 200.0, "data_wait_fraction": 0.0}],
        },
    }
    frame = bench.bench_frame(raw, flops_per_image=1e9, peak=1e12).set_index("framework")
    torch_row, tf_row = frame.loc["torch"], frame.loc["tf"]
    assert torch_row["repeats"] == 3
    assert torch_row["suite img/s"] == 100.0 and torch_row["hand img/s"] == 75.0
    assert torch_row["suite/hand"] == pytest.approx(100.0 / 75.0)
    assert torch_row["suite min-max"] == "90-110" and torch_row["hand min-max"] == "70-80"
    assert torch_row["suite GFLOP/s"] == pytest.approx(100.0)
    assert torch_row["hand % peak"] == pytest.approx(7.5)
    assert torch_row["suite data wait"] == pytest.approx(0.02)
    assert torch_row["hand data wait"] == pytest.approx(0.2)
    assert tf_row["suite/hand"] == pytest.approx(0.25)
    assert torch_row["suite/tight"] == pytest.approx(100.0 / 125.0)
    assert torch_row["tight min-max"] == "120-130"
    assert math.isnan(tf_row["suite/tight"]) and tf_row["tight min-max"] == "n/a"

    no_peak = bench.bench_frame(raw, flops_per_image=1e9, peak=None)
    assert no_peak["suite % peak"].isna().all() and no_peak["hand % peak"].isna().all()
    assert "n/a" in bench.format_table(no_peak)


def test_bench_command_runs_end_to_end(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    argv = [
        *("--framework", "torch", "--profile", "default", "--set", "data.limit=200"),
        *("--batch-size", "16"),
        *("--steps", "5", "--warmup", "2", "--repeats", "1", "--json", str(out_json)),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "denoisebench.bench", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "suite/hand" in proc.stdout and "machine:" in proc.stdout
    result = json.loads(out_json.read_text())
    (row,) = result["table"]
    assert row["framework"] == "torch" and row["repeats"] == 1
    assert row["suite img/s"] > 0 and row["hand img/s"] > 0
    assert row["suite/hand"] == pytest.approx(row["suite img/s"] / row["hand img/s"])
    (suite,) = result["raw"]["torch"]["suite"]
    assert suite["steps"] >= 5  # whole epochs after the warm-up epoch: at least --steps
    (hand,) = result["raw"]["torch"]["hand"]
    assert hand["steps"] == 5 and len(hand["losses"]) == 7
    (tight,) = result["raw"]["torch"]["tight"]
    assert tight["steps"] == 5 and len(tight["losses"]) == 7
    assert row["suite/tight"] == pytest.approx(row["suite img/s"] / row["tight img/s"])


def test_bench_command_refuses_a_batch_larger_than_the_data() -> None:
    assert cli.main(["--profile", "smoke", "--batch-size", "4096", "--repeats", "1"]) == 2


@pytest.mark.parametrize("where", ["missing/x.json", "."])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_benchmark(
    tmp_path, capsys, where
):
    """`bench --json /nonexistent/dir/x.json` ran the whole benchmark, then lost its figures to
    a FileNotFoundError: the path is checked first, and refused in one line (exit 2)."""
    path = tmp_path / where
    assert cli.main(["--json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --json {path}: ") and len(err.splitlines()) == 1
