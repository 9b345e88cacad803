"""Run conditions on the GPU side, through NVML (measure.conditions says what is sampled and
why): SM clock against its maximum, clocks event (throttle) reasons, other compute processes on
the device, XID critical errors and uncorrected ECC errors. What NVML does not expose is None
with its reason.
"""

from __future__ import annotations

import os
from typing import Any

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


def clock_event_names(bits: int) -> list[str]:
    """The named reasons in an NVML clocks event (throttle) bit mask, idle and applications
    clocks left out; an unknown bit as `bit_0x...`."""
    names = [name for bit, name in CLOCK_EVENT_NAMES.items() if bits & bit]
    known = GPU_IDLE | 0x2 | sum(CLOCK_EVENT_NAMES)
    names += [f"bit_{1 << i:#x}" for i in range(64) if bits & ~known & (1 << i)]
    return names


def nvml_error(e: Exception) -> str:
    """An NVML failure as a reason: its message, or its type when it has none."""
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
            self.reasons.setdefault(field, nvml_error(e))
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
            self.reasons.setdefault("xid_events", nvml_error(e))
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
                self.reasons.setdefault("xid_events", nvml_error(e))
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
