"""Rank 0's record writer (trainer.writer): the epochs' files written in order on one background
thread while the next epoch trains; a failed write stops it and is raised in the training
thread; the run's end and a failure wait for every write handed over."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from denoisebench.core.config import load_config
from denoisebench.core.records import read_json, read_jsonl
from denoisebench.trainer import session
from denoisebench.trainer.writer import Writer


def test_jobs_run_in_order_while_the_caller_goes_on():
    writer, done = Writer(), []
    gate = threading.Event()
    t0 = time.perf_counter()
    writer.submit(lambda: (gate.wait(5), done.append(1)))
    writer.submit(lambda: done.append(2))
    assert time.perf_counter() - t0 < 1.0 and done == []  # submit does not wait
    gate.set()
    writer.drain()
    assert done == [1, 2]
    writer.submit(lambda: done.append(3))
    writer.close()
    assert done == [1, 2, 3]
    writer.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(lambda: None)


def test_a_failed_job_drops_the_later_ones_and_is_raised_once():
    writer, done = Writer(), []

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    writer.submit(lambda: done.append("records"))
    writer.submit(full_disk)
    writer.submit(lambda: done.append("summary"))  # never after a failed write
    with pytest.raises(OSError, match="No space left"):
        writer.drain()
    assert done == ["records"] and writer.failure is None  # raised: not raised again
    writer.close()
    writer = Writer()
    writer.submit(full_disk)
    writer.close(raise_failure=False)
    assert isinstance(writer.failure, OSError)  # left for the caller, who handles another one


def smoke(epochs: int) -> object:
    return load_config("smoke", {"train": {"epochs": str(epochs)}})


def held_checkpoints(monkeypatch, until: threading.Event) -> list[tuple[float, float]]:
    """Each torch checkpoint write waits for `until` (60 s at most) before it writes; returns
    the (start, end) times of the writes."""
    from denoisebench.torch_backend import train as train_torch

    real, writes = train_torch.save_checkpoint, []

    def save(path, state):
        t0 = time.perf_counter()
        until.wait(60)
        real(path, state)
        writes.append((t0, time.perf_counter()))

    monkeypatch.setattr(train_torch, "save_checkpoint", save)
    return writes


def test_the_next_epoch_trains_while_the_checkpoint_is_written(tmp_path, monkeypatch):
    """Epoch 1's checkpoint write is held until epoch 2's steps have begun: the run only
    finishes as it should if the training thread did not wait for the write."""
    from denoisebench.torch_backend import train as train_torch

    second_epoch = threading.Event()
    writes = held_checkpoints(monkeypatch, second_epoch)
    starts, real_run_epoch = [], train_torch.run_epoch

    def run_epoch(*args):
        starts.append(time.perf_counter())
        if len(starts) == 2:
            second_epoch.set()
        return real_run_epoch(*args)

    monkeypatch.setattr(train_torch, "run_epoch", run_epoch)
    summary = train_torch.train(smoke(2), tmp_path)
    assert len(writes) == 2 and len(starts) == 2
    # epoch 2 began before epoch 1's write ended: a training thread that waited for the write
    # would start epoch 2 only after it, 60 s later (the write waits for epoch 2 to begin).
    # (When the writer thread picks the write up, before or after epoch 2 begins, is its own.)
    assert starts[1] < writes[0][1]
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    fw = tmp_path / "torch"
    assert [e["epoch"] for e in read_jsonl(fw / "epochs.jsonl")] == [0, 1]
    import torch

    assert torch.load(fw / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_a_failure_waits_for_the_writes_handed_over_then_resume_continues(tmp_path, monkeypatch):
    """Epoch 2 fails while epoch 1's checkpoint is still being written (held until then): the
    failure is recorded after the write, so the summary, the records and the checkpoint agree,
    and --resume goes on from epoch 1."""
    from denoisebench.torch_backend import train as train_torch

    failing = threading.Event()
    writes = held_checkpoints(monkeypatch, failing)
    real_epoch_record = session.epoch_record
    pending = []

    def crash_in_epoch_1(framework, epoch, *args, **kwargs):
        if epoch == 1:
            pending.append(len(writes))  # epoch 1's checkpoint not written yet
            failing.set()
            raise RuntimeError("simulated failure")
        return real_epoch_record(framework, epoch, *args, **kwargs)

    monkeypatch.setattr(session, "epoch_record", crash_in_epoch_1)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train_torch.train(smoke(3), tmp_path)
    assert pending == [0] and len(writes) == 1  # it was pending, and was written before the end
    fw = tmp_path / "torch"
    summary = read_json(fw / "summary.json")
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1
    assert [e["epoch"] for e in read_jsonl(fw / "epochs.jsonl")] == [0]
    monkeypatch.setattr(session, "epoch_record", real_epoch_record)
    assert train_torch.train(smoke(3), tmp_path, resume=True)["status"] == "completed"
    assert [e["epoch"] for e in read_jsonl(fw / "epochs.jsonl")] == [0, 1, 2]


EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from denoisebench.trainer.process import exit_without_teardown
atexit.register(lambda: print("atexit ran", flush=True))
sys.stdout.write("unflushed line")  # no newline, no flush: the exit must flush it
if sys.argv[1] == "thread":  # a non-daemon thread still writing: it must finish
    def late():
        time.sleep(0.5)
        Path(sys.argv[2]).write_text("done")
    threading.Thread(target=late).start()
exit_without_teardown(3)
"""


@pytest.mark.parametrize("case", ["plain", "thread"])
def test_a_trainer_exits_without_teardown_but_keeps_what_an_exit_does(tmp_path, case):
    """trainer_main ends a recorded run with os._exit (the interpreter's teardown cost 0.7 s
    with torch loaded): the exit code, atexit handlers and unflushed output survive, and a
    live non-daemon thread is waited for (the ordinary exit) rather than cut off."""
    marker = tmp_path / "marker"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, case, str(marker)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "unflushed line" in proc.stdout and "atexit ran" in proc.stdout
    assert marker.exists() == (case == "thread")
