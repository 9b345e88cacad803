"""Run conditions on the CPU side (measure.conditions says what is sampled and why): the load
average and the CPU ticks of /proc, the run's own processes (its process tree, the SLURM job's
cgroup, the processes that carry the run's marker or job id) and the CPU time they spent
between samples. Parsers take text, so tests feed them synthetic files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from denoisebench.core.records import RUN_ENV

PROC = Path(psutil.PROCFS_PATH)
JUDGED_TIMES = 3
"""Samples at which a process not found to be the run's is looked at again: one caught between
its fork and its exec still shows its parent's command line and environment."""

ROOT_MODULES = ("launch", "denoisebench.", "submitit.", "torch.distributed.run")
"""`python -m` modules that are the run's programs: the launcher, and any module whose name
starts with one of the others (the trainers, the torchrun and horovodrun wrappers, submitit's
task runner, torchrun itself)."""
ROOT_PROGRAMS = ("torchrun", "horovodrun")
"""Executables that are the run's programs, run directly or through the interpreter."""


def load_1m(text: str) -> float:
    """The 1-minute load average from /proc/loadavg's text."""
    return float(text.split()[0])


def cpu_ticks(text: str, cpus: Iterable[int]) -> tuple[int, int] | None:
    """(busy, steal) clock ticks since boot of `cpus`, from /proc/stat's per-CPU lines; busy is
    user + nice + system + irq + softirq (guest time is inside user). None when none of `cpus`
    is listed."""
    wanted, busy, steal, found = set(cpus), 0, 0, False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in wanted):
            continue
        v = [int(x) for x in rest.split()] + [0] * 8
        busy += v[0] + v[1] + v[2] + v[5] + v[6]
        steal += v[7]
        found = True
    return (busy, steal) if found else None


def is_run_program(cmdline: list[str]) -> bool:
    """Whether a command line is one of the run's programs (ROOT_MODULES run with `-m`,
    ROOT_PROGRAMS by name, directly or through the interpreter)."""
    for i, word in enumerate(cmdline[:-1]):
        if word == "-m":
            module = cmdline[i + 1]
            return module == ROOT_MODULES[0] or module.startswith(ROOT_MODULES[1:])
        if i and not word.startswith("-"):
            break  # a script: what follows are its arguments
    return any(Path(w).name in ROOT_PROGRAMS for w in cmdline[:2])


def run_root(process: psutil.Process) -> psutil.Process:
    """The topmost ancestor of `process` (itself included) whose command line is one of the
    run's programs; `process` itself when none is."""
    root = process
    for ancestor in process.parents():
        try:
            if is_run_program(ancestor.cmdline()):
                root = ancestor
        except psutil.Error:  # another user's process, or gone
            continue
    return root


def stat_fields(text: str) -> tuple[int, int]:
    """(parent pid, start time in clock ticks after boot) from a /proc/<pid>/stat text; the
    command name in parentheses may hold spaces and parentheses itself."""
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[19])


ProcTable = dict[int, tuple[int, int]]
"""pid -> (parent pid, start time): every process on the host at one moment."""


def process_table(proc: Path = PROC) -> ProcTable:
    """Every process on the host now, one read of its /proc/<pid>/stat each."""
    table: ProcTable = {}
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                with open(f"{proc}/{name}/stat", "rb") as f:
                    table[int(name)] = stat_fields(f.read().decode(errors="replace"))
            except (OSError, ValueError, IndexError):  # ended meanwhile
                continue
    return table


def descendants(seeds: Iterable[int], table: ProcTable) -> set[int]:
    """`seeds` that are in `table` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [pid for pid in seeds if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def is_job_process(
    cmdline: list[str],
    environ: Mapping[str, str],
    cwd: str | None,
    run: Path | None,
    job_id: str | None,
) -> bool:
    """Whether a process, wherever it sits in the process tree, works for the run in `run`
    (resolved) or SLURM job `job_id`: its environment names the run (RUN_ENV) or the job
    (SLURM_JOB_ID), or it is one of the run's programs (is_run_program) with the run folder
    among its arguments (relative ones read from its working directory `cwd`)."""
    marker = environ.get(RUN_ENV)
    if run is not None and marker and Path(marker).resolve() == run:
        return True
    if job_id and environ.get("SLURM_JOB_ID") == job_id:
        return True
    if run is None or not is_run_program(cmdline):
        return False
    for arg in cmdline[1:]:
        if arg.startswith("-") or not (os.path.isabs(arg) or cwd):
            continue
        if Path(cwd or "/", arg).resolve() == run:
            return True
    return False


def read_process(proc: Path, pid: int) -> tuple[list[str], dict[str, str], str | None]:
    """(command line, the environment it started with, working directory) of a process; what
    cannot be read (another user's environment) is empty."""
    base = proc / str(pid)
    try:
        cmdline = [w.decode(errors="replace") for w in (base / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        cmdline = []
    try:
        pairs = (base / "environ").read_bytes().split(b"\0")
        environ = dict(p.decode(errors="replace").partition("=")[::2] for p in pairs if p)
    except OSError:
        environ = {}
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
    return [w for w in cmdline if w], environ, cwd


class JobProcesses:
    """The run's processes on this host that its process tree does not hold: those that carry
    the run's marker or its SLURM job id, or name the run folder (is_job_process). On a
    cluster whose nodes share one /proc (network namespaces on one machine) these are the
    other nodes' ranks; under SLURM without cgroups, the tasks srun started beside rank 0.

    Each process is judged once by (pid, start time), a process not found to be the run's
    again at its next JUDGED_TIMES - 1 samples (it may not have exec'd yet)."""

    def __init__(self, run: Path | None, job_id: str | None, proc: Path = PROC) -> None:
        self.run = run.resolve() if run is not None else None
        self.job_id, self.proc = job_id, proc
        self.verdicts: dict[tuple[int, int], tuple[bool, int]] = {}

    def find(self, table: ProcTable) -> set[int]:
        """The pids in `table` that are the run's."""
        if self.run is None and not self.job_id:
            return set()
        verdicts = {}
        for pid, (_, start) in table.items():
            verdict, times = self.verdicts.get((pid, start), (False, 0))
            if not verdict and times < JUDGED_TIMES:
                verdict, times = (
                    is_job_process(*read_process(self.proc, pid), self.run, self.job_id),
                    times + 1,
                )
            verdicts[(pid, start)] = (verdict, times)
        self.verdicts = verdicts
        return {pid for (pid, _), (verdict, _) in verdicts.items() if verdict}


def job_cgroup(job_id: str, cgroup_text: str, mount: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The folder of SLURM job `job_id`'s cgroup on this host, from /proc/self/cgroup's text
    (cgroup v2, or a v1 hierarchy); None when this process is not inside one."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        names = path.split("/")
        if f"job_{job_id}" in names:
            rel = "/".join(names[: names.index(f"job_{job_id}") + 1]).lstrip("/")
            base = mount / controllers if controllers and (mount / controllers).is_dir() else mount
            if (base / rel).is_dir():
                return base / rel
    return None


def cgroup_pids(folder: Path) -> set[int]:
    """Every process in a cgroup and the cgroups below it."""
    pids: set[int] = set()
    for procs in folder.rglob("cgroup.procs"):
        try:
            pids |= {int(x) for x in procs.read_text().split()}
        except (OSError, ValueError):
            continue
    return pids


@dataclass(frozen=True)
class ProcCpu:
    """One process's CPU time at a sample, seconds."""

    ppid: int
    own_s: float
    """user + system."""
    reaped_s: float
    """children_user + children_system: its children it has waited for, each counted in full
    when it was reaped (their own reaped children included)."""


ProcKey = tuple[int, float]
"""(pid, create time): a pid the kernel reuses is another process."""


class OursCpu:
    """CPU time the run's processes spent between samples, from snapshots of them.

    A process seen at both samples adds what its own time grew. A new one adds all of its time
    (born since the last sample). One that is gone was reaped (or will be) by its parent: when
    the parent is ours its `reaped_s` grows by the child's whole lifetime, of which all but the
    last interval was counted already; that part is owed and subtracted from the parent's
    growth, so a helper that ran between two samples is counted once, and exactly."""

    def __init__(self) -> None:
        self.last: dict[ProcKey, ProcCpu] | None = None
        self.owed: dict[ProcKey, float] = {}

    def update(self, now: dict[ProcKey, ProcCpu], born_after: float | None = None) -> float:
        """Seconds of CPU the run's processes spent since the previous snapshot (0 the first).
        `born_after`: the previous snapshot's wall time less the create times' rounding (1 s);
        a process new to the run but started before it (a transient miss of the process table,
        a job's task found late) adds nothing this time instead of its whole past."""
        last, self.last = self.last, now
        if last is None:
            return 0.0
        by_pid = {key[0]: key for key in now}
        for key, gone in last.items():
            parent = by_pid.get(gone.ppid)
            if key not in now and parent in last:
                self.owed[parent] = self.owed.get(parent, 0.0) + gone.own_s + gone.reaped_s
        spent = 0.0
        for key, p in now.items():
            before = last.get(key)
            if before is None:
                if born_after is None or key[1] >= born_after:
                    spent += p.own_s + p.reaped_s
                continue
            grew, owed = p.reaped_s - before.reaped_s, self.owed.pop(key, 0.0)
            spent += p.own_s - before.own_s + max(0.0, grew - owed)
            if owed > grew:
                self.owed[key] = owed - grew
        self.owed = {k: v for k, v in self.owed.items() if k in now}
        return spent


def snapshot(processes: Iterable[psutil.Process]) -> dict[ProcKey, ProcCpu]:
    """Each process's CPU time now; one that ended meanwhile or cannot be read is left out."""
    out = {}
    for p in processes:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[(p.pid, p.create_time())] = ProcCpu(
                    p.ppid(), t.user + t.system, t.children_user + t.children_system
                )
        except psutil.Error:
            continue
    return out
