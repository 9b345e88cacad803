"""Run conditions on every node of a job: which process samples each node, and how each node's
summary reaches rank 0.

    nodes = NodeConditions(fw_dir, run_dir, gpus, hosts, rank)   # hosts: every rank's host
    nodes.start(resume)             # the first rank on each host starts its node's sampler
    result.conditions = nodes.for_gather()   # each epoch, in the rows the ranks gather
    nodes.take(merged.conditions)   # rank 0 keeps each node's latest summary
    nodes.fields(stop=...)          # rank 0: summary.json's conditions, disturbed, reasons

**One sampler per node: the node's first rank.** The trainer gathers every rank's host name
once, when training begins (`hosts`, in rank order), and the sampler runs in the lowest rank
on each host. That holds for every way the processes start (torchrun's LOCAL_RANK, Horovod's
HOROVOD_LOCAL_RANK, TensorFlow's workers, which have no local rank at all), on one node or
several, and rank 0 is always its node's sampler.

**How the summaries travel: in the per-epoch gather, not through files.** Every epoch the
ranks already gather their STEP and profiler rows (trainer.session.EpochResult); each node's
sampler adds its node's summary (`summarize`'s fields and the host, about 1 KB), and rank 0
keeps the latest of each node. The run folder is on a shared file system under SLURM, but NFS
only promises that a file another node appends to is seen whole once that node has closed it
(close-to-open consistency): rank 0 reading the other nodes' spools while they sample could
read stale or cut rows, and a plain `--nodes N --hosts` launch need not share a folder at all.
The gather needs neither. Each node's sampler takes a reading as its summary leaves, so rank
0's summary holds the other nodes' conditions up to their last epoch's gather (the last
evaluation, while they wait, is in their spools only).

Each sampler still appends its rows to its node's spool in the framework folder, as taken:
`conditions.jsonl` for rank 0's node (as a run of one node has it), `conditions.<host>.jsonl`
for the others. A resumed run's samplers read their spools back; rank 0 also summarises the
spools of nodes an earlier attempt had and this one has not (a requeue onto other nodes), so
the run's summary covers every node it ran on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from denoisebench.measure.conditions import (
    CONDITIONS_FILE,
    INTERVAL_S,
    ConditionsSampler,
    read_rows,
)
from denoisebench.measure.conditions_verdict import nodes_fields, summarize


def first_on_host(hosts: list[str], rank: int) -> bool:
    """Whether `rank` is the lowest rank on its host (`hosts`: every rank's host, rank order)."""
    return hosts.index(hosts[rank]) == rank


def spool_name(host: str, main: bool) -> str:
    """The file a node's sampler appends to: CONDITIONS_FILE for rank 0's node, else one named
    by the host."""
    return CONDITIONS_FILE if main else f"conditions.{re.sub(r'[^A-Za-z0-9._-]', '_', host)}.jsonl"


def earlier_nodes(fw_dir: Path, hosts: list[str]) -> dict[str, dict[str, Any]]:
    """The summaries of the nodes whose spools an earlier attempt wrote and that are none of
    `hosts` (this attempt's), by host."""
    out = {}
    for spool in sorted(fw_dir.glob("conditions.*.jsonl")):
        rows = read_rows(spool)
        host = next((r["host"] for r in rows if r.get("host")), spool.name[11:-6])
        if rows and host not in hosts:
            gpu = any("gpus" in r for r in rows)
            out[host] = {"host": host, **summarize(rows, rows[-1]["cores"], INTERVAL_S, gpu=gpu)}
    return out


class NodeConditions:
    """One process's part in sampling the run's conditions on every node (the module's
    docstring says how): the sampler where this rank is its node's first, and on rank 0 the
    other nodes' latest summaries."""

    def __init__(
        self, fw_dir: Path, run_dir: Path, gpus: list[int], hosts: list[str], rank: int
    ) -> None:
        self.fw_dir, self.hosts, self.rank = fw_dir, hosts, rank
        self.host = hosts[rank]
        self.peers: dict[str, dict[str, Any]] = {}
        """Rank 0: each other node's latest summary, by host."""
        self.sampler = (
            ConditionsSampler(
                gpus,
                spool=fw_dir / spool_name(self.host, rank == 0),
                run=Path(run_dir).resolve(),
                host=self.host,
            )
            if first_on_host(hosts, rank)
            else None
        )

    def start(self, resume: bool) -> None:
        """Start this node's sampler, if this rank runs it. `resume`: keep its spool's rows and,
        on rank 0, the summaries of nodes only earlier attempts had."""
        if self.sampler:
            self.sampler.start(resume=resume)
        if self.rank == 0 and resume:
            self.peers |= earlier_nodes(self.fw_dir, self.hosts)

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()

    def for_gather(self) -> list[dict[str, Any]]:
        """What this process adds to the epoch's gathered rows: its node's summary where it
        samples a node other than rank 0's (rank 0 reads its own sampler directly)."""
        if self.rank == 0 or self.sampler is None or not self.sampler.started:
            return []
        self.sampler.sample()
        return [{"host": self.host, **self.sampler.summary()}]

    def take(self, nodes: list[dict[str, Any]]) -> None:
        """Rank 0: keep each other node's summary from an epoch's gathered rows."""
        self.peers |= {n["host"]: n for n in nodes if n["host"] != self.host}

    def fields(self, stop: bool = False) -> dict[str, Any]:
        """Rank 0: summary.json's `conditions`, `disturbed` and `disturbed_reasons` so far, every
        node's (conditions_verdict.nodes_fields); none before sampling started or elsewhere.
        `stop`: the sampling ends here, at the run's end."""
        if self.rank != 0 or self.sampler is None or not self.sampler.started:
            return {}
        if stop:
            self.sampler.stop()
        order = {h: i for i, h in enumerate(dict.fromkeys(self.hosts))}
        peers = sorted(
            self.peers.values(), key=lambda n: (order.get(n["host"], len(order)), n["host"])
        )
        return nodes_fields([{"host": self.host, **self.sampler.summary()}, *peers])
