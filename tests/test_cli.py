"""`python -m launch` end to end on the built-in images, and its errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import launch

from denoisebench.core.config import load_config, load_resolved
from denoisebench.core.records import read_json, read_jsonl
from denoisebench.core.schema import EPOCH_FIELDS, STEP_FIELDS, SUMMARY_FIELDS
from launch.commands import build_train_cmd


def f32(x: float) -> float:
    """What a TensorBoard scalar (a float32) holds for x."""
    return float(np.float32(x))


def test_cli_end_to_end_writes_a_valid_results_folder(tmp_path, read_board):
    proc = launch("--profile", "smoke", "--results", str(tmp_path), "--run-id", "e2e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "e2e"

    assert load_resolved(run / "config.json") == load_config("smoke")
    data = read_json(run / "data.json")
    assert data["source"] == "builtin" and "NOT EuroSAT" in data["description"]
    split = read_json(run / "split.json")
    assert len(split["train"]) == data["train"] and len(split["test"]) == data["test"]
    assert data["train"] + data["test"] == data["images"] == 160
    assert not set(split["train"]) & set(split["test"])

    for framework in ("torch", "tf"):
        folder = run / framework
        env = read_json(folder / "environment.json")
        assert env["packages"]["numpy"] and env["git"] and env["cpu"]
        assert ("torch" in env["packages"]) == (framework == "torch")
        steps = read_jsonl(folder / "steps.jsonl")
        epochs = read_jsonl(folder / "epochs.jsonl")
        assert all(set(s) == set(STEP_FIELDS) for s in steps)
        assert all(set(e) == set(EPOCH_FIELDS) for e in epochs)
        assert [e["epoch"] for e in epochs] == [0, 1]
        # full global batches only: 148 // 16 = 9 steps an epoch
        assert [s["step"] for s in steps] == list(range(18))
        assert all(s["batch_size"] == 16 and s["rank"] == 0 for s in steps)
        summary = read_json(folder / "summary.json")
        assert set(SUMMARY_FIELDS) - {"error", "failed_process"} <= set(summary)
        assert summary["status"] == "completed" and summary["final"] == epochs[-1]
        assert (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
        # TensorBoard: each epoch's figures, one tag scheme for both frameworks
        points, _ = read_board(folder / "tensorboard")
        for field, tag in {
            "train_loss": "loss/train",
            "test_loss": "loss/test",
            "test_psnr_db": "quality/psnr_db",
            "test_ssim": "quality/ssim",
            "throughput_img_s": "speed/img_s",
        }.items():
            assert points[tag] == [(e["epoch"] + 1, f32(e[field])) for e in epochs], tag
        assert not any(tag.startswith("gpu/") for tag in points)  # no GPU here: nothing to show
        # the printed table carries this framework's figures
        row = next(line for line in proc.stdout.splitlines() if line.strip().startswith(framework))
        assert f"{summary['final']['test_psnr_db']:.2f}" in row
        assert f"{summary['final']['noisy_psnr_db']:.2f}" in row
    assert "epoch 2/2" in proc.stdout

    # resuming a finished run trains nothing and prints the same table
    before = (run / "torch" / "steps.jsonl").read_text()
    again = launch("--resume", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[torch] already completed" in again.stdout and "[tf] already completed" in again.stdout
    assert (run / "torch" / "steps.jsonl").read_text() == before


def test_bad_data_path_fails_fast_with_its_name(tmp_path):
    """A path that does not exist: refused by the launcher before the run folder is made. A file
    that exists but is no EuroSAT zip: the trainer fails on it, and the record says why."""
    missing = tmp_path / "nowhere" / "EuroSAT.zip"
    proc = launch("--data", str(missing), "--results", str(tmp_path), "--run-id", "bad")
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()  # the run id is not used up
    junk = tmp_path / "EuroSAT.zip"
    junk.write_bytes(b"not a zip")
    proc = launch("--data", str(junk), "--results", str(tmp_path), "--run-id", "bad")
    assert proc.returncode == 1
    assert str(junk) in proc.stderr and "Traceback" not in proc.stderr
    # torch failed on the input; tf was not started; what was written is kept and readable
    summary = read_json(tmp_path / "bad" / "torch" / "summary.json")
    assert summary["status"] == "failed" and "not a zip file" in summary["error"]
    assert not (tmp_path / "bad" / "tf").exists()
    assert load_resolved(tmp_path / "bad" / "config.json").data.path == str(junk)


def test_bad_override_is_refused_before_anything_is_written(tmp_path):
    proc = launch("--set", "train.epochs=many", "--results", str(tmp_path))
    assert proc.returncode == 2
    assert "train.epochs" in proc.stderr and "'many'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_run_folder_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("precious")
    proc = launch("--profile", "smoke", "--results", str(tmp_path), "--run-id", "taken")
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (tmp_path / "taken" / "config.json").read_text() == "precious"


def test_help_explains_the_options():
    proc = launch("--help")
    assert proc.returncode == 0
    for text in ("--framework", "--profile", "--data", "--resume", "--set", "EuroSAT"):
        assert text in proc.stdout


def test_bench_subcommand_runs_the_benchmark():
    proc = launch("bench", "--help")
    assert proc.returncode == 0
    for text in ("hand-written", "--steps", "--warmup", "--repeats", "--framework"):
        assert text in proc.stdout


def test_build_train_cmd_is_pure_and_per_framework(tmp_path):
    argv, env = build_train_cmd("torch", tmp_path, base_env={"PATH": "/bin"})
    assert argv == [sys.executable, "-m", "denoisebench.torch_backend.train", str(tmp_path)]
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    argv, env = build_train_cmd("tf", tmp_path, resume=True, base_env={})
    assert argv[-3:] == ["denoisebench.tf_backend.train", str(tmp_path), "--resume"]
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    with pytest.raises(ValueError, match="jax"):
        build_train_cmd("jax", tmp_path)


def test_repeats_interleave_frameworks_and_report_the_spread(tmp_path):
    proc = launch(
        "--profile",
        "smoke",
        "--framework",
        "torch",
        "--epochs",
        "1",
        "--repeats",
        "2",
        "--results",
        str(tmp_path),
        "--run-id",
        "rep",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "rep"
    steady = []
    for k in range(2):
        summary = read_json(run / f"repeat-{k}" / "torch" / "summary.json")
        assert summary["status"] == "completed"
        assert load_resolved(run / f"repeat-{k}" / "config.json") == load_config(
            "smoke", {"train": {"epochs": "1"}}
        )
        steady.append(summary["throughput_steady_img_s"])
    assert "torch: 2/2 repeats completed" in proc.stdout
    low, high = sorted(steady)
    line = next(x for x in proc.stdout.splitlines() if "steady img/s" in x)
    assert f"[{low:.0f}, {high:.0f}]" in line
    assert "GPU J/img: missing" in proc.stdout


def test_a_training_command_ends_with_its_report_unless_told_not_to(tmp_path):
    """Not only the bare main job: any training command writes <run>/report/ and prints it;
    --no-report skips it; DENOISEBENCH_REPORT=0 (set for the test suite) makes that the
    default, --report overrides it."""
    one = [
        "--profile",
        "smoke",
        "--framework",
        "torch",
        "--epochs",
        "1",
        "--results",
        str(tmp_path),
    ]
    proc = launch(*one, "--run-id", "with", env={"DENOISEBENCH_REPORT": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = tmp_path / "with" / "report" / "report.html"
    assert f"report: {report}" in proc.stdout and report.is_file()
    assert "PyTorch" in report.read_text()
    proc = launch(*one, "--run-id", "without", "--no-report", env={"DENOISEBENCH_REPORT": "1"})
    assert proc.returncode == 0 and "report:" not in proc.stdout
    assert not (tmp_path / "without" / "report").exists()
    proc = launch(*one, "--run-id", "asked", "--report")  # DENOISEBENCH_REPORT=0 here
    assert proc.returncode == 0 and (tmp_path / "asked" / "report" / "report.html").is_file()
