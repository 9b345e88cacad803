"""The GPU check's runner: a step's subprocesses against a deadline, their output in log.txt.

Each command runs from the repository root in its own process group, so a command cut at its
time limit is stopped with everything it started. What it printed goes to log.txt after its
`$ command` line, and the command, as shown there, to the step's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoisebench.core.records import REPO_ROOT


@dataclass
class Run:
    """One subprocess of a step: its command, and what it left in the log."""

    argv: list[str]
    returncode: int | None
    wall_s: float
    timed_out: bool
    output: str


@dataclass
class StepResult:
    name: str
    title: str
    status: str = "not run"
    """ok, failed, timeout (cut at its limit), skipped (with the reason), not run."""
    reason: str | None = None
    wall_s: float = 0.0
    commands: list[str] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    table: str = ""
    """the step's own printed table (bench output), shown as is in the summary."""


class StepFailed(Exception):
    """Ends a step: its status (failed or timeout) and the reason the summary gives."""

    def __init__(self, status: str, reason: str, run: Run | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.run = status, reason, run


def last_lines(text: str, n: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-n:] if line.strip())


class Runner:
    """Runs a step's subprocesses against a deadline and keeps their output in log.txt."""

    def __init__(self, python: str, log: Path, deadline: float) -> None:
        self.python, self.log, self.deadline = python, log, deadline
        self.step_deadline = deadline
        self.result: StepResult | None = None

    def start(self, result: StepResult, limit_s: float) -> None:
        """The next commands are `result`'s step's, which may take `limit_s` in all."""
        self.result = result
        self.step_deadline = time.monotonic() + limit_s

    def left_s(self) -> float:
        return min(self.deadline, self.step_deadline) - time.monotonic()

    def run(self, argv: list[str], check: bool = True, share: float = 1.0) -> Run:
        """Run `argv` from the repository root within `share` of the step's time left; stop
        its whole process group at that limit. With `check`, a non-zero exit or a timeout
        ends the step (StepFailed)."""
        shown = shlex.join(["python" if a == self.python else a for a in argv])
        assert self.result is not None
        self.result.commands.append(shown)
        limit = share * self.left_s()
        if limit <= 1:
            raise StepFailed("timeout", f"no time left for: {shown}")
        t0 = time.monotonic()
        with open(self.log, "a") as log:
            log.write(f"\n$ {shown}\n")
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: a timeout stops its children
            )
            output, timed_out = wait(proc, limit)
            wall_s = time.monotonic() - t0
            log.write(output)
            log.write(
                f"[exit {proc.returncode}{', cut at its time limit' if timed_out else ''}, "
                f"{wall_s:.1f} s]\n"
            )
        run = Run(argv, proc.returncode, wall_s, timed_out, output)
        if check:
            check_run(run, shown)
        return run


def check_run(run: Run, shown: str) -> None:
    """StepFailed for a run cut at its limit or ended with a non-zero exit."""
    if run.timed_out:
        raise StepFailed("timeout", f"cut after {run.wall_s:.0f} s: {shown}", run)
    if run.returncode != 0:
        raise StepFailed("failed", f"exit {run.returncode}: {last_lines(run.output)}", run)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    # the project need not be installed: run from the repository as `python -m launch` does
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "src"), str(REPO_ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def wait(proc: subprocess.Popen, limit_s: float) -> tuple[str, bool]:
    """(what `proc` printed, whether it was cut): SIGTERM to its process group at the limit,
    SIGKILL 10 s later."""
    try:
        output, _ = proc.communicate(timeout=limit_s)
        return output, False
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return output, True
