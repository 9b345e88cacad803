"""torchrun (torch.distributed.run) that ends quietly when a stop signal ends it, and records
a rank that a signal killed.

torchrun turns SIGINT/SIGTERM into a SignalException that it re-raises, so a run stopped on
purpose (Ctrl-C, the launcher passing on a stop) ends in a Python traceback. Here it ends
quietly with the shell's exit code, 128 + the signal number (the launcher says which signal
the user sent); the ranks record the stop in the run folder themselves. Any other failure (a rank that failed: ChildFailedError) is left as it is,
except that a rank killed by a signal (SIGKILL from the out-of-memory killer, a SIGSEGV) cannot
record its own failure: with `--record-failures-in FW_DIR` first, this writes it for the rank
(record_killed), so the run's summary names it rather than a peer's broken collective.

    python -m denoisebench.cluster.torchrun [--record-failures-in FW_DIR] --standalone --nproc-per-node 2 -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main, parse_args

from denoisebench.core.distributed import process_name, take_failures_dir
from denoisebench.core.failures import killed_unhandled, write_killed
from denoisebench.core.records import read_json


def processes(torchrun_args: list[str]) -> int:
    """How many ranks torchrun starts in all: --nnodes (its maximum) x --nproc-per-node, as
    the launcher gives them (integers); 2 (ranks named by number) when either is not one."""
    args = parse_args(torchrun_args)
    nodes, per_node = str(args.nnodes).split(":")[-1], str(args.nproc_per_node)
    return int(nodes) * int(per_node) if nodes.isdigit() and per_node.isdigit() else 2


TORCHRUN_STOP_S = 30
"""How long torchrun waits after its SIGTERM to the other ranks before it SIGKILLs them
(torch.distributed.elastic's PContext close timeout)."""


def record_killed(error: ChildFailedError, fw_dir: Path, world: int) -> None:
    """A failure record (failures.write_failure) for the rank that a signal it does not handle
    killed (failures.killed_unhandled: SIGKILL from the out-of-memory killer, a SIGSEGV): a rank
    that failed on its own records itself.

    The killed rank is known by how it ended, not by which rank torchrun timed first: torchrun
    dates a rank's failure by its error file (written when the rank raised) or, for a rank that
    wrote none (a killed one), by when it noticed the death, in whole seconds; on a busy machine
    the peer whose collective broke can carry an earlier second than the death that broke it.
    torchrun's own stop of the remaining ranks is not a cause: SIGTERM is a stop signal, and the
    SIGKILL it sends TORCHRUN_STOP_S later to a rank still running dates that rank at least
    TORCHRUN_STOP_S after the first failure. Among several killed ranks, the earliest."""
    first = min(failure.timestamp for failure in error.failures.values())
    killed = [
        (failure.timestamp, rank, failure.signal_name())
        for rank, failure in error.failures.items()
        if failure.exitcode < 0  # torch's convention: minus the signal's number
        and killed_unhandled(failure.signal_name())
        and failure.timestamp - first < TORCHRUN_STOP_S
    ]
    if killed:
        _, rank, signal_name = min(killed)
        write_killed(fw_dir, process_name("torch", rank, world), signal_name)


def run(argv: list[str] | None = None) -> int:
    fw_dir, argv = take_failures_dir(list(sys.argv[1:] if argv is None else argv))
    try:
        main(argv)
    except SignalException as e:
        # quiet: the launcher names the signal the user sent (a terminal's Ctrl-C reaches the
        # ranks as SIGINT, then the launcher passes SIGTERM on: "stopped by SIGTERM" beside
        # "interrupted by SIGINT" told two stories)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        if fw_dir is not None:
            if diverged(fw_dir):  # the ranks said so in one line and exit 1 on purpose
                return 1
            record_killed(e, fw_dir, processes(argv))
        raise
    return 0


def diverged(fw_dir: Path) -> bool:
    """Whether the run's summary says its loss diverged: every rank then ends with exit code 1
    after rank 0 printed why, and torchrun's failure report would only repeat it."""
    try:
        return read_json(fw_dir / "summary.json").get("status") == "diverged"
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(run())
