"""The run lock: one writer per framework of a run folder.

    results/<run-id>/.<framework>.lock    flock()ed by the one process that trains that framework

One lock per framework, so the two frameworks of one run (a `--slurm` launch submits a job for
each) train at the same time, while two processes that would write one framework's records (two
`--resume`s, a requeued job and its old attempt) are kept apart: the second is refused with
RunLocked, naming the holder from the lock file.

The lock is an flock tied to the holder's one open file description: on a local disk the kernel
drops it the moment the holder dies. A shared file system may hold it longer: NFSv4's server keeps
a dead client's locks until its lease ends (about 90 s by default), so a job requeued onto
another node waits for it (take_run_lock's `wait_s`: REQUEUE_WAIT_S). docs/slurm.md names the
file systems whose locks are node-local, where the lock keeps out only a process on the same node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from denoisebench.core.config import ConfigError
from denoisebench.core.records import utc_now

LOCK_FILE = ".{framework}.lock"
"""<run>/.<framework>.lock: flock()ed by the one process that trains that framework of the run
(take_run_lock); its text names that process (host, PID, since when) for the refusal a second
one gets. In the run folder itself, not in <framework>/: a framework not trained yet has no
folder, and one lock covers the framework's folders of all the run's repeats."""

NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
"""flock()'s errors on a file system without locks (NFS without lockd, Lustre -o noflock)."""

REQUEUE_WAIT_S = 150.0
"""How long a requeued SLURM job waits for its framework's lock before it gives up: longer than
NFSv4's default lease (90 s), after which the server drops the locks of a client that died."""
PROGRESS_S = 15.0
"""How often a waiting taker says that it still waits, and for whom."""


class RunLocked(ConfigError):
    """Another process trains this framework of the run: a one-line refusal naming it."""


class RunLock:
    """Held run locks (take_run_lock, take_run_locks): released by release(), on leaving a
    `with`, when the object is dropped, and by the kernel when the holder dies, however it dies."""

    def __init__(self, paths: list[Path], fds: list[int]) -> None:
        self.paths = paths
        self._fds = fds

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())  # closing the only descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_path(run_dir: Path, framework: str) -> Path:
    """The lock file of `framework` in run_dir."""
    return Path(run_dir) / LOCK_FILE.format(framework=framework)


def read_lock_holder(run_dir: Path, framework: str) -> dict[str, Any]:
    """What the framework's lock file says of its holder ({} when it says nothing readable);
    whether it still holds the lock, only the flock knows."""
    try:
        holder = json.loads(lock_path(run_dir, framework).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """'PID 123 on node7 since 2025-01-01T10:00:00Z (SLURM job 42)', or what is known of it."""
    if not holder.get("pid"):
        return "another process (not yet named in its lock file)"
    text = f"PID {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"
    return text + (f" ({holder['owner']})" if holder.get("owner") else "")


def take_run_lock(
    run_dir: Path, framework: str, owner: str | None = None, wait_s: float = 0.0
) -> RunLock:
    """Own `framework` in `run_dir`: an exclusive flock on <run_dir>/.<framework>.lock, then the
    holder (host, PID, since when, `owner`) written into the file. `wait_s`: how long to wait for
    a held lock, saying so every PROGRESS_S (0: not at all). RunLocked, in one line naming the
    holder, when another process still has it.

    The descriptor is not inherited (O_CLOEXEC, and subprocess closes the others), so trainer
    processes that outlive a killed launcher do not keep the run locked. A process forked
    without exec would share it: the trainers are started with exec (subprocess). On NFS, Linux
    emulates flock with POSIX byte-range locks, which the server arbitrates between nodes; on a
    file system with no locks at all (NO_LOCKS) the run goes on unlocked, with a warning."""
    path = lock_path(run_dir, framework)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise ConfigError(f"{path}: cannot open the run's lock file: {e.strerror}") from None
    try:
        _flock_within(fd, path, run_dir, framework, wait_s)
    except BaseException:
        os.close(fd)
        raise
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()}
    with contextlib.suppress(OSError):  # a full disk: the lock holds, its holder unnamed
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({**holder, "owner": owner}) + "\n").encode(), 0)
    return RunLock([path], [fd])


def _flock_within(fd: int, path: Path, run_dir: Path, framework: str, wait_s: float) -> None:
    """flock `fd` exclusively, trying for `wait_s` seconds; the refusal when it stays held."""
    start = time.monotonic()
    said = start
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno in NO_LOCKS:  # refusing every run there would be worse than no lock
                print(
                    f"warning: {path}: this file system has no locks ({e.strerror}); nothing "
                    "stops a second process from training this run at the same time",
                    file=sys.stderr,
                    flush=True,
                )
                return
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"{path}: cannot lock the run folder: {e.strerror}") from None
        holder = describe_holder(read_lock_holder(run_dir, framework))
        now = time.monotonic()
        if now - start >= wait_s:
            break
        if now - said >= PROGRESS_S:
            said = now
            print(
                f"waiting for {path} ({now - start:.0f}s of at most {wait_s:g}s): held by {holder}",
                flush=True,
            )
        time.sleep(min(1.0, wait_s / 10))
    if not wait_s:
        raise RunLocked(
            f"{run_dir} is in use by {holder}, training {framework}: one process trains a "
            "framework of a run at a time; wait for it to end, or stop it, then --resume"
        )
    raise RunLocked(
        f"{run_dir} is still in use by {holder}, training {framework}, after {wait_s:g}s: "
        "an older attempt may still be running (stop it), or its node died and the file "
        "server keeps its lock until a lease ends; on a file system with node-local locks "
        "only a process on that same node holds it (docs/slurm.md). --resume once it is free"
    )


def take_run_locks(
    run_dir: Path, frameworks: Iterable[str], owner: str | None = None, wait_s: float = 0.0
) -> RunLock:
    """The locks of every framework in `frameworks` (take_run_lock), all or none."""
    held = RunLock([], [])
    try:
        for framework in frameworks:
            lock = take_run_lock(run_dir, framework, owner, wait_s)
            held.paths += lock.paths
            held._fds += lock._fds
            lock._fds = []
    except BaseException:
        held.release()
        raise
    return held


def requeued(env: dict[str, str] | os._Environ) -> bool:
    """Whether this SLURM job is a requeued attempt (SLURM_RESTART_COUNT counts requeues up)."""
    return int(env.get("SLURM_RESTART_COUNT") or 0) > 0
