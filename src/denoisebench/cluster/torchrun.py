"""torchrun (torch.distributed.run) that ends quietly when a stop signal ends it.

torchrun turns SIGINT/SIGTERM into a SignalException that it re-raises, so a run stopped on
purpose (Ctrl-C, the launcher passing on a stop) ends in a Python traceback. Here it ends with
one line and the shell's exit code, 128 + the signal number; the ranks record the stop in the
run folder themselves. Any other failure (a rank that failed: ChildFailedError) is left as it is.

    python -m denoisebench.cluster.torchrun --standalone --nproc-per-node 2 -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main


def run(argv: list[str] | None = None) -> int:
    try:
        main(argv)
    except SignalException as e:
        print(f"torchrun: stopped by {e.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(run())
