"""Failure records: each failed process' own record, and the summary's failure states.

    results/<run-id>/<framework>/
        failures/<process>.json   one per process that failed in this attempt (write_failure)
        failures/.first           the first of them to reach the folder (read_failures)
        summary.json              status failed / interrupted / skipped (mark_failed, ...)

A trainer records its own end (trainer.session.record_failure); what supervised it (the
launcher, the torchrun and horovodrun wrappers, a SLURM task) records what the trainer could
not: a process killed by a signal, a trainer that never started, a stop signal it received.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from denoisebench.core.records import (
    FAILURE_FIELDS,
    STOP_SIGNALS,
    archive_attempt,
    atomic_write_json,
    read_json,
    utc_now,
)

FAILURES_DIR = "failures"
"""<framework>/failures/: one JSON file per process that ended on an exception in this attempt
(write_failure), or for the first process to end when a signal killed it (written by what
supervised it: the launcher, or the torchrun and horovodrun wrappers), so the launcher can
tell the first failure from its knock-on errors. Every node writes its processes' records here;
only node 0's launcher turns them into the summary (mark_failed), so one writer updates it."""

FIRST_FILE = ".first"
"""failures/.first: the file name of the attempt's first failure record to reach the folder."""


IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def name_peers(error: str) -> str:
    """`error` with each IPv4 address in it followed by its host's name, where this node's
    resolver knows one: gloo names a peer that went away by its address only ("Connection
    closed by peer [10.1.2.3]:41234"), and the node is what a user looks for."""

    def named(match: re.Match[str]) -> str:
        try:
            host = socket.gethostbyaddr(match.group(1))[0]
        except OSError:
            return match.group(1)
        return f"{match.group(1)} (host {host})"

    return IPV4.sub(named, error)


def write_failure(fw_dir: Path, process: str, error: str, killed_by: str | None = None) -> None:
    """A process' own failure: its name ("torch rank 1", "tf worker 0", "tf"), the exception,
    the host it ran on and when it failed, by that host's clock. `killed_by`: the signal's name,
    for the first process to end when a signal killed it (then `error` is killed_error's). The
    first record of the attempt to reach the folder also names itself in FIRST_FILE. Best
    effort: a full disk must not hide the exception itself."""
    folder = Path(fw_dir) / FAILURES_DIR
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", process).strip("-") + ".json"
    record = {"process": process, "error": name_peers(error), "host": socket.gethostname(),
              "time": time.time(), "killed_by": killed_by}  # fmt: skip
    with contextlib.suppress(OSError):
        atomic_write_json(folder / name, record)
        # O_EXCL: of records written at once on several nodes, one is first, as the (shared)
        # file system saw them, whatever their hosts' clocks say
        fd = os.open(folder / FIRST_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")


def killed_unhandled(signal_name: str) -> bool:
    """Whether a process that died by this signal failed: the trainers handle STOP_SIGNALS
    themselves (they record 'interrupted'), and torchrun stops the other ranks with SIGTERM."""
    return signal_name not in {s.name for s in STOP_SIGNALS}


def killed_error(signal_name: str) -> str:
    """The `error` recorded for a process that died by a signal it did not handle."""
    if signal_name == "SIGKILL":
        return (
            "killed by SIGKILL: most often the kernel's out-of-memory killer (see dmesg) or the "
            "batch system's memory limit"
        )
    return f"killed by {signal_name}"


def write_killed(fw_dir: Path, process: str, signal_name: str) -> None:
    """The failure record of the first process to end, written by what supervised it, when a
    signal it does not handle killed it (killed_unhandled); a stop signal it records itself."""
    if killed_unhandled(signal_name):
        write_failure(fw_dir, process, killed_error(signal_name), killed_by=signal_name)


def read_failures(fw_dir: Path) -> list[dict[str, Any]]:
    """This attempt's process failures, the cause first: the killed process (recorded only when
    it was the first to end), else the first record to reach the folder (FIRST_FILE); the others
    are knock-on errors (a broken collective on the peers, most often), by host, then by time.
    Times of different hosts are never compared: their clocks may differ by more than the
    failures did. A killed process' record is written after its death was noticed, later than
    the errors its death caused, so arrival alone would misplace it."""
    folder = Path(fw_dir) / FAILURES_DIR
    try:
        first = (folder / FIRST_FILE).read_text().strip()
    except OSError:
        first = ""
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            rows.append({**read_json(path), "_file": path.name})
        except (OSError, ValueError):
            continue  # half-written by a process killed while writing it
    rows.sort(
        key=lambda r: (
            r.get("killed_by") is None,
            r["_file"] != first,
            r.get("host") or "",
            r.get("time", 0.0),
        )
    )
    return [{k: v for k, v in r.items() if k != "_file"} for r in rows]


def clear_failures(fw_dir: Path) -> None:
    """Forget an earlier attempt's process failures (before the processes of a new one start)."""
    shutil.rmtree(Path(fw_dir) / FAILURES_DIR, ignore_errors=True)


def mark_failed(
    run_dir: Path,
    framework: str,
    error: str,
    failures: list[dict[str, Any]] | None = None,
    interrupted_now: bool = False,
) -> None:
    """Record a failure the trainer could not record itself (it was killed, or never started),
    or correct the one it recorded.

    `failures` (read_failures) are the processes' own exceptions of this attempt: the earliest
    gives `failed_process` and `error`, the rest go into `knock_on_errors`. Without them, a
    summary that already holds the trainer's own error keeps it and `failed_process` is the
    launcher's `error` (which process exited first, with its code). `interrupted_now`: the
    summary's 'interrupted' is this attempt's (torchrun stops the other ranks with SIGTERM
    after one fails), so it is replaced, not kept in `history`.
    """
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") == "interrupted":
        if not interrupted_now:  # an earlier attempt's; this one failed
            archive_attempt(current)
        current.update(dict.fromkeys(FAILURE_FIELDS))
        current["status"] = "failed"
    if failures:
        first, *others = failures
        current.update(
            status="failed",
            error=first["error"],
            failed_process=first["process"],
            knock_on_errors=[{"process": f["process"], "error": f["error"]} for f in others],
        )
    else:
        if current.get("status") != "failed" or not current.get("error"):
            current.update(status="failed", error=error)
        current["failed_process"] = error
    current.update(framework=framework, updated=utc_now())
    atomic_write_json(path, current)


def mark_skipped(run_dir: Path, framework: str, reason: str) -> None:
    """Record a framework the launcher did not start, and why (its package is missing here):
    status 'skipped', the reason in `error`. A summary of a run it trained is left as it is."""
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") not in (None, "skipped"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"framework": framework, "status": "skipped", "error": reason,
                             "epochs_completed": 0, "updated": utc_now()})  # fmt: skip


def mark_interrupted(run_dir: Path, framework: str, signal_name: str, resume: str) -> None:
    """Record that a framework's run was stopped by a stop signal: status 'interrupted', the
    signal, the epochs finished (`epochs_completed`, 0 when none was) and `resume_command`.

    The trainer records this itself when it can (trainer.session.record_failure); the launcher
    writes it again with the signal it received, which is the user's, not the one it forwarded.
    """
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") == "failed":  # an earlier attempt's; this one was interrupted
        archive_attempt(current)
    current.update(
        status="interrupted",
        error=None,
        failed_process=None,
        signal=signal_name,
        epochs_completed=current.get("epochs_completed", 0),
        resume_command=resume,
        framework=framework,
        updated=utc_now(),
    )
    atomic_write_json(path, current)
