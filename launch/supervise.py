"""The one place that runs commands: start a group of processes, and if one fails, stop the rest.

A distributed job whose worker dies must not hang: the survivors would wait forever in a
collective. `run_group` watches every process; the first non-zero exit terminates the others
(SIGTERM, then SIGKILL after a grace period) and is reported by name.

A stop signal to the launcher (SIGINT from Ctrl-C, SIGTERM, SIGHUP) is caught by `StopSignals`
while the launcher trains: `run_group` passes it on as SIGTERM (what torchrun and SLURM send) to
every process still running, waits the grace period for them to record where they were, kills
what is left and reports the signal, so the launcher can mark the run interrupted and exit with
128 + the signal number. A second signal during the wait kills them at once.

The processes stay in the launcher's process group, so a terminal's Ctrl-C reaches them too;
a trainer handles the first stop signal and ignores the launcher's SIGTERM that follows
(trainer.session.raise_on_sigterm). They start with SIGINT ignored, until the trainer or torchrun
installs its own handler: a Ctrl-C while a child still imports PyTorch or TensorFlow would
otherwise end it with a KeyboardInterrupt traceback; the launcher's SIGTERM ends it quietly.
On Linux each process also gets SIGTERM when the launcher dies (prctl PR_SET_PDEATHSIG): a
launcher killed outright stops its trainers as a stop signal would (they record 'interrupted'
and the run resumes), instead of leaving them training without the run's lock.

Unless `verbose`, each process' stderr reaches the launcher's through `StartupFilter`, which
drops the few start-up lines of the frameworks' C++ libraries in `STARTUP_NOISE` (printed
whatever TF_CPP_MIN_LOG_LEVEL says) and passes everything else on as it comes. Where the
launcher's stderr is a terminal the process gets a pseudo-terminal, so it still sees one (tqdm
draws its progress bars only on a terminal); elsewhere (a SLURM log, a test) a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from denoisebench.core.records import STOP_SIGNALS
from launch.commands import Command


@dataclass(frozen=True)
class GroupResult:
    returncode: int
    failed: str | None
    """Name of the first process that failed, with its exit code; None when all succeeded."""
    signal: str | None = None
    """The stop signal the launcher received (and forwarded), e.g. "SIGINT"; else None."""
    failed_process: str | None = None
    """The first failed process' name alone, e.g. "tf worker 1"."""
    killed_by: str | None = None
    """The signal that killed the first failed process (not one the launcher sent), e.g.
    "SIGKILL" from the out-of-memory killer; None when it exited on its own."""


class StopSignals:
    """While entered, the stop signals are noted instead of ending the launcher: `signum` is
    the first one received, `count` how many came. The previous handlers return on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._caught)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _caught(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name


def first_failure(codes: list[int | None]) -> tuple[int, int] | None:
    """The failed process to name, as (index, exit code), among processes seen ended in one
    poll (`codes`: Popen.poll's, None while running); None when none failed. A process killed
    by a signal (code < 0) comes before a peer whose collective broke with it."""
    bad = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
    return min(bad, key=lambda item: item[1] >= 0) if bad else None


def run_group(
    cmds: list[Command],
    names: list[str],
    grace_s: float = 10.0,
    stop: StopSignals | None = None,
    verbose: bool = False,
    started: Callable[[], None] | None = None,
) -> GroupResult:
    """Run `cmds` together until all succeed, one fails or `stop` catches a signal.
    `verbose`: the processes write to the launcher's stderr directly, start-up lines included.
    `started` is called once every process has started (work to do while they run)."""
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    setup = _child_setup(os.getpid())
    try:
        for argv, env in cmds:
            if stop is not None and stop.signum is not None:
                break
            if verbose:
                procs.append(subprocess.Popen(argv, env=env, preexec_fn=setup))
                continue
            read_fd, write_fd = _stderr_channel()
            try:
                proc = subprocess.Popen(argv, env=env, stderr=write_fd, preexec_fn=setup)
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)  # the process holds it now: end of file when it exits
            procs.append(proc)
            pumps.append(threading.Thread(target=_pump, args=(read_fd,), daemon=True))
            pumps[-1].start()
        if started is not None:
            started()
        while True:
            if stop is not None and stop.signum is not None:
                _stop(procs, grace_s, stop)
                return GroupResult(128 + stop.signum, None, stop.name)
            codes = [p.poll() for p in procs]
            first = first_failure(codes)
            if first is not None:
                i, rc = first
                _stop(procs, grace_s)
                if rc < 0:  # Popen's convention: minus the number of the signal that killed it
                    killer = signal.Signals(-rc).name
                    return GroupResult(rc, f"{names[i]} killed by {killer}", None, names[i], killer)
                return GroupResult(rc, f"{names[i]} exited with code {rc}", None, names[i])
            if all(rc == 0 for rc in codes):
                return GroupResult(0, None)
            _wait_any([p for p, rc in zip(procs, codes, strict=True) if rc is None], 0.2)
    except BaseException:  # the launcher itself failed: take the workers down too
        _stop(procs, grace_s)
        raise
    finally:
        # the processes have ended: their last lines (a traceback) come before the launcher's
        for pump in pumps:
            pump.join(timeout=5.0)  # a grandchild still holding the stream is not waited for


def _wait_any(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """Return when one of `procs` ends or after `timeout_s` (a stop signal's handler runs
    meanwhile; the caller looks at it next). A process' end wakes this at once (a pidfd
    becomes readable when it exits, Linux 5.3): a fixed sleep kept every run's end waiting
    up to its length. Where there is no pidfd, it sleeps."""
    fds: list[int] = []
    try:
        for proc in procs:
            fds.append(os.pidfd_open(proc.pid))
        select.select(fds, [], [], timeout_s)
    except ProcessLookupError:
        return  # it ended and was reaped meanwhile: the caller polls again now
    except (OSError, AttributeError):  # no pidfd_open here (kernel, platform)
        time.sleep(timeout_s)
    finally:
        for fd in fds:
            os.close(fd)


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that started it ends (Linux only)."""
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(launcher_pid: int) -> Callable[[], None]:
    """What each new process does before it execs (see the module docstring): ignore SIGINT,
    and get SIGTERM when the launcher dies, so that a launcher killed outright (SIGKILL, the
    OOM killer) does not leave its trainers writing into a run folder whose lock it no longer
    holds. run_group starts processes from the launcher's main thread, which lives as long as
    the launcher."""

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != launcher_pid:  # it died before prctl: nobody would stop us
                os._exit(128 + signal.SIGTERM)

    return setup


def run_launcher(cmd: list[str], poll_s: float = 0.2) -> tuple[int, str | None]:
    """A whole launch started by a subcommand (claims): its exit code, and the stop signal the
    subcommand got meanwhile (None if none). The launch runs in its own process group, so a
    terminal's Ctrl-C reaches the subcommand alone, which passes each stop signal on as SIGTERM
    (a launch stops on it at any point without a traceback: its trainers record 'interrupted'
    and it exits 143) and waits for it to end; it gets SIGTERM too if the subcommand dies
    (PR_SET_PDEATHSIG), so no training is left running without the one who started it."""
    parent = os.getpid()

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(128 + signal.SIGTERM)

    with StopSignals() as stop:
        proc = subprocess.Popen(cmd, process_group=0, preexec_fn=setup)
        passed = 0
        while proc.poll() is None:
            if stop.count > passed:  # each signal once: a second one stops it at once
                proc.send_signal(signal.SIGTERM)
                passed = stop.count
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=poll_s)
    return proc.returncode, stop.name


def _stop(procs: list[subprocess.Popen], grace_s: float, stop: StopSignals | None = None) -> None:
    """SIGTERM every live process, wait up to grace_s for them all (less when `stop` counts
    another signal), then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    signals_seen = stop.count if stop is not None else 0
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if stop is not None and stop.count > signals_seen:
            break  # asked again: do not wait
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# Lines the frameworks' C++ libraries print at start-up whatever TF_CPP_MIN_LOG_LEVEL says
# (static initialisers log before TensorFlow reads it; tensorflow/tensorflow#100442 shows them
# at level 3 with TensorFlow 2.19's CUDA build) or below its level 2, where a user set it lower.
# None is a problem: CUDA plugins and XLA's computation placer registered twice by TensorFlow's
# own libraries (tensorflow/tensorflow#62075), the absl notice that precedes the first of them,
# and notices about oneDNN, the CPU's instructions and TensorRT. Each pattern is a whole line,
# message included: another message from the same source file still passes.
_LOG_PREFIX = (
    r"(?:[IWEF]\d{4} [\d:.]+ +\d+ "  # absl: E0000 00:00:1758131437.297298 3722519 file.cc:1]
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )"  # TensorFlow's own: 2025-09-17 14:44:05.1: E path.cc:1]
    r"[\w./-]+:\d+\] "
)
STARTUP_NOISE: tuple[str, ...] = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _LOG_PREFIX + r"Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register "
    r"factory for plugin cu(?:DNN|FFT|BLAS) when one has already been registered",
    _LOG_PREFIX + r"computation placer already registered\. Please check linkage and avoid "
    r"linking the same target more than once\.",
    _LOG_PREFIX + r"oneDNN custom operations are on\. .*",
    _LOG_PREFIX + r"This TensorFlow binary is optimized to use available CPU instructions in "
    r"performance-critical operations\.",
    r"To enable the following instructions: .*, in other operations, rebuild TensorFlow with "
    r"the appropriate compiler flags\.",
    _LOG_PREFIX + r"TF-TRT Warning: Could not find TensorRT",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in STARTUP_NOISE).encode())
# Every line in STARTUP_NOISE starts with one of these; a line that does not is never held back.
_NOISE_FIRST_BYTES = frozenset(b"IWEFT0123456789")
_HOLD_MAX = 4096
"""A partial line longer than this is let through (none of STARTUP_NOISE is this long)."""


class StartupFilter:
    """Drops the lines of STARTUP_NOISE from a byte stream and passes everything else on at once.

    A line is held back only while it is incomplete and could still be one of them (it starts
    as they do), until its end of line or `flush`: tqdm's progress lines (`\\r...`, no end of
    line), tracebacks and warnings go straight through, byte for byte.
    """

    def __init__(self) -> None:
        self._held = b""
        self._passing = False  # the current line's start was let through: so is the rest

    def feed(self, data: bytes) -> bytes:
        """What to write now of `data`, the next bytes of the stream."""
        out = bytearray()
        for piece in re.split(rb"(?<=\n)", data):
            if not piece:
                continue
            complete = piece.endswith(b"\n")
            if self._passing:
                out += piece
            else:
                line = self._held + piece
                self._held = b""
                if complete:
                    if not _NOISE.fullmatch(line.rstrip(b"\r\n")):
                        out += line
                elif line[0] in _NOISE_FIRST_BYTES and len(line) <= _HOLD_MAX:
                    self._held = line
                else:
                    out += line
                    self._passing = True
            if complete:
                self._passing = False
        return bytes(out)

    def flush(self) -> bytes:
        """The line held back so far, let through: nothing more came for a while, or the
        stream ended."""
        held, self._held = self._held, b""
        if held:
            self._passing = True
        return held


def _stderr_channel() -> tuple[int, int]:
    """(read end, write end) for a process' stderr: a pseudo-terminal of the launcher's window
    size where the launcher's stderr is a terminal, else a pipe."""
    if not os.isatty(2):
        return os.pipe()
    read_fd, write_fd = pty.openpty()
    tty.setraw(write_fd)  # bytes pass unchanged ('\n' stays '\n')
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(write_fd, termios.TIOCSWINSZ, size)
    return read_fd, write_fd


def _pump(read_fd: int, out_fd: int = 2, idle_s: float = 0.2) -> None:
    """Copy a process' stderr to the launcher's through StartupFilter until it ends; a held
    partial line waits at most idle_s."""
    filt = StartupFilter()
    try:
        while True:
            if not select.select([read_fd], [], [], idle_s)[0]:
                _write_all(out_fd, filt.flush())
                continue
            try:
                data = os.read(read_fd, 65536)
            except OSError:  # EIO: a pseudo-terminal's last writer closed it
                data = b""
            if not data:
                break
            _write_all(out_fd, filt.feed(data))
        _write_all(out_fd, filt.flush())
    finally:
        os.close(read_fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data) :]
        except OSError:  # the launcher's stderr is gone: keep reading, so the process never blocks
            return
