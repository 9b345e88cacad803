"""horovodrun (horovod.runner.launch) that ends with one line, not a traceback, when a worker
failed.

horovodrun reports a worker that exited non-zero by raising a RuntimeError ("Horovod detected
that one or more processes exited with non-zero status ..."); the worker's own error, printed
above it, and the launcher's summary say what happened. Any other error is left as it is.

    python -m denoisebench.cluster.horovodrun -np 2 -H localhost:2 --gloo python -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import sys

from horovod.runner.launch import run_commandline


def run() -> int:
    try:
        run_commandline()  # reads sys.argv
    except RuntimeError as e:
        if "exited with non-zero status" not in str(e):
            raise
        print(f"horovodrun: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
