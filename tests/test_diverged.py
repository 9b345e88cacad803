"""A run whose loss stops being finite ends as 'diverged': the config refuses non-finite numbers
up front; a run that diverges all the same (lr 1e30: NaN from the second step) stops after that
epoch on every process, says where in one line, exits with 1, and leaves strict JSON records
that the end-of-run table and the report show as diverged."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import launch

from denoisebench.core.config import ConfigError, config_from_dict, load_config, parse_overrides
from denoisebench.core.records import NON_FINITE, RunRecorder, json_record, read_json
from denoisebench.core.schema import StepRow
from denoisebench.report.runs import time_to_target
from denoisebench.trainer.session import first_non_finite

DIVERGING = ("--profile", "smoke", "--lr", "1e30")
"""Adam's first step of 1e30 overflows float32: the second step's loss is NaN, in both
frameworks, on any CPU."""


def strict_json(text: str) -> object:
    """json.loads that refuses NaN, Infinity and -Infinity, which are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def assert_strict_json_everywhere(run: Path) -> int:
    """Every .json and .jsonl file of the run folder parses as strict JSON; returns how many."""
    files = [*run.rglob("*.json"), *run.rglob("*.jsonl")]
    for path in files:
        text = path.read_text()
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                strict_json(line)
        else:
            strict_json(text)
    return len(files)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("train.lr=inf", "train.lr must be a finite number > 0 and <= 3.40282e+38, got inf ("),
        ("train.lr=nan", "train.lr must be a finite number > 0 and <= 3.40282e+38, got nan ("),
        ("noise.sigma=inf", "noise.sigma must be a finite number >= 0 and <= 10, got inf ("),
        ("train.eps=inf", "train.eps must be a finite number > 0 and <= 1, got inf ("),
        ("train.eps=-inf", "train.eps must be a finite number > 0 and <= 1, got -inf ("),
        ("noise.amount=nan", "noise.amount must be a finite number >= 0 and <= 1, got nan ("),
        ("profiler.min_window_s=inf", "profiler.min_window_s must be a finite number >= 0 and <= 3,600, got inf ("),
        # a finite value out of range: the side it crosses, the value given, and why
        ("train.lr=0", "train.lr must be > 0, got 0.0 (a step size"),
        ("data.n_test=0", "data.n_test must be >= 1, got 0 (an image count"),
    ],
)  # fmt: skip
def test_non_finite_and_out_of_range_numbers_are_refused_by_key_and_value(pair, message):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", parse_overrides([pair]))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_non_finite_numbers_in_a_profile_are_refused():
    # TOML reads `lr = inf` and `sigma = nan` as floats: the profile file is checked as well
    with pytest.raises(
        ConfigError,
        match=r"^train\.lr must be a finite number > 0 and <= 3\.40282e\+38, got inf \(",
    ):
        config_from_dict({"train": {"lr": math.inf}})
    with pytest.raises(
        ConfigError, match=r"^noise\.sigma must be a finite number >= 0 and <= 10, got nan"
    ):
        config_from_dict({"noise": {"sigma": math.nan}})


def test_the_launcher_refuses_inf_before_anything_runs(tmp_path):
    proc = launch(*DIVERGING[:2], "--lr", "inf", "--results", str(tmp_path), "--run-id", "r")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "error: train.lr must be a finite number > 0 and <= 3.40282e+38, got inf (" in proc.stderr
    )
    assert not (tmp_path / "r").exists()


def test_records_are_strict_json_with_the_reason_for_each_null(tmp_path):
    assert json_record({"a": 1.5, "b": math.nan, "c": [math.inf, 2]}) == (
        '{"a": 1.5, "b": null, "c": [null, 2], "non_finite": {"b": "nan"}}'
    )
    rec = RunRecorder(tmp_path, "torch")
    row = StepRow("torch", 0, 3, 1, 1, 8, math.nan, 0.1, False, 0.0)
    rec.epoch({"epoch": 0, "train_loss": -math.inf}, [asdict(row)])
    rec.summary(status="completed", final={"epoch": 0, "test_psnr_db": math.nan})
    step = strict_json((tmp_path / "torch" / "steps.jsonl").read_text())
    assert step["loss"] is None and step[NON_FINITE] == {"loss": "nan"}
    epoch = strict_json((tmp_path / "torch" / "epochs.jsonl").read_text())
    assert epoch["train_loss"] is None and epoch[NON_FINITE] == {"train_loss": "-inf"}
    summary = strict_json((tmp_path / "torch" / "summary.json").read_text())
    assert summary["final"][NON_FINITE] == {"test_psnr_db": "nan"}
    # rewritten on resume (truncate_after): still strict, the reason kept
    rec.truncate_after(1)
    assert strict_json((tmp_path / "torch" / "steps.jsonl").read_text())[NON_FINITE] == {
        "loss": "nan"
    }


def test_the_first_non_finite_loss_is_found_by_step_then_rank():
    def row(step: int, rank: int, loss: float) -> StepRow:
        return StepRow("torch", 0, step, rank, 1, 8, loss, 0.1, False, 0.0)

    assert first_non_finite([row(0, 0, 0.3), row(0, 1, 0.2)]) is None
    rows = [row(2, 0, math.nan), row(1, 1, math.inf), row(1, 0, 0.2), row(2, 1, math.nan)]
    assert (first_non_finite(rows).step, first_non_finite(rows).rank) == (1, 1)


def test_a_resumed_run_moves_the_divergence_into_history(tmp_path):
    rec = RunRecorder(tmp_path, "tf")
    where = {"epoch": 1, "step": 12, "rank": 0, "loss": "nan"}
    rec.summary(status="diverged", error="loss is nan", diverged_at=where, epochs_completed=1)
    rec.summary(status="running")
    summary = read_json(tmp_path / "tf" / "summary.json")
    assert summary["diverged_at"] is None and summary["error"] is None
    assert summary["history"][0]["status"] == "diverged"
    assert summary["history"][0]["diverged_at"] == where


def test_an_old_record_with_nan_psnr_never_reads_best_nan():
    epochs = [{"epoch": 0, "train_time_s": 1.0, "test_psnr_db": 20.0},
              {"epoch": 1, "train_time_s": 1.0, "test_psnr_db": math.nan}]  # fmt: skip
    reason = time_to_target(epochs, 30.0)["target_reason"]
    assert "nan" not in reason and "(best 20.00 dB)" in reason


def assert_diverged(proc, run: Path, framework: str, ranks: int = 1) -> dict:
    """The launcher exited with 1 after one line naming the epoch and step; the summary says
    diverged and where; the epoch's STEP rows are there (the loss null, with its reason), no
    later epoch's, no EPOCH record; every JSON file is strict. Returns the summary."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = [line for line in out.splitlines() if line.startswith(f"[{framework}] diverged:")]
    assert len(lines) == 1, out
    assert re.fullmatch(
        rf"\[{framework}\] diverged: loss is nan at epoch 1, step (\d+) of 9"
        + (r" on (rank|worker) \d" if ranks > 1 else "")
        + r" \(steps\.jsonl: epoch 0, step (\d+)\); stopping",
        lines[0],
    ), lines[0]
    fw_dir = run / framework
    summary = read_json(fw_dir / "summary.json")
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 0
    at = summary["diverged_at"]
    assert at["epoch"] == 0 and at["loss"] == "nan" and at["step"] >= 1
    assert f"step {at['step'] + 1} of 9" in lines[0] and f"step {at['step']})" in lines[0]
    assert summary["error"] in lines[0]
    steps = [strict_json(line) for line in (fw_dir / "steps.jsonl").read_text().splitlines()]
    assert {s["epoch"] for s in steps} == {0} and len(steps) == 9 * ranks  # stopped after it
    first = next(s for s in steps if s["step"] == at["step"] and s["rank"] == at["rank"])
    assert first["loss"] is None and first[NON_FINITE] == {"loss": "nan"}
    assert all(math.isfinite(s["loss"]) for s in steps if s["step"] < at["step"])
    assert (fw_dir / "epochs.jsonl").read_text() == ""
    assert not (fw_dir / "weights.npz").exists()
    assert not (fw_dir / "failures").exists()  # not a process failure
    assert assert_strict_json_everywhere(run) >= 6
    # the end-of-run table: the status, and where
    assert re.search(rf"^\s*{framework}\s+diverged\s+0\s", proc.stdout, re.M), proc.stdout
    assert f"  {framework}: diverged: {summary['error']}" in proc.stdout
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_a_run_that_diverges_ends_as_diverged_and_the_report_says_so(tmp_path, framework):
    run = tmp_path / "run"
    proc = launch(*DIVERGING, "--framework", framework, "--epochs", "2",
                  "--results", str(tmp_path), "--run-id", "run")  # fmt: skip
    summary = assert_diverged(proc, run, framework)

    report = launch("report", str(run), "--out", str(tmp_path / "report"), "--baseline-images", "0")
    assert report.returncode == 0, report.stdout + report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    # the runs table: the status, and where in the error column
    runs_row = next(line for line in text.splitlines() if "| diverged | 0 |" in line)
    assert f"| diverged: {summary['error']} |" in runs_row
    assert "nan dB" not in text and "| nan" not in text
    csv = (tmp_path / "report" / "runs.csv").read_text()
    assert "diverged" in csv


@pytest.mark.slow
def test_ddp_ranks_that_diverge_stop_together(tmp_path):
    """2 DDP ranks on the CPU: both see the gathered losses and stop after the same epoch; the
    job ends (no rank left waiting in a collective) with exit code 1."""
    proc = launch(*DIVERGING, "--framework", "torch", "--epochs", "2", "--gpus", "2",
                  "--batch-size", "8", "--results", str(tmp_path), "--run-id", "ddp",
                  timeout=300)  # fmt: skip
    summary = assert_diverged(proc, tmp_path / "ddp", "torch", ranks=2)
    assert summary["processes"] == 2 and summary["strategy"] == "ddp"
    # the torchrun wrapper ends quietly: no failure report repeating the one line
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_slurm_job_whose_run_diverged_counts_as_failed(tmp_path, capsys):
    """--slurm --wait: task 0 returns the diverged summary (the job itself succeeded); the
    launcher counts the framework as failed (exit 1) without overwriting the summary."""
    from launch.slurm import wait_for_jobs

    class Job:
        job_id, state = "7", "COMPLETED"

        def __init__(self, summary: dict) -> None:
            self.summary = summary

        def done(self) -> bool:
            return True

        def results(self) -> list:
            return [self.summary, None]

    jobs = [
        ("torch", tmp_path, Job({"status": "diverged", "error": "loss is nan at epoch 1, step 2"})),
        ("tf", tmp_path, Job({"status": "completed"})),
    ]
    assert wait_for_jobs(jobs, timeout_s=5) == ["torch"]
    out = capsys.readouterr()
    assert "[torch] job 7 diverged: loss is nan at epoch 1, step 2" in out.err
    assert "[tf] job 7 finished: COMPLETED" in out.out
    assert list(tmp_path.iterdir()) == []  # nothing marked: the run recorded its own end
