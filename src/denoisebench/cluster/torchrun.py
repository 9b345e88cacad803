"""torchrun (torch.distributed.run) that ends quietly when a stop signal ends it, and records
the ranks that a signal killed.

torchrun turns SIGINT/SIGTERM into a SignalException that it re-raises, so a run stopped on
purpose (Ctrl-C, the launcher passing on a stop) ends in a Python traceback. Here it ends with
one line and the shell's exit code, 128 + the signal number; the ranks record the stop in the
run folder themselves. Any other failure (a rank that failed: ChildFailedError) is left as it is,
except that a rank killed by a signal (SIGKILL from the out-of-memory killer, a SIGSEGV) cannot
record its own failure: with `--record-failures-in FW_DIR` first, this writes it for the rank,
so the run's summary names it rather than a peer's broken collective.

    python -m denoisebench.cluster.torchrun [--record-failures-in FW_DIR] --standalone --nproc-per-node 2 -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

from denoisebench.core.distributed import TORCHRUN_FAILURES_FLAG
from denoisebench.core.records import killed_error, killed_unhandled, write_failure


def record_killed(error: ChildFailedError, fw_dir: Path) -> None:
    """A failure record (records.write_failure) for each rank that a signal it does not handle
    ended (not SIGTERM: torchrun stops the other ranks with it once one failed)."""
    for rank, failure in sorted(error.failures.items()):
        if failure.exitcode >= 0:  # torch's convention: minus the signal's number
            continue
        name = failure.signal_name()
        if killed_unhandled(name):
            error_text = killed_error(name)
            # failure.timestamp: when torchrun noticed the death, in whole seconds
            write_failure(fw_dir, f"torch rank {rank}", error_text, name, failure.timestamp)


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fw_dir = None
    if argv[:1] == [TORCHRUN_FAILURES_FLAG]:
        fw_dir, argv = Path(argv[1]), argv[2:]
    try:
        main(argv)
    except SignalException as e:
        print(f"torchrun: stopped by {e.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        if fw_dir is not None:
            record_killed(e, fw_dir)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(run())
