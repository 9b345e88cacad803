"""The benchmark of the suite's trainers against hand-written loops (denoisebench.bench).

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

from denoisebench import bench
from denoisebench.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_handwritten_loop_trains_and_reports_sane_figures(framework: str) -> None:
    module = pytest.importorskip(f"denoisebench.handwritten_{framework}")
    cfg = load_config("smoke", {"train": {"lr": "5e-3"}})
    out = module.run(cfg, steps=24, warmup=6)
    assert out["framework"] == framework
    assert out["steps"] == 24 and out["batch_size"] == cfg.train.batch_size
    assert out["img_s"] > 0 and out["window_s"] > 0
    assert 0.0 <= out["data_wait_fraction"] <= 1.0
    assert len(out["losses"]) == 30 and all(math.isfinite(v) for v in out["losses"])
    # each batch is a different set of images: compare means over several steps
    assert np.mean(out["losses"][-5:]) < 0.8 * np.mean(out["losses"][:5])


def test_handwritten_loop_rejects_bad_step_counts() -> None:
    from denoisebench import handwritten_torch

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

    no_peak = bench.bench_frame(raw, flops_per_image=1e9, peak=None)
    assert no_peak["suite % peak"].isna().all() and no_peak["hand % peak"].isna().all()
    assert "n/a" in bench.format_table(no_peak)


def test_bench_command_runs_end_to_end(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    argv = [
        *("--framework", "torch", "--profile", "smoke", "--batch-size", "16"),
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


def test_bench_command_refuses_a_batch_larger_than_the_data() -> None:
    assert bench.main(["--profile", "smoke", "--batch-size", "4096", "--repeats", "1"]) == 2
