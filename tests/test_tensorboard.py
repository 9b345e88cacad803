"""TensorBoard event files: EPOCH records written by EpochBoard, read back with TensorBoard's own
EventAccumulator, value by value and step by step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from denoisebench.core.schema import EPOCH_FIELDS
from denoisebench.measure.tensorboard import TAGS, EpochBoard, scalars

GPU_FIELDS = ("gpu_power_mean_w", "gpu_energy_j", "gpu_mem_alloc_peak_gib", "gpu_mem_used_peak_gib")


def epoch_record(epoch: int, gpu: bool = True, **changes: Any) -> dict[str, Any]:
    """An EPOCH record as a trainer writes it; values differ by epoch so a step mix-up shows."""
    rec: dict[str, Any] = {
        "framework": "torch",
        "epoch": epoch,
        "steps": 12,
        "train_loss": 0.0321 / (epoch + 1),
        "test_loss": 0.0298 / (epoch + 1),
        "test_mae": 0.1234 - 0.01 * epoch,
        "test_psnr_db": 24.56 + 1.25 * epoch,
        "test_ssim": 0.701 + 0.02 * epoch,
        "noisy_psnr_db": 20.17,
        "noisy_ssim": 0.512,
        "train_time_s": 3.5,
        "eval_time_s": 0.4,
        "throughput_img_s": 1812.5 + epoch,
        "profiler_reason": None,
        "steady_reason": None if epoch else "every step of this epoch is warm-up",
        "throughput_steady_img_s": None if epoch == 0 else 2010.25 + epoch,
        "mfu": None,
        "mfu_reason": "CPU",
        "gpu_energy_j": 1234.5 + 10 * epoch,
        "gpu_energy_reason": None,
        "gpu_power_mean_w": 301.25 - epoch,
        "gpu_mem_alloc_peak_gib": 1.5,
        "gpu_mem_reserved_peak_gib": 2.0,
        "gpu_mem_used_peak_gib": 3.25 + epoch,
    }
    if not gpu:
        rec.update(dict.fromkeys(GPU_FIELDS), gpu_energy_reason="no NVIDIA GPU")
        del rec["gpu_mem_used_peak_gib"]  # a field a record lacks is left out like a None
    rec.update(changes)
    return rec


def f32(x: float) -> float:
    """What a TensorBoard scalar (simple_value, a float32) holds for x."""
    return float(np.float32(x))


def test_values_and_steps_read_back(tmp_path: Path, read_board) -> None:
    records = [epoch_record(0), epoch_record(1), epoch_record(2, gpu=False)]
    folder = tmp_path / "run" / "torch" / "tensorboard"
    with EpochBoard(folder) as board:
        for rec in records:
            board.write(rec)
    points, descriptions = read_board(folder)

    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for field, tag in TAGS.items():
            if rec.get(field) is not None:
                expected.setdefault(tag, []).append((rec["epoch"] + 1, f32(rec[field])))
    assert points == expected
    # Spot checks that do not go through TAGS: a tag per field, None fields skipped.
    assert points["quality/psnr_db"] == [(1, f32(24.56)), (2, f32(25.81)), (3, f32(27.06))]
    assert points["speed/steady_img_s"] == [(2, f32(2011.25)), (3, f32(2012.25))]
    assert [s for s, _ in points["gpu/power_w"]] == [1, 2]  # the CPU epoch wrote no GPU point
    assert "gpu/mem_used_peak_gib" in points and len(points["gpu/mem_used_peak_gib"]) == 2
    assert descriptions["quality/psnr_db"] == EPOCH_FIELDS["test_psnr_db"]


def test_cpu_run_writes_no_gpu_tags(tmp_path: Path, read_board) -> None:
    with EpochBoard(tmp_path) as board:
        board.write(epoch_record(0, gpu=False))
    points, _ = read_board(tmp_path)
    assert not [t for t in points if t.startswith("gpu/")]
    assert "speed/steady_img_s" not in points  # None in a warm-up-only epoch
    assert set(points) == set(scalars(epoch_record(0, gpu=False)))
    assert len(points) == 6


def test_each_write_is_on_disk_before_close(tmp_path: Path, read_board) -> None:
    board = EpochBoard(tmp_path)
    board.write(epoch_record(0))
    points, _ = read_board(tmp_path)  # a live TensorBoard, while the job runs
    assert points["loss/train"] == [(1, f32(0.0321))]
    board.close()
    board.close()


def test_resumed_run_overrides_from_its_first_step(tmp_path: Path, read_board) -> None:
    """An attempt wrote epochs 0-2, was interrupted, and resumed from the checkpoint of epoch 1:
    the resumed attempt rewrites epoch 2 (step 3) into a second file, and its value wins."""
    with EpochBoard(tmp_path) as first:
        for epoch in range(3):
            first.write(epoch_record(epoch))
    with EpochBoard(tmp_path) as resumed:
        for epoch in (2, 3):
            resumed.write(epoch_record(epoch, train_loss=0.5 + epoch))
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    points, _ = read_board(tmp_path)
    assert points["loss/train"] == [
        (1, f32(0.0321)),
        (2, f32(0.0321 / 2)),
        (3, f32(2.5)),
        (4, f32(3.5)),
    ]
    assert [s for s, _ in points["quality/psnr_db"]] == [1, 2, 3, 4]


def test_tags_name_epoch_fields_once() -> None:
    assert set(TAGS) <= set(EPOCH_FIELDS)
    assert len(set(TAGS.values())) == len(TAGS)


def test_disabled_board_writes_nothing(tmp_path: Path) -> None:
    board = EpochBoard(tmp_path / "tensorboard", enabled=False)
    board.write(epoch_record(0))
    board.close()
    assert not (tmp_path / "tensorboard").exists()


def test_missing_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="`tensorboard` package"):
        EpochBoard(tmp_path)
    EpochBoard(tmp_path, enabled=False).write(epoch_record(0))  # off: no package needed


def test_imports_no_framework(tmp_path: Path) -> None:
    """A PyTorch run must not import TensorFlow (nor the reverse) by writing its board."""
    code = (
        "import json, sys\n"
        "from denoisebench.measure.tensorboard import EpochBoard\n"
        "with EpochBoard(sys.argv[1]) as b:\n"
        "    b.write(json.loads(sys.argv[2]))\n"
        "print(json.dumps(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(epoch_record(0))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
