"""Run conditions: what else the machine did while a run trained, and whether that disturbed it.

Two runs of one setup can differ 5x in throughput on a machine that other jobs load, and a
throughput figure alone does not say so. Rank 0's trainer process (trainer.session) samples,
every `INTERVAL_S` from its first epoch to its end, on a background thread:

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

"Ours" is every process of the run on this host: the process tree under the run's root, the
topmost ancestor of the sampling process (itself included) whose command line is one of the
run's programs (`python -m launch`, a `denoisebench.` module such as a trainer or the torchrun
and horovodrun wrappers, torchrun, horovodrun, submitit's task runner), with all its
descendants (psutil `children(recursive=True)`, re-read at every sample). It follows parent
links, not sessions or process groups: torchrun starts each rank in a new session. So the
launcher, torchrun, every DDP rank or TensorFlow worker it started and their helpers count as
ours; a shell, pytest, or another user's job does not. Under SLURM (SLURM_JOB_ID set), every
process in the job's cgroup on this host counts too: submitit starts one task per GPU, so the
DDP ranks of a node are siblings under slurmstepd, not descendants of rank 0. A process's CPU
time includes that of its children it has waited for, so a helper that starts and ends between
two samples is still counted (`OursCpu`). The run's processes inherit its affinity, so their
time is taken to be spent on its cores. Only rank 0 samples, and NVML only for the GPUs it
drives: the summary is rank 0's.

Every interval is one row, appended to `<framework>/conditions.jsonl` as it is taken; a resumed
run reads the rows of its earlier attempts back, so its summary covers every attempt (a window
never spans two). `summarize` turns the rows into summary.json's `conditions`, and
`disturbances` names each threshold below that the run crossed: such a run is `disturbed`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from denoisebench.measure.profiler import load_nvml

INTERVAL_S = 1.0
"""Seconds between samples: each reads a few /proc files and walks the process table
(milliseconds), so a sample a second costs the run nothing it could measure."""

WINDOW_S = 5.0
"""The worst window's length (other_cpu_share_max): long enough that one sample's tick rounding
washes out, short enough that a burst in one epoch still shows."""

OTHER_CPU_SHARE_MAX = 0.10
"""Mean share of the run's cores other processes may take: a 1-core busy loop beside a smoke run
on this 2-core machine took 34-37% (and cut its img/s 3-4x); a quiet machine, 0.4-1.5%."""

OTHER_CPU_WINDOW_MAX = 0.25
"""Share other processes may take in the worst WINDOW_S: catches a hog that ran for only part of
the run (the 1-core busy loop's windows: 34-38%); a quiet machine's stayed under 2%."""

STEAL_SHARE_MAX = 0.05
"""Share of the run's core time a hypervisor may steal: above 5% the virtual machine's host is
oversubscribed and the run's speed depends on its neighbours (this VM: 0-3% in quiet runs; 6% in
one run, 14% in its worst second, while the host was busy)."""

LOAD_PER_CORE_MAX = 3.0
"""1-minute load average per core of the run: the run's own threads make about 1; at 3 every
runnable thread waits for two others. Judged only where the run may use every core of the
machine: the load average counts the whole machine, not a cpuset's share of it."""

SM_CLOCK_RATIO_MIN = 0.75
"""Median SM clock of the busy samples, against the GPU's maximum: a busy GPU runs at or near
its boost clock (its power cap can take 10-15%); below 75% it is held back (heat, power brake,
a clock lock)."""

DISTURBING_CLOCK_EVENTS = frozenset(
    {"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown"}
)
"""Clock event reasons that mark a run disturbed in any sample: the GPU was slowed by heat or
its board, not by the run's own work. sw_power_cap is recorded but not judged: a heavy kernel
at the power limit is the GPU's normal ceiling, and the SM clock ratio says how far it fell."""

OTHER_GPU_PROCESSES_MAX = 0
"""Compute processes on the run's GPU that are not the run's: any one shares its SMs and memory
bandwidth."""

CLOCK_EVENT_NAMES = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
"""NVML's clocks event (throttle) reason bits, by name. GPU idle (0x1) and the applications
clocks setting (0x2) are left out: they say the GPU had nothing to do, or what a user set."""
GPU_IDLE = 0x1

ROOT_MODULES = ("launch", "denoisebench.", "submitit.", "torch.distributed.run")
"""`python -m` modules that are the run's programs: the launcher, and any module whose name
starts with one of the others (the trainers, the torchrun and horovodrun wrappers, submitit's
task runner, torchrun itself)."""
ROOT_PROGRAMS = ("torchrun", "horovodrun")
"""Executables that are the run's programs, run directly or through the interpreter."""

CONDITIONS_FILE = "conditions.jsonl"
"""Every sample of rank 0's run conditions, in the framework folder."""

CPU_FIELDS = ("load_avg_max", "other_cpu_share", "other_cpu_share_max", "steal_share")
GPU_FIELDS = (
    "sm_clock_ratio_min",
    "sm_clock_ratio_median",
    "throttle_reasons",
    "other_processes",
    "xid_events",
    "ecc_uncorrected",
)


# --- /proc, parsed from text: tested with synthetic files ---------------------------------


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


# --- the run's own CPU time ----------------------------------------------------------------


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


# --- the GPU, through NVML -------------------------------------------------------------------


def clock_event_names(bits: int) -> list[str]:
    """The named reasons in an NVML clocks event (throttle) bit mask, idle and applications
    clocks left out; an unknown bit as `bit_0x...`."""
    names = [name for bit, name in CLOCK_EVENT_NAMES.items() if bits & bit]
    known = GPU_IDLE | 0x2 | sum(CLOCK_EVENT_NAMES)
    names += [f"bit_{1 << i:#x}" for i in range(64) if bits & ~known & (1 << i)]
    return names


def _nvml_error(e: Exception) -> str:
    return f"NVML: {e}" if str(e) else f"NVML: {type(e).__name__}"


class GpuConditions:
    """The conditions NVML reports of the GPUs the sampling process drives (NVML indices).

    `reasons` holds, per summary field, why NVML gave no value (the first reason seen)."""

    def __init__(self, nvml: Any, indices: list[int]) -> None:
        self.nvml = nvml
        self.reasons: dict[str, str] = {}
        self.handles = {i: nvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        self.max_sm = {
            i: self._call(
                "sm_clock_ratio_min", nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM
            )
            for i, h in self.handles.items()
        }
        self._events_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if self._events_fn is None:
            self.reasons["throttle_reasons"] = "this pynvml has no clocks event reasons call"
        self.events = {i: self._xid_events(h) for i, h in self.handles.items()}
        self._ecc_last: dict[int, int | None] = {i: self._ecc(h) for i, h in self.handles.items()}

    def _call(self, field: str, fn: Any, *args: Any) -> Any:
        """One NVML call; None (and the reason, for `field`) when it fails."""
        try:
            return fn(*args)
        except Exception as e:  # NotSupported, NoPermission, a driver without the call
            self.reasons.setdefault(field, _nvml_error(e))
            return None

    def _xid_events(self, handle: Any) -> Any:
        """An event set for the device's XID critical errors, or None (the reason noted)."""
        n = self.nvml
        supported = self._call("xid_events", n.nvmlDeviceGetSupportedEventTypes, handle)
        if supported is None:
            return None
        if not supported & n.nvmlEventTypeXidCriticalError:
            self.reasons.setdefault("xid_events", "NVML: this GPU reports no XID events")
            return None
        events = self._call("xid_events", n.nvmlEventSetCreate)
        if events is None:
            return None
        try:
            n.nvmlDeviceRegisterEvents(handle, n.nvmlEventTypeXidCriticalError, events)
        except Exception as e:
            self.reasons.setdefault("xid_events", _nvml_error(e))
            self._call("xid_events", n.nvmlEventSetFree, events)
            return None
        return events

    def _ecc(self, handle: Any) -> int | None:
        """The device's volatile uncorrected ECC count (since the driver loaded)."""
        n = self.nvml
        return self._call(
            "ecc_uncorrected",
            n.nvmlDeviceGetTotalEccErrors,
            handle,
            n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            n.NVML_VOLATILE_ECC,
        )

    def _new_ecc(self, i: int) -> int | None:
        """Uncorrected ECC errors since the previous reading."""
        last, now = self._ecc_last[i], self._ecc(self.handles[i])
        self._ecc_last[i] = now if now is not None else last
        return now - last if now is not None and last is not None else None

    def _drain_xids(self, events: Any) -> list[int] | None:
        """The XID codes that arrived since the last read, without waiting."""
        codes: list[int] = []
        for _ in range(1000):
            try:
                data = self.nvml.nvmlEventSetWait(events, 0)
            except Exception as e:
                if getattr(e, "value", None) == getattr(self.nvml, "NVML_ERROR_TIMEOUT", 10):
                    return codes  # none waiting
                self.reasons.setdefault("xid_events", _nvml_error(e))
                return None
            if data.eventType & self.nvml.nvmlEventTypeXidCriticalError:
                codes.append(int(data.eventData))
        return codes

    def _others(self, handle: Any, ours: set[int]) -> int | None:
        """Compute processes on the device that are not ours. None when NVML cannot list them
        or lists PIDs this host does not know as ours: the sampling process drives the GPU, so
        its own PID must be among them (in a container NVML may give the host's PIDs)."""
        n = self.nvml
        fn = getattr(n, "nvmlDeviceGetComputeRunningProcesses", None)
        procs = self._call("other_processes", fn, handle) if fn else None
        if procs is None and hasattr(n, "nvmlDeviceGetComputeRunningProcesses_v2"):
            procs = self._call("other_processes", n.nvmlDeviceGetComputeRunningProcesses_v2, handle)
        if procs is None:
            return None
        pids = {int(p.pid) for p in procs}
        if os.getpid() not in pids:
            self.reasons.setdefault(
                "other_processes",
                f"NVML lists {len(pids)} process(es) on the GPU and not this one (pid "
                f"{os.getpid()}): its PIDs are not this host's (a container?), so others "
                "cannot be told from the run's",
            )
            return None
        return len(pids - ours)

    def sample(self, ours: set[int]) -> list[dict[str, Any]]:
        """One row per device: SM clock and its maximum, the clock event reasons, whether the GPU
        was idle, other processes, XID codes and uncorrected ECC errors since the last sample."""
        n, rows = self.nvml, []
        for i, h in self.handles.items():
            bits = self._call("throttle_reasons", self._events_fn, h) if self._events_fn else None
            events = self.events[i]
            rows.append(
                {
                    "index": i,
                    "sm_clock_mhz": self._call(
                        "sm_clock_ratio_min", n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM
                    ),
                    "sm_clock_max_mhz": self.max_sm[i],
                    "idle": bool(bits & GPU_IDLE) if bits is not None else None,
                    "clock_events": clock_event_names(bits) if bits is not None else None,
                    "other_processes": self._others(h, ours),
                    "xids": self._drain_xids(events) if events is not None else None,
                    "ecc_uncorrected_new": self._new_ecc(i),
                }
            )
        return rows

    def close(self) -> None:
        for events in self.events.values():
            if events is not None:
                self._call("xid_events", self.nvml.nvmlEventSetFree, events)
        self.events = dict.fromkeys(self.events)


# --- the sampler ---------------------------------------------------------------------------


class ConditionsSampler:
    """Rank 0's background thread: one row of run conditions every `interval_s`, from start()
    to stop(), appended to `spool` as taken.

    `gpus`: the NVML indices this process drives. `root`: the pid whose process tree is the
    run's (default: run_root of this process). `cpus`: the cores the run may use (default: this
    process's affinity). `proc`: where /proc is (tests)."""

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
    ) -> None:
        self.interval_s, self.spool_path, self.proc = interval_s, spool, proc
        self.cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        self.cores = len(self.cpus)
        self.machine_cores = os.cpu_count() or self.cores
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self.root = psutil.Process(root) if root is not None else run_root(psutil.Process())
        job = os.environ.get("SLURM_JOB_ID")
        self.job_cgroup = None
        if job and (proc / "self" / "cgroup").exists():
            self.job_cgroup = job_cgroup(job, (proc / "self" / "cgroup").read_text())
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
                    self.reasons["gpu"] = _nvml_error(e)
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
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the root ended: this process's own tree is what is left
            me = psutil.Process()
            procs = [me, *me.children(recursive=True)]
        if self.job_cgroup is not None:
            known = {p.pid for p in procs}
            for pid in cgroup_pids(self.job_cgroup) - known:
                try:
                    procs.append(psutil.Process(pid))
                except psutil.Error:
                    continue
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

    def fields(self) -> dict[str, Any]:
        """summary.json's `conditions`, `disturbed` and `disturbed_reasons`, over every row so
        far (the earlier attempts' included)."""
        with self._lock:
            rows = [*self.earlier, *self.rows]
            reasons = self.reasons | (self.gpu.reasons if self.gpu else {})
        return conditions_fields(
            summarize(rows, self.cores, self.interval_s, reasons, gpu=self.gpu is not None)
        )


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


# --- the summary and its judgement: pure ----------------------------------------------------


def worst_window_share(rows: list[dict[str, Any]], window_s: float = WINDOW_S) -> float | None:
    """Other processes' largest share of the run's cores over any `window_s` of consecutive
    rows of one attempt (all of an attempt shorter than that)."""
    worst = None
    parts: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("other_s") is not None:
            parts.setdefault(r.get("part"), []).append(r)
    for part in parts.values():
        for end in range(len(part)):
            other = capacity = span = 0.0
            for r in reversed(part[: end + 1]):
                other += r["other_s"]
                capacity += r["dt_s"] * r["cores"]
                span += r["dt_s"]
                if span >= window_s:
                    break
            if span < window_s and end < len(part) - 1:
                continue  # not a whole window yet; the attempt's last row closes a short one
            if capacity > 0:
                share = min(1.0, max(0.0, other / capacity))
                worst = share if worst is None else max(worst, share)
    return worst


def _gpu_summary(rows: list[dict[str, Any]], reasons: dict[str, str]) -> dict[str, Any]:
    """The GPU fields over every row's devices (rank 0's GPUs)."""
    devices = [d for r in rows for d in r.get("gpus") or []]
    ratios = [
        d["sm_clock_mhz"] / d["sm_clock_max_mhz"]
        for d in devices
        if d.get("sm_clock_mhz") and d.get("sm_clock_max_mhz") and d.get("idle") is False
    ]
    if not ratios and devices and "sm_clock_ratio_min" not in reasons:
        reasons["sm_clock_ratio_min"] = "the GPU was idle (or its clocks unread) in every sample"
    events = [d["clock_events"] for d in devices if d.get("clock_events") is not None]
    others = [
        sum(d["other_processes"] for d in r["gpus"])
        for r in rows
        if r.get("gpus") and all(d.get("other_processes") is not None for d in r["gpus"])
    ]
    xids = [d["xids"] for d in devices if d.get("xids") is not None]
    ecc = [d["ecc_uncorrected_new"] for d in devices if d.get("ecc_uncorrected_new") is not None]
    return {
        "sm_clock_ratio_min": float(min(ratios)) if ratios else None,
        "sm_clock_ratio_median": float(np.median(ratios)) if ratios else None,
        "throttle_reasons": sorted({name for e in events for name in e}) if events else None,
        "other_processes": max(others) if others else None,
        "xid_events": sum(len(x) for x in xids) if xids else None,
        "xid_codes": sorted({c for x in xids for c in x}) if xids else None,
        "ecc_uncorrected": sum(ecc) if ecc else None,
    }


def summarize(
    rows: list[dict[str, Any]],
    cores: int,
    interval_s: float,
    reasons: dict[str, str] | None = None,
    gpu: bool = False,
) -> dict[str, Any]:
    """summary.json's `conditions` from the sampler's rows (every attempt's). `reasons`: why
    the sampler could not read a field; `gpu`: whether it sampled GPUs through NVML."""
    why = dict(reasons or {})
    cpu = [r for r in rows if r.get("other_s") is not None and r["dt_s"] > 0]
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    capacity = sum(r["dt_s"] * r["cores"] for r in cpu)
    other = sum(r["other_s"] for r in cpu)
    steal = sum(r["steal_s"] for r in cpu)
    cores = rows[-1]["cores"] if rows else cores
    out: dict[str, Any] = {
        "samples": len(rows),
        "interval_s": interval_s,
        "cores": cores,
        "machine_cores": rows[-1].get("machine_cores", cores) if rows else cores,
        "load_avg_max": max(loads) if loads else None,
        "load_per_core_max": max(loads) / cores if loads else None,
        "other_cpu_share": min(1.0, max(0.0, other / capacity)) if capacity > 0 else None,
        "other_cpu_share_max": worst_window_share(cpu),
        "steal_share": min(1.0, max(0.0, steal / capacity)) if capacity > 0 else None,
        "gpu": None,
        "reasons": {},
    }
    if gpu:
        out["gpu"] = _gpu_summary(rows, why)
    none = "no samples: the run ended before its first epoch began" if not rows else None
    for field in CPU_FIELDS:
        if out[field] is None:
            key = "load_avg_max" if field == "load_avg_max" else "other_cpu_share"
            out["reasons"][field] = none or why.get(key) or "not measured"
    if out["load_avg_max"] is None:
        out["reasons"]["load_per_core_max"] = out["reasons"]["load_avg_max"]
    if out["gpu"] is None:
        out["reasons"]["gpu"] = why.get("gpu") or "the GPUs were not sampled"
        return out
    for field in GPU_FIELDS:
        if out["gpu"][field] is None:
            out["reasons"][field] = none or why.get(field) or "not measured"
    if out["gpu"]["sm_clock_ratio_min"] is None:
        out["reasons"]["sm_clock_ratio_median"] = out["reasons"]["sm_clock_ratio_min"]
    if out["gpu"]["xid_events"] is None:
        out["reasons"]["xid_codes"] = out["reasons"]["xid_events"]
    return out


def disturbances(c: dict[str, Any]) -> list[str]:
    """One sentence per threshold the run's conditions (`summarize`'s) crossed: the value
    measured and the threshold."""
    out, cores = [], c["cores"]
    of_cores = f"of the run's {cores} core{'' if cores == 1 else 's'}"
    if c["other_cpu_share"] is not None and c["other_cpu_share"] > OTHER_CPU_SHARE_MAX:
        out.append(
            f"other processes took {c['other_cpu_share']:.0%} {of_cores} "
            f"(threshold {OTHER_CPU_SHARE_MAX:.0%})"
        )
    if c["other_cpu_share_max"] is not None and c["other_cpu_share_max"] > OTHER_CPU_WINDOW_MAX:
        out.append(
            f"other processes took {c['other_cpu_share_max']:.0%} {of_cores} in its worst "
            f"{WINDOW_S:g} s (threshold {OTHER_CPU_WINDOW_MAX:.0%})"
        )
    if c["steal_share"] is not None and c["steal_share"] > STEAL_SHARE_MAX:
        out.append(
            f"the hypervisor stole {c['steal_share']:.0%} of the run's CPU time "
            f"(threshold {STEAL_SHARE_MAX:.0%})"
        )
    whole_machine = cores >= c.get("machine_cores", cores)
    load = c["load_per_core_max"]
    if whole_machine and load is not None and load > LOAD_PER_CORE_MAX:
        out.append(
            f"the 1-minute load average reached {c['load_avg_max']:.1f}, {load:.1f} per core "
            f"{of_cores} (threshold {LOAD_PER_CORE_MAX:g} per core)"
        )
    g = c["gpu"]
    if g is None:
        return out
    if g["sm_clock_ratio_median"] is not None and g["sm_clock_ratio_median"] < SM_CLOCK_RATIO_MIN:
        out.append(
            f"the GPU's median SM clock was {g['sm_clock_ratio_median']:.0%} of its maximum "
            f"while busy (threshold {SM_CLOCK_RATIO_MIN:.0%})"
        )
    slowed = sorted(set(g["throttle_reasons"] or []) & DISTURBING_CLOCK_EVENTS)
    if slowed:
        out.append(
            f"the GPU was slowed down ({', '.join(slowed)}) (threshold: none of "
            f"{', '.join(sorted(DISTURBING_CLOCK_EVENTS))})"
        )
    if g["other_processes"] is not None and g["other_processes"] > OTHER_GPU_PROCESSES_MAX:
        out.append(
            f"{g['other_processes']} other process(es) ran on the run's GPU "
            f"(threshold {OTHER_GPU_PROCESSES_MAX})"
        )
    if g["xid_events"]:
        codes = ", ".join(str(x) for x in g.get("xid_codes") or [])
        out.append(f"the GPU reported {g['xid_events']} XID error(s) ({codes}) (threshold 0)")
    if g["ecc_uncorrected"]:
        out.append(
            f"the GPU counted {g['ecc_uncorrected']} uncorrected ECC error(s) during the run "
            "(threshold 0)"
        )
    return out


def conditions_fields(conditions: dict[str, Any]) -> dict[str, Any]:
    """The summary fields: `conditions`, and whether (and why) the run was disturbed."""
    reasons = disturbances(conditions)
    return {"conditions": conditions, "disturbed": bool(reasons), "disturbed_reasons": reasons}
