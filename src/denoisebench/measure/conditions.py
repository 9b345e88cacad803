"""Run conditions: what else the machine did while a run trained, and whether that disturbed it.

Two runs of one setup can differ 5x in throughput on a machine that other jobs load, and a
throughput figure alone does not say so. The first trainer process on each node
(conditions_nodes, started by trainer.session) samples, every `INTERVAL_S` from its first epoch
to its end, on a background thread:

- the 1-minute load average (/proc/loadavg), against the cores the run may use
  (`len(os.sched_getaffinity(0))`);
- CPU time on those cores (their `cpuN` lines of /proc/stat): busy (user, nice, system, irq,
  softirq) and steal (time a hypervisor gave to other machines);
- the CPU time of the run's own processes ("ours", below). Other processes' share of the run's
  cores is (busy - ours) / (wall time x cores);
- on a GPU (NVML): SM clock against its maximum (samples where the GPU is idle left out),
  clocks event (throttle) reasons, compute processes on the device that are not ours, XID
  critical errors (an NVML event set, read without waiting) and volatile uncorrected ECC errors.
  What NVML does not expose is null with its reason, never 0.

"Ours" is every process of the run this host's /proc shows, with all its descendants (the
process table, /proc/<pid>/stat, re-read at every sample):
- the process tree under the run's root, the topmost ancestor of the sampling process (itself
  included) whose command line is one of the run's programs (`python -m launch`, a
  `denoisebench.` module such as a trainer or the torchrun and horovodrun wrappers, torchrun,
  horovodrun, submitit's task runner). It follows parent links, not sessions or process groups:
  torchrun starts each rank in a new session;
- under SLURM (SLURM_JOB_ID set), every process in the job's cgroup on this host;
- wherever it sits in the process tree, a process that carries the run (conditions_cpu.
  JobProcesses): the environment it started with (/proc/<pid>/environ) names the run folder
  (records.RUN_ENV, which each trainer sets for what it starts) or the same SLURM job
  (SLURM_JOB_ID), or it is one of the run's programs with the run folder among its arguments
  (the trainers and their wrappers, however they were started). This is what tells the job's
  own processes from other load where the tree and the cgroup do not: on a cluster whose nodes
  are network namespaces of one machine (one PID namespace, one /proc), each node's sampler
  sees the other nodes' ranks, and under SLURM without cgroups (proctrack/linuxproc) the tasks
  srun started beside the sampler are its siblings, not its descendants.
So the launcher, torchrun, every DDP rank or TensorFlow worker and their helpers count as ours;
a shell, pytest, another job or another user's process does not. A process's CPU time includes
that of its children it has waited for, so a helper that starts and ends between two samples is
still counted (`OursCpu`). The run's processes inherit its affinity, so their time is taken to
be spent on its cores. Each node's sampler reads NVML only for the GPUs its own process drives.

Every interval is one row, appended to the node's spool (`<framework>/conditions.jsonl` on
rank 0's node) as it is taken; a resumed run reads the rows of its earlier attempts back, so its
summary covers every attempt (a window never spans two). `summarize` turns the rows into a
node's `conditions`, and `disturbances` names each threshold that the run crossed: such a run
is `disturbed`.

This module is the sampler; beside it, conditions_cpu.py reads /proc, the job's cgroup and the
run's own CPU time, conditions_gpu.py asks NVML, conditions_verdict.py holds the thresholds,
the summary and the verdict, and conditions_nodes.py runs one sampler per node and brings their
summaries to rank 0.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from denoisebench.measure.conditions_cpu import (
    JobProcesses,
    OursCpu,
    cgroup_pids,
    cpu_ticks,
    descendants,
    job_cgroup,
    load_1m,
    process_table,
    run_root,
    snapshot,
)
from denoisebench.measure.conditions_gpu import GpuConditions, nvml_error
from denoisebench.measure.conditions_verdict import conditions_fields, summarize
from denoisebench.measure.gpus import load_nvml

INTERVAL_S = 1.0
"""Seconds between samples: each reads a few /proc files and walks the process table
(milliseconds), so a sample a second costs the run nothing it could measure."""

CONDITIONS_FILE = "conditions.jsonl"
"""Every sample of rank 0's node's run conditions, in the framework folder (the other nodes'
are conditions.<host>.jsonl: conditions_nodes)."""


class ConditionsSampler:
    """A node's background thread (its first rank's: measure.conditions_nodes): one row of run
    conditions every `interval_s`, from start() to stop(), appended to `spool` as taken.

    `gpus`: the NVML indices this process drives. `root`: the pid whose process tree is the
    run's (default: run_root of this process). `run`: the run folder, whose marked processes
    are the run's wherever they sit (conditions_cpu.JobProcesses). `host`: the node's name, in
    each row. `cpus`: the cores the run may use (default: this process's affinity). `proc`:
    where /proc's loadavg and stat are (tests)."""

    def __init__(
        self,
        gpus: list[int],
        spool: Path | None = None,
        interval_s: float = INTERVAL_S,
        root: int | None = None,
        nvml: Any | None = None,
        nvml_reason: str | None = None,
        cpus: list[int] | None = None,
        proc: Path = Path("/proc"),
        run: Path | None = None,
        host: str | None = None,
    ) -> None:
        self.interval_s, self.spool_path, self.proc = interval_s, spool, proc
        self.host = host
        self.cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        self.cores = len(self.cpus)
        self.machine_cores = os.cpu_count() or self.cores
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self.root = psutil.Process(root) if root is not None else run_root(psutil.Process())
        job = os.environ.get("SLURM_JOB_ID")
        self.job = JobProcesses(run, job)
        self.job_cgroup = None
        if job and (proc / "self" / "cgroup").exists():
            self.job_cgroup = job_cgroup(job, (proc / "self" / "cgroup").read_text())
        self._known: dict[tuple[int, int], psutil.Process] = {}
        self.reasons: dict[str, str] = {}
        self.gpu: GpuConditions | None = None
        if not gpus:
            self.reasons["gpu"] = "no GPU: training on CPU"
        else:
            if nvml is None and nvml_reason is None:
                nvml, nvml_reason = load_nvml()
            if nvml is None:
                self.reasons["gpu"] = nvml_reason or "NVML unavailable"
            else:
                try:
                    self.gpu = GpuConditions(nvml, gpus)
                except Exception as e:  # a handle NVML refuses
                    self.reasons["gpu"] = nvml_error(e)
        self.rows: list[dict[str, Any]] = []
        self.earlier: list[dict[str, Any]] = []
        """Rows of the run's earlier attempts (a resumed run), read back from the spool."""
        self._ours = OursCpu()
        self._last: tuple[float, float, tuple[int, int] | None] | None = None
        """The previous reading: monotonic time, wall time, busy and steal ticks."""
        self._part = 0.0
        self._spool: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, resume: bool = False) -> None:
        """Take the first reading and start the thread. `resume`: keep the spool's rows (an
        earlier attempt's); otherwise the spool starts empty."""
        if self.spool_path is not None:
            if resume:
                self.earlier = read_rows(self.spool_path)
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            self._spool = open(self.spool_path, "a" if resume else "w")  # noqa: SIM115 (stop)
            if self._spool.tell() and not self.spool_path.read_bytes().endswith(b"\n"):
                self._spool.write("\n")  # after a line a crash cut short
        self._part = time.time()
        self._read()
        self._thread = threading.Thread(target=self._run, name="conditions", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def sample(self) -> None:
        """Take a reading now, between the thread's (the row of the interval since the last):
        a summary sent to rank 0 then covers the node up to this moment."""
        if self.started and not self._stop.is_set():
            self._read()

    def stop(self) -> None:
        """Take the last reading (the interval since the previous one) and stop; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 5)
            self._read()
        with self._lock:
            if self._spool:
                self._spool.close()
                self._spool = None
            if self.gpu:
                self.gpu.close()

    def ours(self) -> list[psutil.Process]:
        """The run's processes on this host now (the module's docstring says which)."""
        table = process_table()
        root = self.root.pid if self.root.is_running() else os.getpid()  # else: its own tree
        seeds = {root} | self.job.find(table)
        if self.job_cgroup is not None:
            seeds |= cgroup_pids(self.job_cgroup)
        procs, known = [], {}
        for pid in descendants(seeds, table):
            key = (pid, table[pid][1])
            try:
                known[key] = self._known.get(key) or psutil.Process(pid)
            except psutil.Error:  # ended meanwhile
                continue
            procs.append(known[key])
        self._known = known
        return procs

    def _read_host(self) -> tuple[float | None, tuple[int, int] | None]:
        try:
            load = load_1m((self.proc / "loadavg").read_text())
        except (OSError, ValueError, IndexError) as e:
            load = None
            self.reasons.setdefault("load_avg_max", f"cannot read {self.proc / 'loadavg'}: {e}")
        try:
            ticks = cpu_ticks((self.proc / "stat").read_text(), self.cpus)
            if ticks is None:
                self.reasons.setdefault(
                    "other_cpu_share", f"{self.proc / 'stat'} lists none of CPUs {self.cpus}"
                )
        except (OSError, ValueError) as e:
            ticks = None
            self.reasons.setdefault("other_cpu_share", f"cannot read {self.proc / 'stat'}: {e}")
        return load, ticks

    def _read(self) -> None:
        """One reading; from the second on, the row of the interval since the previous one."""
        with self._lock:  # the last reading (stop) must not interleave with the thread's
            t, wall = time.monotonic(), time.time()
            load, ticks = self._read_host()
            members = self.ours()
            born_after = self._last[1] - 1.0 if self._last else None
            ours_s = self._ours.update(snapshot(members), born_after)
            gpus = self.gpu.sample({p.pid for p in members}) if self.gpu else None
            last, self._last = self._last, (t, wall, ticks)
            if last is None:
                return
            both = ticks is not None and last[2] is not None
            row = {
                **({"host": self.host} if self.host else {}),
                "part": self._part,
                "time": wall,
                "dt_s": t - last[0],
                "cores": self.cores,
                "machine_cores": self.machine_cores,
                "load_1m": load,
                "busy_s": (ticks[0] - last[2][0]) * self.tick_s if both else None,
                "steal_s": (ticks[1] - last[2][1]) * self.tick_s if both else None,
                "ours_s": ours_s,
                "processes": len(members),
            }
            if row["busy_s"] is not None:
                row["other_s"] = row["busy_s"] - ours_s
            if gpus is not None:
                row["gpus"] = gpus
            self.rows.append(row)
            if self._spool:
                self._spool.write(json.dumps(row) + "\n")
                self._spool.flush()

    def summary(self) -> dict[str, Any]:
        """summary.json's `conditions` of this node, over every row so far (the earlier
        attempts' included)."""
        with self._lock:
            rows = [*self.earlier, *self.rows]
            reasons = self.reasons | (self.gpu.reasons if self.gpu else {})
        return summarize(rows, self.cores, self.interval_s, reasons, gpu=self.gpu is not None)

    def fields(self) -> dict[str, Any]:
        """summary.json's `conditions`, `disturbed` and `disturbed_reasons` of this node alone."""
        return conditions_fields(self.summary())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a conditions spool; a line cut short by a crash is skipped."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
