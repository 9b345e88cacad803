"""Horovod across nodes without SSH: Horovod's own Gloo rendezvous, one launcher per node.

horovodrun starts the workers of other hosts over SSH (horovod.runner.gloo_run runs each
slot's command through `ssh host`), and Horovod's documented way under SLURM, `srun --mpi`,
needs an MPI build; `horovod-build` builds Gloo without MPI, and a SLURM cluster need not let
its nodes SSH to each other. So this does what horovodrun does, split by node, the way torchrun
and TensorFlow already run here: SLURM (srun, or a submitit task per device) starts something
on every node, and

- node 0 runs Horovod's rendezvous server (horovod.runner.http.http_server: the key-value store
  the workers' Gloo contexts meet at, initialised with horovodrun's own slot plan,
  `get_host_assignments`) on the job's port (core.placement.job_port), for as long as its
  workers train (`serve_rendezvous`);
- every node starts its own workers, each with the variables horovodrun would give its slot
  (core.placement.horovod_env: rank, local and cross ranks, the host, the rendezvous).

A worker that fails ends its node's launcher: the node's other workers are stopped (SIGTERM,
then SIGKILL after STOP_S), a worker a signal killed is recorded for it (as the horovodrun
and torchrun wrappers do), and the launcher exits 1 with one line. The other nodes' workers
see the failed peer in their next collective: at once when its connections close, or after
runtime.collective_timeout_s (the trainer's Gloo timeout, HOROVOD_GLOO_TIMEOUT_SECONDS) when
its node no longer answers. SIGINT and SIGTERM are passed on to the workers, which record the
stop; the launcher then exits 128 + the signal's number, quietly (the launcher above names it).

    python -m denoisebench.cluster.horovod_nodes [--record-failures-in FW_DIR] \\
        --hosts n9,n10 --node-rank 0 --per-node 2 --master-addr n9 --master-port 20032 \\
        -- python -m denoisebench.torch_backend.train DIR
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from denoisebench.core.distributed import process_name, take_failures_dir
from denoisebench.core.failures import write_killed
from denoisebench.core.placement import Placement, horovod_env, node_placements

STOP_S = 30.0
"""How long the node's other workers get to end after a worker failed or a stop signal came,
before they are SIGKILLed (torchrun's close timeout)."""
POLL_S = 0.2


@contextmanager
def serve_rendezvous(place: Placement) -> Iterator[None]:
    """Horovod's rendezvous server for the job `place` is in, on master_port, while the block
    runs: rank 0 of a job of more than one process serves it (node 0's launcher, or submitit's
    task 0: node 0's other tasks must not), everyone else has nothing to do.
    The plan is horovodrun's (`get_host_assignments`): `place.local_world_size` slots on each
    of `place.hosts`; a port already taken is refused in one line (OSError)."""
    if place.rank != 0 or place.world_size <= 1:
        yield
        return
    # Horovod's modules, imported here only: the launcher and the tests import this one without
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer
    from horovod.runner.util.threads import in_thread

    slots = ",".join(f"{host}:{place.local_world_size}" for host in place.hosts)
    try:
        server = RendezvousHTTPServer(("", place.master_port), RendezvousHandler, 0)
    except OSError as e:
        raise OSError(
            f"Horovod's rendezvous cannot listen on port {place.master_port} ({e.strerror}): "
            "another job's? set --master-port"
        ) from None
    server.init(get_host_assignments(parse_hosts(slots), place.world_size))
    thread = in_thread(target=server.serve_forever)
    try:
        yield
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's options, and the worker's command after `--`."""
    if "--" not in argv:
        raise SystemExit("horovod_nodes: the worker's command follows `--`")
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m denoisebench.cluster.horovod_nodes")
    p.add_argument(
        "--hosts", required=True, help="every node's host, comma-separated, node 0 first"
    )
    p.add_argument("--node-rank", type=int, required=True)
    p.add_argument("--per-node", type=int, required=True, help="workers on each node")
    p.add_argument("--master-addr", required=True, help="node 0's address (the rendezvous)")
    p.add_argument("--master-port", type=int, required=True)
    return p.parse_args(argv[:cut]), argv[cut + 1 :]


class Workers:
    """This node's workers: started, watched, stopped."""

    def __init__(self, command: list[str], places: list[Placement]) -> None:
        self.places = places
        self.procs = [subprocess.Popen(command, env=os.environ | horovod_env(p)) for p in places]
        self.stop_signal: int | None = None

    def pass_on(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def first_failure(self) -> tuple[Placement, int] | None:
        """The first worker seen to have ended with a non-zero code, with its code."""
        for place, proc in zip(self.places, self.procs, strict=True):
            if proc.returncode not in (None, 0):
                return place, proc.returncode
        return None

    def wait(self) -> tuple[Placement, int] | None:
        """Until every worker ended, or one failed (then the others are stopped)."""
        while None in [proc.poll() for proc in self.procs]:  # every one polled, each time
            failed = self.first_failure()
            if failed is not None and self.stop_signal is None:
                self.stop_rest()
                return failed
            time.sleep(POLL_S)
        return self.first_failure()

    def stop_rest(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_S
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def signal_name(code: int) -> str | None:
    """The signal that ended a worker (Popen's code: minus its number), None for an exit."""
    try:
        return signal.Signals(-code).name if code < 0 else None
    except ValueError:
        return None


def run(argv: list[str] | None = None) -> int:
    fw_dir, rest = take_failures_dir(list(sys.argv[1:] if argv is None else argv))
    args, command = parse(rest)
    hosts = tuple(h for h in args.hosts.split(",") if h)
    places = node_placements(
        hosts, args.node_rank, args.per_node, args.master_addr, args.master_port
    )
    try:
        with serve_rendezvous(places[0]):
            workers = Workers(command, places)
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, workers.pass_on)
            failed = workers.wait()
    except OSError as e:
        print(f"horovod: {e}", file=sys.stderr, flush=True)
        return 1
    if workers.stop_signal is not None:  # quiet, as the torchrun wrapper: the launcher says it
        return 128 + workers.stop_signal
    if failed is None:
        return 0
    place, code = failed
    name = process_name(fw_dir.name if fw_dir else "worker", place.rank, place.world_size)
    killer = signal_name(code)
    if fw_dir is not None and killer is not None:
        write_killed(fw_dir, name, killer)  # a stop signal the worker recorded itself
    how = f"killed by {killer}" if killer else f"exit {code}"
    print(
        f"horovod: {name} on {hosts[args.node_rank]} ended ({how}); this node's other workers "
        "were stopped",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(run())
