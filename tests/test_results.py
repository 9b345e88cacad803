"""Results files are written atomically and records survive a resume's truncation."""

from __future__ import annotations

import os

import pytest

from denoisebench.core import records as results
from denoisebench.core.records import RunRecorder, atomic_write_json, read_json, read_jsonl


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "completed", "epochs": 3})

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"status": "running"})
    assert read_json(path) == {"status": "completed", "epochs": 3}
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_recorder_appends_epochs_and_truncates_for_resume(tmp_path):
    rec = RunRecorder(tmp_path, "torch")
    for epoch in range(3):
        rec.epoch({"epoch": epoch}, [{"epoch": epoch, "step": 2 * epoch + i} for i in range(2)])
    assert [r["step"] for r in read_jsonl(tmp_path / "torch" / "steps.jsonl")] == list(range(6))

    rec.truncate_after(2)
    assert [r["epoch"] for r in rec.epochs()] == [0, 1]
    assert [r["step"] for r in read_jsonl(tmp_path / "torch" / "steps.jsonl")] == [0, 1, 2, 3]


def test_summary_updates_merge_fields(tmp_path):
    rec = RunRecorder(tmp_path, "tf")
    rec.summary(status="running", epochs=5)
    rec.summary(epochs_completed=2)
    summary = read_json(tmp_path / "tf" / "summary.json")
    assert summary["status"] == "running" and summary["epochs"] == 5
    assert summary["epochs_completed"] == 2 and summary["framework"] == "tf"


def test_typed_records_match_the_written_schema():
    """StepRow is STEP_FIELDS, typed, in the same order; a World's summary fields are the
    summary's world fields; an EpochResult survives the JSON trip TensorFlow's gather makes."""
    from dataclasses import asdict, fields

    from denoisebench.core.config import load_config
    from denoisebench.core.schema import STEP_FIELDS, SUMMARY_FIELDS, StepRow
    from denoisebench.trainer.session import EpochResult, World

    assert [f.name for f in fields(StepRow)] == list(STEP_FIELDS)
    cfg = load_config("smoke")
    world = World.of(
        cfg,
        rank=1,
        processes=2,
        replicas=4,
        strategy="multi_worker_mirrored",
        device="2 workers, 4 replicas",
        step_clock="host",
        runtime={},
    )
    assert world.local_replicas == 2 and world.global_batch == 4 * cfg.train.batch_size
    assert not world.is_main
    assert set(world.summary_fields()) <= set(SUMMARY_FIELDS)
    row = StepRow("tf", 0, 3, 1, 2, 8, 0.25, 0.01, False, 0.001)
    part = EpochResult([row], 2.0, [{"gpu": 0}], [{"rss_gib": 1.0}])
    assert EpochResult.from_json(part.to_json()) == part
    merged = EpochResult.merge([part, EpochResult([row], 3.0)])
    assert merged.train_time_s == 3.0 and len(merged.rows) == 2
    assert asdict(merged.rows[0])["step"] == 3


def test_framework_records_reader(tmp_path):
    """The one reader of a framework's records: none without a summary; `final` is the
    summary's, else the last checkpointed epoch's (not an epoch cut short), else {}."""
    from denoisebench.core.records import FrameworkRecords, read_summary

    assert FrameworkRecords.read(tmp_path, "torch") is None
    assert read_summary(tmp_path, "torch") is None
    rec = RunRecorder(tmp_path, "torch")
    rec.summary(status="running")
    assert FrameworkRecords.read(tmp_path, "torch").final() == {}
    for epoch in range(3):
        rec.epoch({"epoch": epoch, "test_psnr_db": 20.0 + epoch}, [])
    rec.summary(status="interrupted", epochs_completed=2)  # epoch 2's records, no checkpoint
    records = FrameworkRecords.read(tmp_path, "torch")
    assert records.final()["epoch"] == 1 and records.environment() == {}
    assert [e["epoch"] for e in records.epochs()] == [0, 1, 2]
    rec.summary(status="completed", final={"epoch": 2})
    assert FrameworkRecords.read(tmp_path, "torch").final() == {"epoch": 2}
    (tmp_path / "torch" / "summary.json").write_text("{half")
    assert read_summary(tmp_path, "torch") is None
