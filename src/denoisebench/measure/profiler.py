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
Idle power is measured before training, so every figure is also given above idle. NVML updates
power every 10-100 ms and on recent GPUs reports a 1-second average: windows shorter than
`min_window_s` are flagged `energy_window_too_short`.

CPU package energy comes from Linux RAPL (/sys/class/powercap) where readable, otherwise it is
missing with the reason. Samples are appended to a spool file as they are taken, so a crash
keeps every sample already written.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

COUNTER_WRAP = 2**64
"""nvmlDeviceGetTotalEnergyConsumption is an unsigned 64-bit count of millijoules."""

RAPL_ROOT = Path("/sys/class/powercap")


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


def rapl_energy_j(start_uj: int, end_uj: int, max_range_uj: int) -> float:
    """Joules between two readings of a RAPL energy_uj counter (wraps at max_energy_range_uj)."""
    return ((end_uj - start_uj) % (max_range_uj + 1)) / 1e6


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- NVML ------------------------------------------------------------------------------------


def load_nvml() -> tuple[Any | None, str | None]:
    """(the pynvml module, initialised) or (None, why not)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, None
    except Exception as e:  # no library, no driver, no device
        return None, f"NVML unavailable: {e}"


def _read(fn: Any, *args: Any) -> Any:
    """One NVML call; None where the GPU does not support it or the call fails."""
    try:
        return fn(*args)
    except Exception:
        return None


@dataclass
class DeviceSamples:
    """Samples of one GPU, kept in memory and appended to the spool file as taken."""

    index: int
    name: str
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
            i: DeviceSamples(i, _as_str(_read(nvml.nvmlDeviceGetName, h)) or f"GPU {i}")
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
            power_mw = _read(n.nvmlDeviceGetPowerUsage, h)
            util = _read(n.nvmlDeviceGetUtilizationRates, h)
            mem = _read(n.nvmlDeviceGetMemoryInfo, h)
            row = {
                "t_s": now,
                "wall": time.time(),
                "rank": self.rank,
                "device_index": i,
                "power_w": power_mw / 1000.0 if power_mw is not None else None,
                "util_pct": getattr(util, "gpu", None),
                "mem_used_gib": mem.used / 2**30 if mem is not None else None,
                "temp_c": _read(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
                "sm_clock_mhz": _read(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
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
        value = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handles[index])
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


def _as_str(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# --- host --------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of its waited-for children, GiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kib += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kib / 2**20


def rapl_domains(root: Path = RAPL_ROOT) -> tuple[list[Path], str | None]:
    """Readable top-level RAPL package domains, or why there are none."""
    if not root.exists():
        return [], f"no {root} (no RAPL on this machine or kernel)"
    domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not domains:
        return [], f"no package domains under {root}"
    try:
        for d in domains:
            int((d / "energy_uj").read_text())
            int((d / "max_energy_range_uj").read_text())
    except (OSError, ValueError) as e:
        return [], f"RAPL not readable: {e}"
    return domains, None


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
        self.rapl, self.rapl_reason = rapl_domains(rapl_root)
        self.process = psutil.Process()

    def start(self) -> None:
        if self.sampler:
            self.sampler.start()

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()

    def measure_idle(self, seconds: float) -> None:
        """Mean power of each device over `seconds` before training starts."""
        if not self.sampler:
            self.idle_reason = self.gpu_reason
            return
        if seconds <= 0:
            self.idle_reason = "idle power not measured (profile.idle_s = 0)"
            self.idle_power_w = dict.fromkeys(self.sampler.devices)
            return
        t0 = time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
        for i in self.sampler.devices:
            times, power = self.sampler.power_series(i)
            self.idle_power_w[i] = (
                integrate_power_j(times, power, t0, t1) / (t1 - t0) if times else None
            )

    def window_start(self) -> WindowMark:
        """Call with the device synchronised: the window's energy starts here."""
        t_s = time.perf_counter()
        if self.sampler:
            self.sampler.sample(at=t_s)  # stamped inside the window, so it counts in it
        return WindowMark(
            t_s=t_s,
            energy_mj={i: self.sampler.energy_mj(i) for i in self.sampler.devices}
            if self.sampler
            else {},
            rapl_uj=[int((d / "energy_uj").read_text()) for d in self.rapl],
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
                    "device_name": self.sampler.devices[i].name,
                    "window_s": duration,
                    "energy_j": energy,
                    "energy_method": method,
                    "energy_above_idle_j": above_idle_j(energy, idle, duration)
                    if energy is not None
                    else None,
                    "idle_power_w": idle,
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
        if self.rapl:
            end = [int((d / "energy_uj").read_text()) for d in self.rapl]
            ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.rapl]
            host["cpu_energy_j"] = sum(
                rapl_energy_j(a, b, r) for a, b, r in zip(mark.rapl_uj, end, ranges, strict=True)
            )
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


def nvml_indices(
    cuda_indices: list[int], env: Mapping[str, str] | None = None, nvml: Any | None = None
) -> list[int]:
    """NVML indices of the GPUs behind CUDA device ordinals, one per ordinal.

    CUDA numbers the devices a process sees from 0. CUDA_VISIBLE_DEVICES (read from `env`,
    default os.environ), when set, lists them in that order; each entry is an index, a GPU
    UUID (`GPU-<uuid>`, or a unique prefix of one, as CUDA accepts) or a MIG device
    (`MIG-<uuid>`; `MIG-GPU-<uuid>/<gi>/<ci>` on drivers before R470). An index entry is
    taken as the NVML index. A UUID entry is looked up in NVML (`nvml`, or pynvml loaded here
    when None); a MIG device maps to its parent GPU, since NVML reads power and energy for
    whole GPUs only (the figures then include whatever else runs on that GPU). Two MIG devices
    of one GPU give its index twice.

    Index entries, and ordinals without a mask, are CUDA's numbers. They are NVML's (PCI bus
    order) when CUDA_DEVICE_ORDER=PCI_BUS_ID (the launcher sets it) or when all the GPUs are
    one model. Otherwise (CUDA's default FASTEST_FIRST on a machine with GPUs of different
    models) the mapping returned is a guess and a warning naming CUDA_DEVICE_ORDER says so.

    Raises ValueError, naming CUDA_VISIBLE_DEVICES, for an ordinal past the end of the mask, an
    entry that is neither an index nor a UUID, or a UUID NVML cannot resolve (unknown, or a
    prefix of several GPUs' UUIDs): sampling some other GPU instead would record wrong figures.
    Where NVML cannot be loaded at all, a UUID entry maps to its CUDA ordinal: the profiler
    then has no NVML either and records the GPU figures as missing, with the reason.
    """
    env = os.environ if env is None else env
    if not cuda_indices:
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    entries: list[str | int] = []
    for i in cuda_indices:
        if not ids:
            entries.append(i)  # no mask: every GPU visible, in CUDA's order
        elif i >= len(ids):
            raise ValueError(
                f"CUDA device {i} is past the end of CUDA_VISIBLE_DEVICES={visible!r} "
                f"({len(ids)} entries)"
            )
        elif ids[i].isdigit():
            entries.append(int(ids[i]))
        elif ids[i].startswith(("GPU-", "MIG-")):
            entries.append(ids[i])
        else:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={visible!r}: entry {ids[i]!r} (CUDA device {i}) is neither "
                "an index nor a GPU-/MIG- UUID"
            )
    by_uuid = any(isinstance(e, str) for e in entries)
    check_order = (
        any(isinstance(e, int) for e in entries) and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
    )
    if nvml is None and (by_uuid or check_order):
        nvml, _ = load_nvml()
    if check_order and nvml is not None:
        _warn_if_mixed_models(nvml)
    out: list[int] = []
    for i, entry in zip(cuda_indices, entries, strict=True):
        if isinstance(entry, int):
            out.append(entry)
        elif nvml is None:
            out.append(i)
        else:
            try:
                out.append(_uuid_index(nvml, entry))
            except Exception as e:
                raise ValueError(
                    f"CUDA_VISIBLE_DEVICES={visible!r}: NVML cannot resolve {entry!r} "
                    f"(CUDA device {i}): {e}"
                ) from e
    return out


def _uuid_index(nvml: Any, entry: str) -> int:
    """NVML index of the GPU a CUDA_VISIBLE_DEVICES UUID entry names (for MIG, its parent)."""
    if entry.startswith("MIG-GPU-"):  # MIG-<GPU uuid>/<GPU instance>/<compute instance>
        return _gpu_uuid_index(nvml, entry.removeprefix("MIG-").split("/")[0])
    if entry.startswith("MIG-"):
        mig = nvml.nvmlDeviceGetHandleByUUID(entry)
        return nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig))
    return _gpu_uuid_index(nvml, entry)


def _gpu_uuid_index(nvml: Any, uuid: str) -> int:
    try:
        return nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid))
    except Exception:
        # nvmlDeviceGetHandleByUUID wants the whole UUID; CUDA also takes a unique prefix
        matches = [
            i
            for i in range(nvml.nvmlDeviceGetCount())
            if _as_str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))).startswith(uuid)
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LookupError(f"the UUIDs of GPUs {matches} all start with it") from None
        raise


def _warn_if_mixed_models(nvml: Any) -> None:
    """Warn where CUDA's default order (fastest first) may differ from NVML's (PCI bus)."""
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        names = sorted({_as_str(nvml.nvmlDeviceGetName(h)) for h in handles})
    except Exception:
        return  # the names cannot be read: neither can the profiler's samples
    if len(names) > 1:
        warnings.warn(
            f"GPUs of different models ({', '.join(names)}) and CUDA_DEVICE_ORDER is not "
            "PCI_BUS_ID: CUDA numbers them fastest first, NVML by PCI bus, so the GPU sampled "
            "for power and energy may not be the one trained on; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID (python -m launch does)",
            stacklevel=3,
        )
