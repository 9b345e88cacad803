"""Issue 32: one lock per framework (both frameworks of a run train at once, two writers of one
framework's records never), the bounded wait of a requeued job for a lock that a dead node's
lease still holds, and a requeue that resumes instead of starting over."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from denoisebench.cluster import slurm_job
from denoisebench.cluster.slurm_job import TrainTask
from denoisebench.core import runlock
from denoisebench.core.config import ConfigError, load_config, parse_overrides
from denoisebench.core.records import RunRecorder, atomic_write_json, read_json
from denoisebench.core.runlock import RunLocked, read_lock_holder, take_run_lock
from launch.folders import prepare_run_folder, resolve
from launch.options import build_parser

SLURM = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "0"}


def trained(monkeypatch) -> list[TrainTask]:
    """TrainTask._train replaced by a recorder of the task it was called on (no training)."""
    calls: list[TrainTask] = []

    def fake_train(task: TrainTask) -> dict:
        calls.append(task)
        return {"status": "completed"}

    monkeypatch.setattr(TrainTask, "_train", fake_train)
    return calls


def slurm_env(monkeypatch, **env: str) -> None:
    for key in ("SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**SLURM, **env}.items():
        monkeypatch.setenv(key, value)


# --- item 1: one lock per framework -------------------------------------------------------------


def test_the_two_frameworks_of_one_run_train_at_once_one_writer_each(tmp_path, monkeypatch):
    """`--slurm` submits a torch job and a tf job into one run folder: the tf job's task 0 is
    not refused while the torch job trains; a second torch writer is, by name."""
    calls = trained(monkeypatch)
    slurm_env(monkeypatch)
    with take_run_lock(tmp_path, "torch", owner="SLURM job 41 attempt 0"):
        TrainTask("tf", tmp_path)()
        assert [c.framework for c in calls] == ["tf"]
        with pytest.raises(RunLocked) as e:
            TrainTask("torch", tmp_path)()
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{tmp_path} is in use by PID ")
    assert "(SLURM job 41 attempt 0), training torch" in line


def test_the_launcher_holds_the_lock_of_each_framework_it_trains(tmp_path):
    def prepared(framework: str, run_id: str):
        args = build_parser().parse_args(
            [
                "--profile",
                "smoke",
                "--framework",
                framework,
                "--results",
                str(tmp_path),
                "--run-id",
                run_id,
                "--no-space-check",
            ]
        )
        cfg, run_dir = resolve(args, given=None)
        return run_dir, prepare_run_folder(args, cfg, run_dir, None)

    run, lock = prepared("torch", "one")
    with lock:
        with pytest.raises(RunLocked, match="training torch"):
            take_run_lock(run, "torch")
        with take_run_lock(run, "tf"):  # the other framework's records are free
            pass
    run, lock = prepared("both", "two")
    with lock:
        for framework in ("torch", "tf"):
            with pytest.raises(RunLocked, match=f"training {framework}"):
                take_run_lock(run, framework)
    with take_run_lock(run, "torch"), take_run_lock(run, "tf"):  # released with the launch
        pass


# --- item 9: a requeued job waits a bounded, stated time ------------------------------------------


def test_a_requeued_task_0_waits_for_a_lock_the_old_node_still_holds(tmp_path, monkeypatch, capsys):
    """The lock of a dead node's attempt, held on by the file server's lease, is free after a
    while: the requeued attempt (SLURM_RESTART_COUNT=1) waits for it, saying so; the first
    attempt does not wait (a second writer is refused at once)."""
    calls = trained(monkeypatch)
    monkeypatch.setattr(slurm_job, "REQUEUE_WAIT_S", 5.0)
    monkeypatch.setattr(runlock, "PROGRESS_S", 0.2)
    old = take_run_lock(tmp_path, "torch", owner="SLURM job 42 attempt 0")
    slurm_env(monkeypatch)
    with pytest.raises(RunLocked, match="is in use by"):
        TrainTask("torch", tmp_path)()
    threading.Timer(1.0, old.release).start()  # the lease ends
    slurm_env(monkeypatch, SLURM_RESTART_COUNT="1")
    t0 = time.monotonic()
    TrainTask("torch", tmp_path)()
    assert 0.9 < time.monotonic() - t0 < 5.0 and len(calls) == 1
    out = capsys.readouterr().out
    assert f"waiting for {tmp_path / '.torch.lock'} (" in out and "(SLURM job 42 attempt 0)" in out
    assert read_lock_holder(tmp_path, "torch")["owner"] == "SLURM job 42 attempt 1"


def test_a_lock_still_held_after_the_wait_fails_in_one_line_saying_why(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "PROGRESS_S", 0.1)
    with take_run_lock(tmp_path, "tf", owner="SLURM job 42 attempt 0"):
        t0 = time.monotonic()
        with pytest.raises(RunLocked) as e:
            take_run_lock(tmp_path, "tf", wait_s=0.5)
        assert time.monotonic() - t0 >= 0.5
    line = str(e.value)
    assert "\n" not in line and "still in use by PID" in line and "after 0.5s:" in line
    assert "(SLURM job 42 attempt 0), training tf" in line
    assert "older attempt may still be running" in line and "node-local locks" in line
    assert runlock.REQUEUE_WAIT_S > 90  # NFSv4's default lease
    assert slurm_job.OWNER_WAIT_S > runlock.REQUEUE_WAIT_S  # the other tasks outwait task 0


# --- item 3: a requeue resumes, and no start drops records without a word ------------------------


def test_a_requeue_submitit_did_not_start_resumes(tmp_path, monkeypatch):
    """A node failure or `scontrol requeue` reruns the original pickle (resume=False): the
    requeued attempt, and any attempt that finds a checkpoint, resumes all the same."""
    calls = trained(monkeypatch)
    slurm_env(monkeypatch)
    TrainTask("torch", tmp_path)()
    assert calls[-1].resume is False  # a first attempt into a new run starts it
    slurm_env(monkeypatch, SLURM_RESTART_COUNT="1")
    TrainTask("torch", tmp_path)()
    assert calls[-1].resume is True
    slurm_env(monkeypatch, SLURM_PROCID="1")  # every task decides alike
    monkeypatch.setattr(slurm_job, "wait_for_owner", lambda *a, **k: None)
    (tmp_path / "tf" / "checkpoints").mkdir(parents=True)
    (tmp_path / "tf" / "checkpoints" / "checkpoint").write_text("x")
    TrainTask("tf", tmp_path)()
    assert calls[-1].resume is True


def session_with_records(tmp_path: Path, epochs: int, checkpointed: int, checkpoint: bool):
    """A rank-0 Session over a run folder holding `epochs` recorded epochs, `checkpointed` of
    them counted as checkpointed in the summary (and a checkpoint file when `checkpoint`)."""
    from denoisebench.trainer.session import Session, World

    cfg = load_config(
        "smoke", parse_overrides(["profiler.tensorboard=false", "profiler.enabled=false"])
    )
    rec = RunRecorder(tmp_path, "torch")
    for epoch in range(epochs):
        rec.epoch({"epoch": epoch}, [{"epoch": epoch, "step": epoch}])
    if checkpoint:
        (rec.checkpoint_dir / "last.pt").write_bytes(b"x")
    atomic_write_json(
        rec.dir / "summary.json", {"status": "failed", "epochs_completed": checkpointed}
    )
    world = World.of(cfg, rank=0, processes=1, replicas=1, strategy="single", device="cpu",
                     step_clock="host", runtime={})  # fmt: skip
    session = Session("torch", cfg, tmp_path, world)
    session.data = SimpleNamespace(train_u8=np.zeros((4 * cfg.train.batch_size, 1), np.uint8))
    return session, rec


def test_a_start_never_drops_checkpointed_epochs(tmp_path):
    """A start without --resume over a run with checkpointed epochs is refused, its records
    kept: before, it dropped them all without a word."""
    session, rec = session_with_records(tmp_path, epochs=3, checkpointed=3, checkpoint=True)
    with pytest.raises(ConfigError, match="3 finished epoch\\(s\\) are recorded and checkpointed"):
        session.begin(0, 0.0)
    assert [r["epoch"] for r in rec.epochs()] == [0, 1, 2]
    assert read_json(rec.dir / "summary.json")["epochs_completed"] == 3


def test_a_start_that_drops_recorded_epochs_says_how_many(tmp_path, capsys):
    session, rec = session_with_records(tmp_path, epochs=3, checkpointed=2, checkpoint=True)
    session.begin(2, 1.0)  # the third epoch's records, its checkpoint never written
    assert [r["epoch"] for r in rec.epochs()] == [0, 1]
    assert "dropping the records of 1 epoch(s) from epoch 3 on" in capsys.readouterr().out
    session, rec = session_with_records(tmp_path / "b", epochs=2, checkpointed=2, checkpoint=False)
    session.begin(0, 0.0)  # the checkpoint is gone: nothing can resume them
    assert rec.epochs() == []
    assert "dropping the records of 2 epoch(s) from epoch 1 on" in capsys.readouterr().out
