"""The one place that runs commands: start a group of processes, and if one fails, stop the rest.

A distributed job whose worker dies must not hang: the survivors would wait forever in a
collective. `run_group` watches every process; the first non-zero exit terminates the others
(SIGTERM, then SIGKILL after a grace period) and is reported by name.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from launch.commands import Command


@dataclass(frozen=True)
class GroupResult:
    returncode: int
    failed: str | None
    """Name of the first process that failed, with its exit code; None when all succeeded."""


def run_group(cmds: list[Command], names: list[str], grace_s: float = 10.0) -> GroupResult:
    procs = [subprocess.Popen(argv, env=env) for argv, env in cmds]
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
            if bad:
                i, rc = bad[0]
                _stop(procs, grace_s)
                return GroupResult(rc, f"{names[i]} exited with code {rc}")
            if all(rc == 0 for rc in codes):
                return GroupResult(0, None)
            time.sleep(0.2)
    except BaseException:  # Ctrl-C in the launcher: take the workers down too
        _stop(procs, grace_s)
        raise


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
