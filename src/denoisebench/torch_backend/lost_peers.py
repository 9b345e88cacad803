"""Which ranks were lost when a DDP collective failed: the check-in after a failure.

A collective that times out says only that it waited ("Timed out waiting 20000ms for recv"),
not for whom. So every rank that fails checks in at the job's rendezvous store on node 0 (the
TCPStore that torchrun's agent, or rank 0 under submitit, serves at MASTER_ADDR:MASTER_PORT).
A rank whose own error it is (not a collective's) checks in and goes; a rank whose collective
failed waits up to CHECK_IN_S for the others: a rank that never checks in could not reach node 0
(its node's link is down, or its processes were killed), and the failure names it and its
host. With a link cut between two nodes either side could be called lost: node 0's side holds
the store, so the ranks that cannot reach node 0 are the ones named, as a scheduler on node 0's
side would see it.

Only for DDP across processes (`strategy == "ddp"`); the hosts are gathered once at the start.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

CHECK_IN_S = 5.0
"""How long a failed rank waits for the other ranks to check in: ranks of one job fail within
about this of each other (the same collective's timeout, started at about the same time)."""
KEY = "denoisebench/failed/{rank}"


class LostPeers(RuntimeError):
    """A collective failed and some ranks never checked in afterwards: the message names them."""


def gather_hosts() -> list[str]:
    """Every rank's host name, in rank order (one collective, at the start of training)."""
    hosts: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    return hosts


def check_in(rank: int, hosts: list[str], wait_s: float) -> list[int]:
    """Check in at the rendezvous store, then wait up to `wait_s` (0: not at all) for the other
    ranks; the ranks that did not check in, or [] when the store cannot be reached (then node 0
    is what this rank lost, and node 0's own ranks name the lost ones)."""
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=CHECK_IN_S),
        )
        store.set(KEY.format(rank=rank), hosts[rank])
        deadline = time.monotonic() + wait_s
        missing = [r for r in range(len(hosts)) if r != rank]
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not store.check([KEY.format(rank=r)])]
            time.sleep(0.2)
        return missing if wait_s else []
    except (RuntimeError, KeyError, ValueError, OSError):  # no store: node 0 itself is gone
        return []


GLOO_FAILURES = (
    "gloo",  # most of gloo's errors name its source file: [.../third_party/gloo/gloo/...]
    "pair closure",  # "Application timeout caused pair closure": a pair its timeout closed
    "closed by peer",
    "reset by peer",
    "Timed out waiting",
)
"""What gloo's errors of a failed collective say. Which one a rank gets depends on timing: with
a node's link cut, the survivor's recv times out ("Timed out waiting ...ms for recv", naming
gloo's source), or the pair is closed by its own timeout first ("Application timeout caused
pair closure", naming nothing): seen on a busy machine, where that rank then did not wait for
the check-in and the failure did not name the lost node."""


def collective_failed(e: BaseException) -> bool:
    """Whether `e` is a failed collective (a peer gone, a timeout), not this rank's own error:
    torch raises DistError for NCCL and the store; gloo's errors come as RuntimeError with one
    of GLOO_FAILURES in their message."""
    return isinstance(e, dist.DistError) or any(text in str(e) for text in GLOO_FAILURES)


@contextlib.contextmanager
def naming_lost_peers(strategy: str, rank: int) -> Iterator[None]:
    """Raise a failed DDP run's error again as LostPeers naming the ranks that did not check
    in after it (with their hosts); other errors, stop signals and single-process runs pass."""
    if strategy != "ddp" or dist.get_world_size() == 1:
        yield
        return
    hosts = gather_hosts()
    try:
        yield
    except Exception as e:  # not a stop signal (trainer.session.Interrupted is a SystemExit)
        lost = check_in(rank, hosts, CHECK_IN_S if collective_failed(e) else 0.0)
        if not lost:
            raise
        names = ", ".join(f"rank {r} on {hosts[r]}" for r in lost)
        raise LostPeers(
            f"{type(e).__name__}: {e}; no word after it from {names} (lost: its node's link "
            f"down, or its processes killed)"
        ) from e
