"""horovodrun (horovod.runner.launch) that ends with one line, not a traceback, when a worker
failed, and records a worker that a signal killed.

horovodrun reports a worker that exited non-zero by raising a RuntimeError ("Horovod detected
that one or more processes exited with non-zero status ... The first process to do so was:
Process name: 1 Exit code: 137"); the worker's own error, printed above it, and the launcher's
summary say what happened. Any other error is left as it is. A worker killed by a signal (SIGKILL
from the out-of-memory killer) cannot record its own failure: with `--record-failures-in FW_DIR`
first, this records it when it was the first to end, so the run's summary names it rather than
its peer's "Horovod has been shut down".

    python -m denoisebench.cluster.horovodrun [--record-failures-in FW_DIR] -np 2 -H localhost:2 --gloo python -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import itertools
import re
import signal
import sys
from pathlib import Path

from denoisebench.core.distributed import process_name, take_failures_dir
from denoisebench.core.failures import write_killed

FIRST_TO_END = re.compile(r"Process name: (\d+)\s+Exit code: (-?\d+)")
"""horovodrun's message names the first worker to end, by its rank, and its exit code."""


def killing_signal(code: int) -> str | None:
    """The signal that ended a worker, from its exit code: horovodrun starts each worker through
    a shell, which reports death by signal N as 128 + N (Python's own convention is -N)."""
    number = -code if code < 0 else code - 128
    valid = {s.value: s.name for s in signal.Signals}
    return valid.get(number) if number > 0 else None


def record_killed(message: str, fw_dir: Path, workers: int) -> None:
    """A failure record (failures.write_failure) for the first worker to end, when a signal it
    does not handle killed it; the framework is the folder's name (torch or tf)."""
    match = FIRST_TO_END.search(message)
    name = killing_signal(int(match.group(2))) if match else None
    if match and name:
        write_killed(fw_dir, process_name(fw_dir.name, int(match.group(1)), workers), name)


def workers(horovodrun_args: list[str]) -> int:
    """-np, as the launcher gives it; 2 (workers named by rank) without it."""
    for flag, value in itertools.pairwise(horovodrun_args):
        if flag in ("-np", "--num-proc") and value.isdigit():
            return int(value)
    return 2


def run() -> int:
    from horovod.runner.launch import run_commandline  # here: the rest needs no Horovod

    fw_dir, sys.argv[1:] = take_failures_dir(sys.argv[1:])  # run_commandline reads sys.argv
    try:
        run_commandline()
    except RuntimeError as e:
        if "exited with non-zero status" not in str(e):
            raise
        if fw_dir is not None:
            record_killed(str(e), fw_dir, workers(sys.argv[1:]))
        print(f"horovodrun: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
