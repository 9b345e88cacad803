"""Measurement shared by both trainers: GPU sampling on NVML, energy, host memory and CPU.

Framework-free. A trainer opens one `Profiler` per process (`maybe_profile(...)`), marks a
window around each epoch's training steps (`window_start` / `window_end`, with its device
synchronised by the caller), and gets back one row per device: energy, power, utilisation,
memory, temperature, clock. What could not be measured is None with the reason beside it,
never 0.

Energy of a window, per device, by the best method the GPU offers:
- `nvml_energy_counter`: the difference of nvmlDeviceGetTotalEnergyConsumption (mJ since the
  driver loaded; Volta and newer), modulo 2**64;
- `power_integration`: the trapezoid integral of the sampled power over the window, where the
  counter is missing (older or virtual GPUs read 0 or NotSupported).
Idle power is measured before training, so every figure is also given above idle, without
holding the run: `start_idle` (once the devices are ready) opens a window that the first
`window_start` (the first epoch's training) closes, and the idle power is the mean of the
power the sampler thread took meanwhile, over the window's last `profiler.idle_s` seconds at
most (`idle_window_s` in each device row says how long it was). NVML updates power every
10-100 ms and on recent GPUs reports a 1-second average: windows shorter than `min_window_s`
are flagged `energy_window_too_short`, and an idle window shorter than a second also averages
in part of the second before it (docs/measurements.md: its error).

CPU package energy comes from Linux RAPL (measure.rapl) where readable, otherwise it is missing
with the reason. Samples are appended to a spool file as they are taken, so a crash keeps every
sample already written.

Counted once across ranks: a GPU's energy counter, like a CPU package's, is the whole device's,
so two processes that read one device read the same joules. Each device row therefore carries
the host and the GPU's identity (`gpu_id`: NVML UUID, else PCI bus id), each host row its
reading per CPU package, and the epoch counts each (host, GPU) and (host, package) once
(core.epochs). The NVML index is not an identity across processes: a process confined to one
GPU (SLURM's device cgroup, a container) sees it as index 0.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from denoisebench.measure.gpus import as_str, gpu_identity, load_nvml, nvml_read
from denoisebench.measure.rapl import RAPL_ROOT, package_energy_j, rapl_domains, read_counters

COUNTER_WRAP = 2**64
"""nvmlDeviceGetTotalEnergyConsumption is an unsigned 64-bit count of millijoules."""


# --- pure arithmetic, tested exactly with known numbers -------------------------------------


def counter_energy_j(start_mj: int, end_mj: int, wrap: int = COUNTER_WRAP) -> float:
    """Joules between two readings of a millijoule counter that wraps at `wrap`."""
    return ((end_mj - start_mj) % wrap) / 1000.0


def integrate_power_j(times_s: list[float], power_w: list[float], t0: float, t1: float) -> float:
    """Trapezoid integral of sampled power over [t0, t1], interpolating at the window's edges.

    Outside the samples' span the nearest sample's power is held constant.
    """
    if t1 <= t0:
        return 0.0
    if not times_s:
        raise ValueError("no power samples to integrate")
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    inside = (t > t0) & (t < t1)
    grid = np.concatenate([[t0], t[inside], [t1]])
    values = np.interp(grid, t, p)  # holds the end values outside the sampled span
    return float(np.sum((grid[1:] - grid[:-1]) * (values[1:] + values[:-1]) / 2.0))


def above_idle_j(energy_j: float, idle_power_w: float | None, duration_s: float) -> float | None:
    """Energy above what the device would have drawn idling for the same time."""
    if idle_power_w is None:
        return None
    return energy_j - idle_power_w * duration_s


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- NVML ------------------------------------------------------------------------------------


@dataclass
class DeviceSamples:
    """Samples of one GPU, kept in memory and appended to the spool file as taken."""

    index: int
    name: str
    gpu_id: str | None
    """The GPU's identity across processes (gpu_identity); None where NVML gives none."""
    times_s: list[float] = field(default_factory=list)
    power_w: list[float | None] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class GpuSampler:
    """A background thread reading every listed GPU each `interval_s` seconds."""

    def __init__(
        self, nvml: Any, indices: list[int], interval_s: float, spool: Path | None, rank: int = 0
    ) -> None:
        self.nvml = nvml
        self.interval_s = interval_s
        self.rank = rank
        self.handles = {i: nvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        self.devices = {
            i: DeviceSamples(
                i, as_str(nvml_read(nvml.nvmlDeviceGetName, h)) or f"GPU {i}", gpu_identity(nvml, h)
            )
            for i, h in self.handles.items()
        }
        self.spool = open(spool, "a") if spool else None  # noqa: SIM115 (closed in stop)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self, at: float | None = None) -> None:
        """Read every device once (also called directly at window edges, stamped `at`)."""
        n = self.nvml
        now = time.perf_counter() if at is None else at
        for i, h in self.handles.items():
            power_mw = nvml_read(n.nvmlDeviceGetPowerUsage, h)
            util = nvml_read(n.nvmlDeviceGetUtilizationRates, h)
            mem = nvml_read(n.nvmlDeviceGetMemoryInfo, h)
            row = {
                "t_s": now,
                "wall": time.time(),
                "rank": self.rank,
                "device_index": i,
                "power_w": power_mw / 1000.0 if power_mw is not None else None,
                "util_pct": getattr(util, "gpu", None),
                "mem_used_gib": mem.used / 2**30 if mem is not None else None,
                "temp_c": nvml_read(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
                "sm_clock_mhz": nvml_read(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
            }
            with self._lock:
                d = self.devices[i]
                d.times_s.append(now)
                d.power_w.append(row["power_w"])
                d.rows.append(row)
                if self.spool:
                    self.spool.write(json.dumps(row) + "\n")

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.sample()
            if self.spool and time.monotonic() - last_flush > 1.0:
                self.spool.flush()
                last_flush = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.interval_s + 1)
        with self._lock:  # a late sample from a stuck NVML call must not write after close
            if self.spool:
                self.spool.flush()
                self.spool.close()
                self.spool = None

    def energy_mj(self, index: int) -> int | None:
        value = nvml_read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handles[index])
        return value if value else None  # 0 means "not supported" on older and virtual GPUs

    def window(self, index: int, t0: float, t1: float) -> dict[str, Any]:
        """Power, utilisation, memory, temperature and clock of one device over [t0, t1]."""
        with self._lock:
            rows = [r for r in self.devices[index].rows if t0 <= r["t_s"] <= t1]

        def stat(key: str, fn: Any) -> float | None:
            values = [r[key] for r in rows if r[key] is not None]
            return float(fn(values)) if values else None

        return {
            "samples": len(rows),
            "power_mean_w": stat("power_w", np.mean),
            "power_max_w": stat("power_w", np.max),
            "util_mean_pct": stat("util_pct", np.mean),
            "mem_used_max_gib": stat("mem_used_gib", np.max),
            "temp_max_c": stat("temp_c", np.max),
            "sm_clock_mean_mhz": stat("sm_clock_mhz", np.mean),
        }

    def power_series(self, index: int) -> tuple[list[float], list[float]]:
        with self._lock:
            d = self.devices[index]
            pairs = [(t, p) for t, p in zip(d.times_s, d.power_w, strict=True) if p is not None]
        return [t for t, _ in pairs], [p for _, p in pairs]


# --- host --------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of its waited-for children, GiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kib += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kib / 2**20


# --- the profiler a trainer uses ---------------------------------------------------------------


@dataclass
class WindowMark:
    t_s: float
    energy_mj: dict[int, int | None]
    rapl_uj: list[int]
    cpu_times: Any


class Profiler:
    """One per process. `devices` are the NVML indices this process drives."""

    def __init__(
        self,
        devices: list[int],
        interval_s: float = 0.1,
        spool: Path | None = None,
        rank: int = 0,
        nvml: Any | None = None,
        nvml_reason: str | None = None,
        rapl_root: Path = RAPL_ROOT,
        min_window_s: float = 5.0,
    ) -> None:
        self.rank = rank
        self.host = socket.gethostname()
        self.min_window_s = min_window_s
        if nvml is None and devices and nvml_reason is None:
            nvml, nvml_reason = load_nvml()
        self.gpu_reason = nvml_reason if devices else "no GPU: training on CPU"
        self.sampler = (
            GpuSampler(nvml, devices, interval_s, spool, rank)
            if nvml is not None and devices
            else None
        )
        self.idle_power_w: dict[int, float | None] = {}
        self.idle_reason: str | None = None
        self.idle_window_s: float | None = None
        """How long the idle power was averaged over (None: not measured)."""
        self._idle_from: tuple[float, float] | None = None
        self.rapl, self.rapl_reason = rapl_domains(rapl_root)
        self.process = psutil.Process()

    def start(self) -> None:
        if self.sampler:
            self.sampler.start()

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()

    def start_idle(self, seconds: float) -> None:
        """Open the idle-power window now (the devices ready, nothing running on them) and
        return at once: the first window_start closes it, and each device's idle power is its
        sampled power averaged over the window's last `seconds` (0: not measured)."""
        if not self.sampler:
            self.idle_reason = self.gpu_reason
            return
        if seconds <= 0:
            self.idle_reason = "idle power not measured (profile.idle_s = 0)"
            self.idle_power_w = dict.fromkeys(self.sampler.devices)
            return
        t0 = time.perf_counter()
        self.sampler.sample(at=t0)  # the window's first reading, whatever the sampler's phase
        self._idle_from = (t0, seconds)

    def _close_idle(self, t1: float) -> None:
        """End the idle window at `t1` (sampled there) and average each device's power in it."""
        if self._idle_from is None or self.sampler is None:
            return
        ready, seconds = self._idle_from
        self._idle_from = None
        t0 = max(ready, t1 - seconds)
        self.idle_window_s = t1 - t0
        for i in self.sampler.devices:
            times, power = self.sampler.power_series(i)
            self.idle_power_w[i] = (
                integrate_power_j(times, power, t0, t1) / (t1 - t0) if times and t1 > t0 else None
            )

    def window_start(self) -> WindowMark:
        """Call with the device synchronised: the window's energy starts here."""
        t_s = time.perf_counter()
        if self.sampler:
            self.sampler.sample(at=t_s)  # stamped inside the window, so it counts in it
            self._close_idle(t_s)  # the first window ends the idle one
        return WindowMark(
            t_s=t_s,
            energy_mj={i: self.sampler.energy_mj(i) for i in self.sampler.devices}
            if self.sampler
            else {},
            rapl_uj=read_counters(self.rapl),
            cpu_times=self.process.cpu_times(),
        )

    def window_end(self, mark: WindowMark) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(one row per GPU, the host's row) for the window since `mark`."""
        t1 = time.perf_counter()
        if self.sampler:
            self.sampler.sample(at=t1)
        duration = t1 - mark.t_s
        short = duration < self.min_window_s
        devices = []
        for i in self.sampler.devices if self.sampler else []:
            end_mj = self.sampler.energy_mj(i)
            start_mj = mark.energy_mj.get(i)
            if start_mj is not None and end_mj is not None:
                energy, method = counter_energy_j(start_mj, end_mj), "nvml_energy_counter"
            else:
                times, power = self.sampler.power_series(i)
                energy = integrate_power_j(times, power, mark.t_s, t1) if times else None
                method = "power_integration" if times else None
            idle = self.idle_power_w.get(i)
            devices.append(
                {
                    "rank": self.rank,
                    "host": self.host,
                    "device_index": i,
                    "gpu_id": self.sampler.devices[i].gpu_id,
                    "device_name": self.sampler.devices[i].name,
                    "window_s": duration,
                    "energy_j": energy,
                    "energy_method": method,
                    "energy_above_idle_j": above_idle_j(energy, idle, duration)
                    if energy is not None
                    else None,
                    "idle_power_w": idle,
                    "idle_window_s": self.idle_window_s,
                    "energy_window_too_short": short,
                    **self.sampler.window(i, mark.t_s, t1),
                }
            )
        cpu = self.process.cpu_times()
        busy = (cpu.user - mark.cpu_times.user) + (cpu.system - mark.cpu_times.system)
        host = {
            "rank": self.rank,
            "host": self.host,
            "window_s": duration,
            "cpu_util_pct": 100.0 * busy / duration / (os.cpu_count() or 1) if duration else None,
            "rss_peak_gib": peak_rss_gib(),
            "cpu_energy_j": None,
            "cpu_energy_reason": self.rapl_reason,
        }
        if self.rapl:  # the whole host's packages, as every process on it reads them
            packages = package_energy_j(self.rapl, mark.rapl_uj)
            host["cpu_energy_j"] = sum(packages.values())
            host["cpu_energy_packages_j"] = packages
            host["cpu_energy_reason"] = None
        if not self.sampler:
            host["gpu_reason"] = self.gpu_reason
        return devices, host


@contextmanager
def maybe_profile(enabled: bool, **kwargs: Any) -> Iterator[Profiler | None]:
    """A started Profiler, stopped (and its samples flushed) however the block ends."""
    if not enabled:
        yield None
        return
    profiler = Profiler(**kwargs)
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()
