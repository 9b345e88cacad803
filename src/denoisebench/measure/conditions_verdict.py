"""Whether a run was disturbed: the thresholds, summary.json's `conditions` from the sampler's
rows (measure.conditions), and one sentence per threshold a run crossed. Pure: rows in, fields
out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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

CPU_FIELDS = ("load_avg_max", "other_cpu_share", "other_cpu_share_max", "steal_share")
GPU_FIELDS = (
    "sm_clock_ratio_min",
    "sm_clock_ratio_median",
    "throttle_reasons",
    "other_processes",
    "xid_events",
    "ecc_uncorrected",
)


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
    """The GPU fields over every row's devices (the GPUs of the sampling process)."""
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


def nodes_fields(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary fields of a run whose nodes each sampled: `nodes` holds each node's
    conditions (`summarize`'s, with its `host`), rank 0's node first. `conditions` keeps rank
    0's node's figures at the top, as a run of one node has them, and every node's under
    `hosts`; the run is disturbed when any node was, and with several nodes each reason starts
    with the node's name."""
    reasons = [
        f"{node['host']}: {reason}" if len(nodes) > 1 else reason
        for node in nodes
        for reason in disturbances(node)
    ]
    first = {k: v for k, v in nodes[0].items() if k != "host"}
    return {
        "conditions": {**first, "hosts": nodes},
        "disturbed": bool(reasons),
        "disturbed_reasons": reasons,
    }
