"""A trainer process's life around its Session: the command line both trainers share, stop
signals turned into `Interrupted` (and held back while an epoch's records are handed over),
how a process that ended early is recorded, and the errors that end it in one line.

    trainer_main(FRAMEWORK, train, argv, __doc__)   # a trainer's main(): parse, train, exit code

Split from trainer/session.py, which keeps the run's bookkeeping (Session, World, EpochResult).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from denoisebench.core.config import ConfigError, load_resolved
from denoisebench.core.diskspace import DISK_FULL, disk_full_report
from denoisebench.core.failures import mark_interrupted, write_failure
from denoisebench.core.records import (
    LAUNCHER_ENV,
    RUN_ENV,
    STOP_SIGNALS,
    Interrupted,
    RunRecorder,
    read_json,
    resume_command,
)
from denoisebench.data.images import DataError
from denoisebench.trainer.rundata import SplitMismatchError

# Errors that mean bad input rather than a bug: entry points print these without a traceback.
USER_ERRORS = (ConfigError, DataError, SplitMismatchError)


class CheckpointError(RuntimeError):
    """The run's checkpoint cannot be loaded for --resume (truncated, damaged): the message names
    the file. The run fails (exit code 1) with that one line instead of a traceback."""


def damaged_checkpoint(path: Path, e: BaseException) -> CheckpointError:
    """The CheckpointError for `path`, which failed to load with `e`."""
    return CheckpointError(
        f"{path}: cannot load the checkpoint to resume from ({type(e).__name__}: {e}); it is "
        "damaged or truncated: restore it from a copy, or start a new run"
    )


def raise_on_sigterm() -> None:
    """Turn the first stop signal into `Interrupted`, so the run folder is marked interrupted
    (record_failure) instead of the process vanishing mid-epoch: SIGTERM from the launcher,
    torchrun or SLURM, SIGINT from Ctrl-C, SIGHUP. Later ones do nothing: a terminal's Ctrl-C
    reaches the launcher and its children alike, and the launcher then sends its SIGTERM
    (SLURM, too, signals every process of a job step); a second exception would cut the record
    short."""
    stopping = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        if _HELD["depth"]:  # inside uninterrupted(): raised when it ends
            _HELD["pending"] = signum
            return
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


_HELD: dict[str, Any] = {"depth": 0, "pending": None}


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold a stop signal back while an epoch's records and checkpoint are written, and raise
    it (`Interrupted`) once they are: a checkpoint is never cut by the signal (torch.save turns
    an exception in mid-write into its own RuntimeError, a traceback instead of a quiet stop),
    and the records, checkpoint and summary of an epoch end up all written or none."""
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
    if not _HELD["depth"] and _HELD["pending"] is not None:
        signum, _HELD["pending"] = _HELD["pending"], None
        raise Interrupted(signum)


def record_failure(rec: RunRecorder | None, e: BaseException, fw_dir: Path, process: str) -> None:
    """How a trainer process ended early. Every process that failed on an exception writes its
    own failure (failures.write_failure), so the launcher can name the first one and list the
    others' knock-on errors; rank 0 (`rec`; other ranks pass None) also records the summary:
    'interrupted' with the signal, the epochs finished and the command that resumes it, for
    `Interrupted`; else 'failed' with the exception. A plain SystemExit (sys.exit, which
    submitit calls once its checkpoint() has requeued the job) records nothing. The caller
    re-raises `e`: Interrupted is a SystemExit, so the process then ends quietly with 128 + the
    signal number."""
    if isinstance(e, SystemExit) and not isinstance(e, Interrupted):
        return  # sys.exit in this process: submitit's, after checkpoint() requeued (it records it)
    if not isinstance(e, Interrupted):
        write_failure(fw_dir, process, f"{type(e).__name__}: {e}")
    if rec is None:
        return
    try:
        if isinstance(e, Interrupted):
            resume = resume_command(rec.dir.parent, os.environ.get(LAUNCHER_ENV))
            mark_interrupted(rec.dir.parent, rec.framework, e.signal, resume)
            done = read_json(rec.dir / "summary.json")["epochs_completed"]
            print(
                f"[{rec.framework}] interrupted by {e.signal} after {done} finished epoch(s); "
                f"continue with: {resume}",
                file=sys.stderr,
                flush=True,
            )
        else:
            rec.summary(status="failed", error=f"{type(e).__name__}: {e}")
    except OSError as write_error:  # a full disk: the summary keeps its last whole state
        print(
            f"[{rec.framework}] could not record this in {rec.dir / 'summary.json'}: {write_error}",
            file=sys.stderr,
            flush=True,
        )


def trainer_main(
    framework: str,
    train: Callable[..., Any],
    argv: list[str] | None,
    doc: str,
    devices_option: bool = False,
) -> None:
    """The command line both trainers share: `python -m <trainer> RUN_DIR [--resume]` (and
    `--devices N` for TensorFlow's MirroredStrategy). Stop signals become `Interrupted`; bad
    input and a full disk end with one line (exit 2 and 1), not a traceback; a run that
    diverged ends with exit code 1 on every process (its line was said in Session.diverge)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run-id>, holding config.json")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    if devices_option:
        parser.add_argument(
            "--devices",
            type=int,
            default=1,
            help="replicas on this machine: GPUs, or logical CPU devices without GPUs",
        )
    args = parser.parse_args(argv)
    raise_on_sigterm()
    # what this trainer starts is the run's on any node's view (measure.conditions_cpu)
    os.environ[RUN_ENV] = str(args.run_dir.resolve())
    extra = {"devices": args.devices} if devices_option else {}
    try:
        summary = train(
            load_resolved(args.run_dir / "config.json"), args.run_dir, args.resume, **extra
        )
    except USER_ERRORS as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except CheckpointError as e:  # recorded as the run's failure; one line here
        print(f"[{framework}] error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(
            f"[{framework}] error: {disk_full_report(e, args.run_dir / framework)}", file=sys.stderr
        )
        sys.exit(1)
    if summary and summary.get("status") == "diverged":
        sys.exit(1)
    exit_without_teardown(0)


def exit_without_teardown(code: int) -> NoReturn:
    """End a trainer whose run is recorded without the interpreter's teardown: with torch (and
    torch._dynamo, which Adam imports) loaded, freeing every module and extension at exit took
    0.7-0.8 s on this project's 2-core EPYC (a script that only imports them, 2026-12-06), time
    in which the run is done but its launcher waits. What an exit must still do is done first:
    the atexit handlers (Horovod's shutdown, logging's flush) and the standard streams. Every
    record is on disk by now (Session.finish waits for the record writer; the writes are
    atomic), and the process group is gone (train's finally). Where a thread other than daemons
    is still alive, the ordinary exit waits for it instead."""
    alive = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if alive:
        sys.exit(code)
    atexit._run_exitfuncs()  # what an ordinary exit runs first (multiprocessing does the same)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
