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
"""

from __future__ import annotations

import signal
import subprocess
import time
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


def run_group(
    cmds: list[Command],
    names: list[str],
    grace_s: float = 10.0,
    stop: StopSignals | None = None,
) -> GroupResult:
    procs: list[subprocess.Popen] = []
    try:
        for argv, env in cmds:
            if stop is not None and stop.signum is not None:
                break
            procs.append(subprocess.Popen(argv, env=env, preexec_fn=_ignore_sigint))
        while True:
            if stop is not None and stop.signum is not None:
                _stop(procs, grace_s, stop)
                return GroupResult(128 + stop.signum, None, stop.name)
            codes = [p.poll() for p in procs]
            bad = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
            if bad:
                i, rc = bad[0]
                _stop(procs, grace_s)
                return GroupResult(rc, f"{names[i]} exited with code {rc}")
            if all(rc == 0 for rc in codes):
                return GroupResult(0, None)
            time.sleep(0.2)
    except BaseException:  # the launcher itself failed: take the workers down too
        _stop(procs, grace_s)
        raise


def _ignore_sigint() -> None:
    """Runs in each new process before it execs (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
