"""The comparison report: every run folder given, gathered with pandas, written as report.md, a
self-contained report.html (plots embedded as PNG data URIs) and one CSV per table.

    python -m launch report                       # every run folder under results/
    python -m launch report results/exp1 results/sweep-x --target-psnr 27
    python -m denoisebench.report.build results/exp1 --out /tmp/report

A run folder is a folder with config.json and at least one <framework>/summary.json; folders
are searched recursively, so repeats (repeat-<k>/) and sweep elements are found. Runs are
grouped by (framework, engine, devices = summary world_size, per-device batch, setup), where
the setup is the config apart from the batch size: repeats of one config form one group, and
each figure is given as the median and [min, max] over the group's completed runs, none
dropped. A figure that was not measured stays missing with its reason, never 0.

Plain Python, pandas and matplotlib (Agg): no framework is imported.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from denoisebench.core.config import PSNR_TOLERANCE_DB
from denoisebench.core.epochs import step_stats
from denoisebench.core.records import (
    FRAMEWORKS,
    REPO_ROOT,
    atomic_write_text,
    read_json,
    read_jsonl,
    utc_now,
)
from denoisebench.measure.quality import image_quality
from denoisebench.report.baselines import FRAMEWORK_NAMES, METHODS, BaselineResult, run_baselines

GRID_ROWS = 6
"""Test images in the picture grid (the first of the baseline sample)."""
DEFAULT_TARGET_GAIN_DB = 3.0
"""Without an explicit target, time-to-target aims at the noisy input's PSNR plus this."""
DISPATCH_REASON = (
    "TensorFlow on a GPU waits for the device once an epoch: its single steps are host "
    "dispatch intervals, not device times (the epoch's throughput is exact)"
)
GROUP_KEYS = ["framework", "engine", "devices", "batch_per_device", "setup"]
# One colour per framework in every plot, so a reader matches them across figures.
COLORS = {"torch": "C0", "tf": "C1"}
# Folders that never hold a run folder: skipped while searching, so a big tree stays quick.
_PRUNE = {"checkpoints", "slurm-logs", "report", "__pycache__", *FRAMEWORKS}


class ReportError(RuntimeError):
    """Nothing to report on (no run folder where the user pointed)."""


# --------------------------------------------------------------------------- finding runs


def _is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / fw / "summary.json").is_file() for fw in FRAMEWORKS
    )


# What a run folder's report reads, per framework, beside config.json and summary.json.
_RECORD_FILES = ("epochs.jsonl", "steps.jsonl", "devices.jsonl", "hosts.jsonl", "environment.json")


def damage(folder: Path) -> str | None:
    """Why `folder` cannot be reported on, naming the file and its parse error; None if every
    file the report reads parses (a run cut off mid-write, a disk that filled up)."""
    files = [folder / "config.json"]
    for framework in FRAMEWORKS:
        fw_dir = folder / framework
        if (fw_dir / "summary.json").is_file():
            files += [fw_dir / "summary.json", *(fw_dir / name for name in _RECORD_FILES)]
    for path in files:
        try:
            if path.suffix == ".jsonl":
                read_jsonl(path)
            elif path.is_file() or path.name != "environment.json":
                read_json(path)
        except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeError too
            return f"{path}: {type(e).__name__}: {e}"
    return None


def find_run_folders(paths: Iterable[Path]) -> list[Path]:
    """Every run folder at or below `paths`, sorted and without duplicates."""
    found: set[Path] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ReportError(f"{root}: no such folder")
        if _is_run_folder(root):
            found.add(root.resolve())
            continue
        for current, dirnames, _files in os.walk(root):
            here = Path(current)
            if _is_run_folder(here):
                found.add(here.resolve())
                dirnames.clear()  # a run folder holds no further run folders
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE)
    return sorted(found)


# --------------------------------------------------------------------------- one run's figures


def _setup_id(config: dict[str, Any]) -> str:
    """The config without the per-device batch (its own key), hashed: repeats share it.
    Named by its profile and its speed mode where it has one (faithful and tuned runs of one
    profile are different setups)."""
    rest = json.loads(json.dumps(config))
    rest.get("train", {}).pop("batch_size", None)
    digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]
    mode = f"{config['mode']}:" if config.get("mode") else ""
    return f"{config.get('profile', '?')}:{mode}{digest}"


def _base_setup_id(config: dict[str, Any]) -> str:
    """The setup without its speed settings ([runtime] and the mode): the faithful and tuned
    runs of one experiment share it."""
    rest = json.loads(json.dumps(config))
    rest.get("train", {}).pop("batch_size", None)
    rest.pop("runtime", None)
    rest.pop("mode", None)
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]


def _data_id(config: dict[str, Any]) -> str:
    """What decides the test images and their noise: runs sharing it share test_samples.npz."""
    part = {k: config.get(k) for k in ("data", "noise")}
    part["image_size"] = config.get("model", {}).get("image_size")
    return hashlib.sha1(json.dumps(part, sort_keys=True).encode()).hexdigest()[:6]


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _first(rows: Iterable[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key)), None)


def time_to_target(epochs: list[dict[str, Any]], target_db: float) -> dict[str, Any]:
    """Training time (and GPU energy) summed over epochs up to the first one whose test PSNR
    reaches `target_db`; missing with the reason if it never does or energy was not measured.

    Train time only (epochs.jsonl train_time_s): evaluation is the same work for both
    frameworks and would blur the comparison.
    """
    time_s, energy_j, energy_reason = 0.0, 0.0, None
    ordered = sorted(epochs, key=lambda r: r["epoch"])
    for rec in ordered:
        time_s += rec["train_time_s"]
        if rec.get("gpu_energy_j") is None:
            energy_reason = (
                energy_reason or rec.get("gpu_energy_reason") or "GPU energy not measured"
            )
        else:
            energy_j += rec["gpu_energy_j"]
        if rec.get("test_psnr_db") is not None and rec["test_psnr_db"] >= target_db:
            return {
                "epochs_to_target": rec["epoch"] + 1,
                "time_to_target_s": time_s,
                "energy_to_target_j": None if energy_reason else energy_j,
                "target_reason": None,
                "energy_target_reason": energy_reason,
            }
    best = max(
        (r["test_psnr_db"] for r in ordered if r.get("test_psnr_db") is not None), default=None
    )
    reason = f"target {target_db:.2f} dB never reached in {len(ordered)} epochs" + (
        f" (best {best:.2f} dB)" if best is not None else ""
    )
    return {
        "epochs_to_target": None,
        "time_to_target_s": None,
        "energy_to_target_j": None,
        "target_reason": reason,
        "energy_target_reason": reason,
    }


def _is_gpu(summary: dict[str, Any], devices: list[dict[str, Any]]) -> bool:
    device = str(summary.get("device") or "").lower()
    return bool(devices) or "cuda" in device or "gpu" in device


def run_record(
    folder: Path, framework: str, label: str, target_psnr_db: float | None, gain_db: float
) -> dict[str, Any]:
    """One row of the runs table: every figure of one framework's run, read from its records."""
    fw_dir = folder / framework
    config = read_json(folder / "config.json")
    summary = read_json(fw_dir / "summary.json")
    epochs = read_jsonl(fw_dir / "epochs.jsonl")
    steps = read_jsonl(fw_dir / "steps.jsonl")
    devices = read_jsonl(fw_dir / "devices.jsonl")
    hosts = read_jsonl(fw_dir / "hosts.jsonl")
    final = summary.get("final") or (epochs[-1] if epochs else {})
    world = summary.get("world_size") or 1
    warmup = config.get("profiler", {}).get("warmup_steps", 0)
    # Run-level step statistics over every epoch's steady steps, the same arithmetic as the
    # trainers' per-epoch figures (core.epochs.step_stats), not a median of per-epoch medians.
    stats = step_stats(steps, warmup) if steps else {"steady_reason": "no steps.jsonl rows"}
    tput = summary.get("throughput_steady_img_s")
    dispatch = summary.get("step_clock") == "host_dispatch"
    mfu_values = [e["mfu"] for e in epochs if e.get("mfu") is not None]
    gpu_reason = _first(hosts, "gpu_reason")
    mem_reason = None
    if summary.get("gpu_mem_alloc_peak_gib") is None:
        mem_reason = gpu_reason or (
            "the framework reported no allocator peak" if devices else "not recorded"
        )
    images = sum((e.get("throughput_img_s") or 0.0) * e["train_time_s"] for e in epochs)
    cpu_energy = [e.get("cpu_energy_j") for e in epochs]
    cpu_ok = bool(epochs) and all(v is not None for v in cpu_energy)
    noisy_psnr = final.get("noisy_psnr_db")
    target = target_psnr_db
    if target is None and noisy_psnr is not None:
        target = noisy_psnr + gain_db
    to_target = (
        time_to_target(epochs, target)
        if target is not None and epochs
        else {"target_reason": "no epoch records", "energy_target_reason": "no epoch records"}
    )
    mem_used = [e["gpu_mem_used_peak_gib"] for e in epochs if e.get("gpu_mem_used_peak_gib")]
    status = summary.get("status")
    return {
        "run": label,
        "folder": str(folder),
        "framework": framework,
        "engine": summary.get("engine") or "native",
        "devices": int(world),
        "batch_per_device": int(config.get("train", {}).get("batch_size", 0)),
        "setup": _setup_id(config),
        "base_setup": _base_setup_id(config),
        # faithful / tuned / custom, as the trainer recorded it (config.speed_label)
        "speed_mode": (summary.get("runtime") or {}).get("mode") or config.get("mode") or None,
        "data_setup": _data_id(config),
        "device_kind": "GPU" if _is_gpu(summary, devices) else "CPU",
        "device": summary.get("device"),
        "strategy": summary.get("strategy"),
        "status": status,
        "error": summary.get("error") or summary.get("failed_process"),
        "epochs_completed": summary.get("epochs_completed", len(epochs)),
        "data": summary.get("data"),
        "throughput_steady_img_s": tput,
        "throughput_per_device_img_s": tput / world if tput is not None else None,
        "throughput_reason": None if tput is not None else stats.get("steady_reason"),
        # single steps are device times only where the trainer waited for each one
        "step_time_p50_s": None if dispatch else stats.get("step_time_p50_s"),
        "step_time_p95_s": None if dispatch else stats.get("step_time_p95_s"),
        "step_time_reason": DISPATCH_REASON if dispatch else stats.get("steady_reason"),
        "data_wait_fraction": stats.get("data_wait_fraction"),
        "steady_reason": stats.get("steady_reason"),
        "mfu": _median(mfu_values),
        "mfu_reason": None if mfu_values else (final.get("mfu_reason") or "not recorded"),
        "gpu_mem_alloc_peak_gib": summary.get("gpu_mem_alloc_peak_gib"),
        "gpu_mem_used_peak_gib": max(mem_used) if mem_used else None,
        "gpu_mem_reason": mem_reason,
        "host_rss_peak_gib": summary.get("host_rss_peak_gib"),
        "host_rss_reason": None if summary.get("host_rss_peak_gib") else "not recorded",
        "gpu_energy_per_image_j": summary.get("gpu_energy_per_image_j"),
        "gpu_energy_per_epoch_j": summary.get("gpu_energy_per_epoch_j"),
        "gpu_energy_method": summary.get("gpu_energy_method"),
        "gpu_energy_reason": summary.get("gpu_energy_reason")
        or (None if summary.get("gpu_energy_j") is not None else "not recorded"),
        "energy_window_too_short": any(e.get("energy_window_too_short") for e in epochs),
        "cpu_energy_per_image_j": (sum(cpu_energy) / images) if cpu_ok and images else None,
        "cpu_energy_reason": None
        if cpu_ok
        else (_first(epochs, "cpu_energy_reason") or "not recorded"),
        "epoch_time_s": _median([e["train_time_s"] for e in epochs]),
        "target_psnr_db": target,
        "epochs_to_target": to_target.get("epochs_to_target"),
        "time_to_target_s": to_target.get("time_to_target_s"),
        "energy_to_target_j": to_target.get("energy_to_target_j"),
        "target_reason": to_target.get("target_reason"),
        "energy_target_reason": to_target.get("energy_target_reason"),
        "test_mae": final.get("test_mae"),
        "test_psnr_db": final.get("test_psnr_db"),
        "test_ssim": final.get("test_ssim"),
        "noisy_psnr_db": noisy_psnr,
        "quality_reason": None if final else "no finished epoch",
        "wall_time_s": summary.get("wall_time_s"),
    }


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class Metric:
    """A figure of the group tables: its runs-table column, label, display and missing reason."""

    key: str
    label: str
    reason: str | None = None
    scale: float = 1.0
    digits: int | None = None  # None: about three significant figures


METRICS = [
    Metric("throughput_steady_img_s", "throughput img/s", "throughput_reason"),
    Metric("throughput_per_device_img_s", "per device img/s", "throughput_reason"),
    Metric("step_time_p50_s", "step p50 ms", "step_time_reason", 1000.0),
    Metric("step_time_p95_s", "step p95 ms", "step_time_reason", 1000.0),
    Metric("data_wait_fraction", "data wait %", "steady_reason", 100.0, 2),
    Metric("mfu", "MFU %", "mfu_reason", 100.0, 2),
    Metric("gpu_mem_alloc_peak_gib", "GPU mem peak GiB (allocator)", "gpu_mem_reason", digits=3),
    Metric("gpu_mem_used_peak_gib", "GPU mem peak GiB (NVML)", "gpu_mem_reason", digits=3),
    Metric("host_rss_peak_gib", "host RSS peak GiB", "host_rss_reason", digits=3),
    Metric("gpu_energy_per_image_j", "GPU J/img", "gpu_energy_reason"),
    Metric("gpu_energy_per_epoch_j", "GPU J/epoch", "gpu_energy_reason"),
    Metric("cpu_energy_per_image_j", "CPU J/img (RAPL)", "cpu_energy_reason"),
    Metric("epoch_time_s", "epoch train s", None),
    Metric("target_psnr_db", "target PSNR dB", "target_reason", digits=2),
    Metric("epochs_to_target", "epochs to target", "target_reason", digits=0),
    Metric("time_to_target_s", "time to target s", "target_reason"),
    Metric("energy_to_target_j", "GPU J to target", "energy_target_reason"),
    Metric("test_mae", "test MAE", "quality_reason", digits=4),
    Metric("test_psnr_db", "PSNR dB", "quality_reason", digits=2),
    Metric("test_ssim", "SSIM", "quality_reason", digits=3),
    Metric("noisy_psnr_db", "noisy PSNR dB", "quality_reason", digits=2),
]
METRIC = {m.key: m for m in METRICS}


def runs_frame(
    run_dirs: Sequence[Path],
    target_psnr_db: float | None = None,
    gain_db: float = DEFAULT_TARGET_GAIN_DB,
) -> pd.DataFrame:
    """One row per (run folder, framework), labelled relative to the folders' common parent."""
    run_dirs = [Path(p) for p in run_dirs]
    base = Path(os.path.commonpath(run_dirs)) if run_dirs else Path()
    rows = []
    for folder in run_dirs:
        label = folder.name if folder == base else str(folder.relative_to(base))
        for framework in FRAMEWORKS:
            if (folder / framework / "summary.json").is_file():
                rows.append(run_record(folder, framework, label, target_psnr_db, gain_db))
    frame = pd.DataFrame(rows)
    numeric = [m.key for m in METRICS] + ["wall_time_s", "epochs_completed"]
    if not frame.empty:
        frame[numeric] = frame[numeric].apply(pd.to_numeric)  # None (not measured) -> NaN
    return frame


def group_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max of every metric over each group's completed runs, with counts.

    Columns per metric: <key>_median, <key>_min, <key>_max, <key>_n (runs with a value) and
    <key>_reason (why it is missing, from the records, when no run has it).
    """
    rows = []
    for key, group in runs.groupby(GROUP_KEYS, sort=True):
        done = group[group["status"] == "completed"]
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key, strict=True))
        row["device_kind"] = group["device_kind"].iloc[0]
        row["base_setup"] = group["base_setup"].iloc[0]
        row["speed_mode"] = group["speed_mode"].iloc[0]
        row["repeats"] = len(done)
        row["runs"] = len(group)
        row["energy_method"] = ",".join(sorted(set(done["gpu_energy_method"].dropna()))) or None
        row["energy_window_too_short"] = bool(done["energy_window_too_short"].any())
        for m in METRICS:
            values = done[m.key].dropna()
            row[f"{m.key}_median"] = float(values.median()) if len(values) else None
            row[f"{m.key}_min"] = float(values.min()) if len(values) else None
            row[f"{m.key}_max"] = float(values.max()) if len(values) else None
            row[f"{m.key}_n"] = len(values)
            reason = None
            if done.empty:
                errors = "; ".join(str(e) for e in group["error"].dropna().unique())
                reason = "no completed run" + (f" ({errors})" if errors else "")
            elif len(values) < len(done) and m.reason:
                reasons = done.loc[done[m.key].isna(), m.reason].dropna()
                reason = str(reasons.iloc[0]) if len(reasons) else "not recorded"
            elif len(values) < len(done):
                reason = "not recorded"
            row[f"{m.key}_reason"] = reason
        rows.append(row)
    groups = pd.DataFrame(rows)
    if not groups.empty:
        order = {fw: i for i, fw in enumerate(FRAMEWORKS)}  # PyTorch first, as everywhere
        groups = groups.sort_values(
            ["setup", "batch_per_device", "framework", "engine", "devices"],
            key=lambda c: c.map(order) if c.name == "framework" else c,
            ignore_index=True,
        )
        groups = add_scaling_efficiency(groups)
    return groups


def add_scaling_efficiency(groups: pd.DataFrame) -> pd.DataFrame:
    """throughput(N) / (N x throughput(1)), against the 1-device group of the same framework,
    engine, per-device batch and setup (so the same data); missing with a reason otherwise."""
    groups = groups.copy()
    # (median, min, max, reason) per group
    effs: list[tuple[float | None, float | None, float | None, str | None]] = []
    for _, g in groups.iterrows():
        same = (
            (groups["framework"] == g["framework"])
            & (groups["engine"] == g["engine"])
            & (groups["batch_per_device"] == g["batch_per_device"])
            & (groups["setup"] == g["setup"])
            & (groups["devices"] == 1)
        )
        base = groups[same]
        n = int(g["devices"])
        if base.empty:
            name = FRAMEWORK_NAMES.get(g["framework"], g["framework"])
            effs.append(
                (
                    None,
                    None,
                    None,
                    f"no 1-device {name} run with the same per-device batch "
                    f"({g['batch_per_device']}) and setup ({g['setup']})",
                )
            )
            continue
        b = base.iloc[0]
        t_n, t_1 = g["throughput_steady_img_s_median"], b["throughput_steady_img_s_median"]
        if _missing(t_n) or _missing(t_1):
            why = g["throughput_steady_img_s_reason"] or b["throughput_steady_img_s_reason"]
            effs.append((None, None, None, f"throughput missing: {why}"))
            continue
        eff = t_n / (n * t_1)
        if n == 1:  # the reference itself: 1 by definition, no range
            effs.append((eff, eff, eff, None))
            continue
        # The widest range the repeats allow: slowest N-device run over fastest 1-device run,
        # and the reverse.
        lo = g["throughput_steady_img_s_min"] / (n * b["throughput_steady_img_s_max"])
        hi = g["throughput_steady_img_s_max"] / (n * b["throughput_steady_img_s_min"])
        effs.append((eff, lo, hi, None))
    for i, suffix in enumerate(("median", "min", "max", "reason")):
        groups[f"scaling_efficiency_{suffix}"] = [e[i] for e in effs]
    groups["scaling_efficiency_n"] = [0 if e[0] is None else 1 for e in effs]
    return groups


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Stat:
    """One group's figure for a verdict: median, [min, max] over `n` repeats, or a reason."""

    name: str
    median: float | None
    min: float | None
    max: float | None
    n: int
    reason: str | None = None


# metric -> (words, unit, higher is better, how the difference is put)
VERDICT_METRICS = {
    "throughput_steady_img_s": ("throughput", "img/s", True, "ratio"),
    "gpu_energy_per_image_j": ("GPU energy per image", "J/img", False, "percent"),
    "test_psnr_db": ("final test PSNR", "dB", True, "difference"),
}


def _fmt_plain(v: float, unit: str) -> str:
    if unit == "dB":
        return f"{v:.2f}"
    return _sig(v)


def verdict(metric: str, a: Stat, b: Stat, where: str) -> str:
    """One sentence comparing two groups on `metric` at one device count (`where`).

    A winner is named only when the [min, max] intervals over repeats do not overlap and each
    side has at least two repeats; otherwise the difference is called within noise.
    """
    words, unit, higher_better, kind = VERDICT_METRICS[metric]
    head = f"{words[0].upper()}{words[1:]} {where}"
    for s in (a, b):
        if s.median is None:
            return f"{head}: missing for {s.name} ({s.reason or 'not recorded'}); no comparison."
    values = f"{a.name} {_range_text(a, unit)} vs {b.name} {_range_text(b, unit)}"
    if a.n < 2 or b.n < 2:
        return (
            f"{head}: {values}: within noise / not enough repeats ({a.n} and {b.n} run(s)); "
            "a single run cannot separate the difference from run-to-run noise "
            "(use --repeats 3 or more)."
        )
    if a.min == a.max and b.min == b.max:
        # Repeats share the config's seed; with deterministic kernels they give identical
        # figures, which measure no spread at all rather than a spread of zero.
        return (
            f"{head}: {values}: within noise / no spread measured (every repeat gave the same "
            "value: same seed, deterministic kernels); the difference cannot be separated from "
            "seed-to-seed variation."
        )
    if a.min <= b.max and b.min <= a.max:
        return (
            f"{head}: {values}: the difference is within noise "
            f"(the ranges over {a.n} and {b.n} repeats overlap)."
        )
    a_better = (a.median > b.median) == higher_better
    win, lose = (a, b) if a_better else (b, a)
    why = f"({values}; {a.n} and {b.n} repeats, ranges do not overlap)"
    if kind == "ratio":
        return f"{win.name} trained {win.median / lose.median:.2f}x faster than {lose.name} {where} {why}."
    if kind == "percent":
        pct = 100.0 * (1.0 - win.median / lose.median)
        return f"{win.name} used {pct:.0f}% less {words} than {lose.name} {where} {why}."
    return f"{win.name} reached {abs(win.median - lose.median):.2f} dB higher {words} than {lose.name} {where} {why}."


def _range_text(s: Stat, unit: str) -> str:
    if s.n < 2 or s.min == s.max:
        return f"{_fmt_plain(s.median, unit)} {unit}"
    return f"{_fmt_plain(s.median, unit)} [{_fmt_plain(s.min, unit)}, {_fmt_plain(s.max, unit)}] {unit}"


def _where(devices: int, kind: str) -> str:
    noun = "GPU" if kind == "GPU" else "CPU worker"
    return f"on {devices} {noun}{'s' if devices != 1 else ''}"


def group_stat(g: pd.Series, metric: str) -> Stat:
    def val(suffix: str) -> float | None:
        v = g[f"{metric}_{suffix}"]
        return None if _missing(v) else float(v)

    return Stat(
        name=FRAMEWORK_NAMES.get(g["framework"], g["framework"]),
        median=val("median"),
        min=val("min"),
        max=val("max"),
        n=int(g[f"{metric}_n"]),
        reason=g[f"{metric}_reason"],
    )


def verdicts(groups: pd.DataFrame) -> list[str]:
    """Every PyTorch vs TensorFlow comparison at the same devices, batch, engine and setup."""
    out = []
    if groups.empty:
        return out
    several_setups = groups["setup"].nunique() > 1 or groups["batch_per_device"].nunique() > 1
    keys = ["engine", "devices", "batch_per_device", "setup"]
    for key, same in groups.groupby(keys, sort=True):
        by_fw = {row["framework"]: row for _, row in same.iterrows()}
        _engine, devices, batch, setup = key
        where = _where(int(devices), same["device_kind"].iloc[0])
        if several_setups:
            where += f" (batch {batch}/device, setup {setup})"
        if "torch" not in by_fw or "tf" not in by_fw:
            only = ", ".join(FRAMEWORK_NAMES.get(f, f) for f in by_fw)
            out.append(f"Only {only} ran {where}: nothing to compare.")
            continue
        for metric in VERDICT_METRICS:
            out.append(
                verdict(
                    metric,
                    group_stat(by_fw["torch"], metric),
                    group_stat(by_fw["tf"], metric),
                    where,
                )
            )
    return out


# --------------------------------------------------------------------------- display


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _sig(v: float) -> str:
    """About three significant figures, thousands separated: 1,234 / 12.3 / 0.0123."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"


def _num(v: float, m: Metric) -> str:
    v = v * m.scale
    return _sig(v) if m.digits is None else f"{v:,.{m.digits}f}"


def cell(g: pd.Series, key: str) -> str:
    """median [min, max] (or one value), or 'missing (reason)'; never a silent blank or 0."""
    m = METRIC.get(key, Metric(key, key))
    med = g[f"{key}_median"]
    if _missing(med):
        return f"missing ({g[f'{key}_reason'] or 'not recorded'})"
    lo, hi = g[f"{key}_min"], g[f"{key}_max"]
    text = _num(med, m)
    if lo != hi:
        text += f" [{_num(lo, m)}, {_num(hi, m)}]"
    if g[f"{key}_reason"]:  # some runs of the group lack it
        text += f" ({g[f'{key}_n']} of {g['repeats']} runs; others: {g[f'{key}_reason']})"
    return text


TABLES: dict[str, tuple[str, list[str]]] = {
    "speed": (
        "Speed",
        [
            "throughput_steady_img_s",
            "throughput_per_device_img_s",
            "scaling_efficiency",
            "step_time_p50_s",
            "step_time_p95_s",
            "data_wait_fraction",
            "mfu",
        ],
    ),
    "memory_energy": (
        "Memory and energy",
        [
            "gpu_mem_alloc_peak_gib",
            "gpu_mem_used_peak_gib",
            "host_rss_peak_gib",
            "gpu_energy_per_image_j",
            "gpu_energy_per_epoch_j",
            "energy_method",
            "cpu_energy_per_image_j",
        ],
    ),
    "time_to_target": (
        "Time and energy to a target PSNR",
        [
            "epoch_time_s",
            "target_psnr_db",
            "epochs_to_target",
            "time_to_target_s",
            "energy_to_target_j",
        ],
    ),
    "quality": (
        "Final test quality",
        ["test_mae", "test_psnr_db", "test_ssim", "noisy_psnr_db"],
    ),
}
METRIC["scaling_efficiency"] = Metric("scaling_efficiency", "scaling efficiency", digits=3)


def display_table(groups: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A group table as strings, for Markdown and HTML."""
    rows = []
    for _, g in groups.iterrows():
        row = {
            "framework": FRAMEWORK_NAMES.get(g["framework"], g["framework"]),
            "engine": g["engine"],
            "devices": f"{g['devices']} {g['device_kind']}",
            "batch/device": g["batch_per_device"],
            "setup": g["setup"],
            "repeats": f"{g['repeats']}"
            + (f" of {g['runs']}" if g["runs"] != g["repeats"] else ""),
        }
        for key in keys:
            if key == "energy_method":
                method = g["energy_method"] or "missing (no GPU energy)"
                if g["energy_window_too_short"]:
                    method += " (a window shorter than profiler.min_window_s)"
                row["energy method"] = method
            else:
                row[METRIC[key].label] = cell(g, key)
        rows.append(row)
    return pd.DataFrame(rows)


def speed_modes_table(groups: pd.DataFrame) -> pd.DataFrame:
    """Each non-faithful group against the faithful group of the same experiment (framework,
    engine, devices, per-device batch and everything but the speed settings): median img/s,
    the speed-up, and the final test PSNR's difference. Empty when no such pair was run."""
    keys = ["framework", "engine", "devices", "batch_per_device", "base_setup"]
    rows = []
    if groups.empty or "speed_mode" not in groups:
        return pd.DataFrame()
    for _key, same in groups.groupby(keys, sort=True):
        faithful = same[same["speed_mode"] == "faithful"]
        if faithful.empty:
            continue
        ref = faithful.iloc[0]
        for _, g in same[same["speed_mode"] != "faithful"].iterrows():
            tput, ref_tput = (
                g["throughput_steady_img_s_median"],
                ref["throughput_steady_img_s_median"],
            )
            psnr, ref_psnr = g["test_psnr_db_median"], ref["test_psnr_db_median"]
            diff = None if _missing(psnr) or _missing(ref_psnr) else psnr - ref_psnr
            fast = not (_missing(tput) or _missing(ref_tput)) and ref_tput > 0
            rows.append(
                {
                    "framework": g["framework"],
                    "devices": g["devices"],
                    "batch/device": g["batch_per_device"],
                    "mode": g["speed_mode"],
                    "setup": g["setup"],
                    "img/s": cell(g, "throughput_steady_img_s"),
                    "faithful img/s": cell(ref, "throughput_steady_img_s"),
                    "speed-up": f"{tput / ref_tput:.2f}x" if fast else "missing",
                    "PSNR diff dB": "missing" if diff is None else f"{diff:+.3f}",
                    f"within {PSNR_TOLERANCE_DB} dB": "missing"
                    if diff is None
                    else ("yes" if abs(diff) <= PSNR_TOLERANCE_DB else "no"),
                }
            )
    return pd.DataFrame(rows)


def csv_table(groups: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A group table as numbers: median, min, max, n and reason per figure (empty = missing)."""
    cols = [*GROUP_KEYS, "device_kind", "repeats", "runs"]
    for key in keys:
        if key == "energy_method":
            cols += ["energy_method", "energy_window_too_short"]
        else:
            cols += [f"{key}_{s}" for s in ("median", "min", "max", "n", "reason")]
    return groups.reindex(columns=cols)


def baseline_display(results: list[BaselineResult]) -> pd.DataFrame:
    rows = []
    for res in results:
        for _, r in res.frame.iterrows():
            ok = not _missing(r["psnr_db"])
            rows.append(
                {
                    "run folder": res.run_dir.name,
                    "method": r["method"],
                    "images": f"{r['images']} (seeded sample)",
                    "PSNR dB": f"{r['psnr_db']:.2f}" if ok else f"missing ({r['reason']})",
                    "SSIM": f"{r['ssim']:.3f}" if ok else f"missing ({r['reason']})",
                    "MAE": f"{r['mae']:.4f}" if ok else "missing",
                    "seconds": "" if _missing(r["seconds"]) else _sig(r["seconds"]),
                    "parameters": r["params"],
                }
            )
    return pd.DataFrame(rows)


def baseline_csv(results: list[BaselineResult]) -> pd.DataFrame:
    frames = [r.frame.assign(run_folder=str(r.run_dir), sigma=r.sigma) for r in results]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in runs.iterrows():
        fw_dir = Path(r["folder"]) / r["framework"]
        env = (
            read_json(fw_dir / "environment.json")
            if (fw_dir / "environment.json").is_file()
            else {}
        )
        summary = read_json(fw_dir / "summary.json")
        git = env.get("git") or {}
        gpus = env.get("gpus")
        gpu_text = (
            ", ".join(f"{g['name']} ({g['memory_total_gib']:.0f} GiB)" for g in gpus)
            if gpus
            else f"missing ({env.get('reason', 'not recorded')})"
        )
        commit = git.get("commit")
        rows.append(
            {
                "run": r["run"],
                "framework": FRAMEWORK_NAMES.get(r["framework"], r["framework"]),
                "host": env.get("hostname"),
                "CPU": f"{env.get('cpu')} ({env.get('cpu_count')} cores)",
                "GPUs": gpu_text,
                "driver": env.get("driver") or "missing (no NVML)",
                "device": summary.get("device"),
                "strategy": f"{summary.get('strategy')}, {summary.get('processes')} process(es)",
                "python": env.get("python"),
                "packages": ", ".join(
                    f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items())
                ),
                "commit": (commit[:10] + (" (dirty)" if git.get("dirty") else ""))
                if commit
                else f"missing ({git.get('reason', 'not recorded')})",
                "runtime": ", ".join(
                    f"{k}={v}" for k, v in sorted((summary.get("runtime") or {}).items())
                ),
                "platform": env.get("platform"),
            }
        )
    return pd.DataFrame(rows)


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs[
        ["run", "framework", "devices", "batch_per_device", "setup", "status", "epochs_completed"]
    ].copy()
    out["framework"] = out["framework"].map(lambda f: FRAMEWORK_NAMES.get(f, f))
    out["throughput img/s"] = [
        _sig(v) if not _missing(v) else f"missing ({r})"
        for v, r in zip(runs["throughput_steady_img_s"], runs["throughput_reason"], strict=True)
    ]
    out["PSNR dB"] = [f"{v:.2f}" if not _missing(v) else "missing" for v in runs["test_psnr_db"]]
    out["error"] = runs["error"].fillna("")
    return out.rename(columns={"batch_per_device": "batch/device", "epochs_completed": "epochs"})


# --------------------------------------------------------------------------- plots


def _fig_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _placeholder(title: str, message: str) -> bytes:
    """A plot that has nothing to show still appears, saying why (never an empty axis)."""
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, "missing: " + message, ha="center", va="center", wrap=True, fontsize=10)
    return _fig_png(fig)


def _group_label(g: pd.Series) -> str:
    return (
        f"{FRAMEWORK_NAMES.get(g['framework'], g['framework'])} {g['devices']} {g['device_kind']}"
    )


def _reference_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """The groups the loss plots show: the most common setup and batch, fewest devices."""
    if groups.empty:
        return groups
    main = groups.groupby(["setup", "batch_per_device"])["runs"].sum().idxmax()
    pick = groups[(groups["setup"] == main[0]) & (groups["batch_per_device"] == main[1])]
    return pick[pick["devices"] == pick["devices"].min()]


def _loss_curves(runs: pd.DataFrame, g: pd.Series) -> dict[str, Any]:
    """Per-epoch train and test loss of a group's completed runs: median, min, max over runs."""
    sel = runs[
        (runs["status"] == "completed")
        & np.logical_and.reduce([runs[k] == g[k] for k in GROUP_KEYS])
    ]
    frames = []
    for _, r in sel.iterrows():
        epochs = pd.DataFrame(read_jsonl(Path(r["folder"]) / r["framework"] / "epochs.jsonl"))
        if not epochs.empty:
            frames.append(epochs[["epoch", "train_loss", "test_loss"]])
    if not frames:
        return {}
    all_epochs = pd.concat(frames)
    agg = all_epochs.groupby("epoch").agg(["median", "min", "max"])
    return {"train": agg["train_loss"], "validation": agg["test_loss"], "n": len(frames)}


def plot_losses(runs: pd.DataFrame, groups: pd.DataFrame) -> tuple[bytes, bytes]:
    """Figures 4 and 5 of the paper (one panel per framework), and both on one axis."""
    ref = _reference_groups(groups)
    curves = {g["framework"]: (_group_label(g), _loss_curves(runs, g)) for _, g in ref.iterrows()}
    curves = {fw: c for fw, c in curves.items() if c[1]}
    if not curves:
        msg = "no completed run with epoch records"
        return _placeholder("Loss per epoch", msg), _placeholder("Loss per epoch", msg)
    fws = [fw for fw in FRAMEWORKS if fw in curves]
    fig, axes = plt.subplots(1, len(fws), figsize=(5.5 * len(fws), 3.8), squeeze=False, sharey=True)
    for ax, fw in zip(axes[0], fws, strict=True):
        label, c = curves[fw]
        for part, style in (("train", "-"), ("validation", "--")):
            s = c[part]
            x = s.index + 1
            ax.plot(x, s["median"], style, marker="o", ms=3, label=f"{part} loss")
            if c["n"] > 1:
                ax.fill_between(x, s["min"], s["max"], alpha=0.2)
        ax.set_title(f"{label}\ntraining and validation loss (median of {c['n']} run(s))")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    panels = _fig_png(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for fw in fws:
        label, c = curves[fw]
        color = COLORS.get(fw, "C2")
        for part, style in (("train", "-"), ("validation", "--")):
            s = c[part]
            ax.plot(
                s.index + 1,
                s["median"],
                style,
                color=color,
                marker="o",
                ms=3,
                label=f"{label} {part}",
            )
    ax.set_title("Training (solid) and validation (dashed) loss, both frameworks")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return panels, _fig_png(fig)


def plot_scaling(groups: pd.DataFrame) -> bytes:
    """Throughput against devices (median, [min, max] bars) with the ideal N x T(1) line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    shown = False
    for i, ((fw, batch, setup), g) in enumerate(
        groups.groupby(["framework", "batch_per_device", "setup"])
    ):
        g = g.dropna(subset=["throughput_steady_img_s_median"]).sort_values("devices")
        if g.empty:
            continue
        shown = True
        color = COLORS.get(fw, f"C{i + 2}")
        name = FRAMEWORK_NAMES.get(fw, fw) + (
            f" b{batch} {setup}"
            if groups["setup"].nunique() > 1 or groups["batch_per_device"].nunique() > 1
            else ""
        )
        med = g["throughput_steady_img_s_median"]
        err = [med - g["throughput_steady_img_s_min"], g["throughput_steady_img_s_max"] - med]
        ax.errorbar(g["devices"], med, yerr=err, marker="o", capsize=4, color=color, label=name)
        one = g[g["devices"] == 1]
        if not one.empty:
            n = np.arange(1, g["devices"].max() + 1)
            ax.plot(
                n,
                n * one["throughput_steady_img_s_median"].iloc[0],
                ":",
                color=color,
                label=f"{name} ideal (N x 1 device)",
            )
    if not shown:
        plt.close(fig)
        return _placeholder("Throughput against devices", "no steady-state throughput recorded")
    ax.set_xlabel("devices")
    ax.set_ylabel("steady-state throughput, img/s")
    ax.set_title("Throughput against device count (median, bars: min-max over repeats)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _fig_png(fig)


def _bars(groups: pd.DataFrame, key: str, title: str, ylabel: str, ax: plt.Axes) -> bool:
    """Bars of one metric per group with min-max whiskers; missing groups say so in place."""
    labels = [_group_label(g) for _, g in groups.iterrows()]
    x = np.arange(len(labels))
    any_value = False
    for i, (_, g) in enumerate(groups.iterrows()):
        med = g[f"{key}_median"]
        if _missing(med):
            ax.text(
                i, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=8, color="grey"
            )
            continue
        any_value = True
        ax.bar(
            i,
            med,
            color=COLORS.get(g["framework"], "C2"),
        )
        ax.errorbar(
            i,
            med,
            yerr=[[med - g[f"{key}_min"]], [g[f"{key}_max"] - med]],
            color="black",
            capsize=4,
        )
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return any_value


def _first_reason(groups: pd.DataFrame, key: str) -> str:
    reasons = groups[f"{key}_reason"].dropna()
    return str(reasons.iloc[0]) if len(reasons) else "not recorded"


def plot_energy(groups: pd.DataFrame) -> bytes:
    key = "gpu_energy_per_image_j"
    if groups.empty or groups[f"{key}_median"].isna().all():
        return _placeholder(
            "GPU energy per image", _first_reason(groups, key) if not groups.empty else "no runs"
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(groups, key, "GPU energy per training image (median, min-max)", "J per image", ax)
    return _fig_png(fig)


def plot_memory(groups: pd.DataFrame) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    gpu = _bars(
        groups, "gpu_mem_alloc_peak_gib", "Peak GPU memory (framework allocator)", "GiB", axes[0]
    )
    if not gpu:
        axes[0].text(
            0.5,
            0.5,
            "missing: " + _first_reason(groups, "gpu_mem_alloc_peak_gib"),
            transform=axes[0].transAxes,
            ha="center",
            wrap=True,
        )
    _bars(groups, "host_rss_peak_gib", "Peak host RSS (training processes)", "GiB", axes[1])
    return _fig_png(fig)


def plot_power(runs: pd.DataFrame) -> bytes:
    """Power against time from gpu_samples.rank<r>.jsonl, the first completed run of each group."""
    done = runs[runs["status"] == "completed"].drop_duplicates(subset=GROUP_KEYS)
    fig, ax = plt.subplots(figsize=(8, 4))
    shown = False
    for _, r in done.iterrows():
        fw_dir = Path(r["folder"]) / r["framework"]
        for path in sorted(fw_dir.glob("gpu_samples.rank*.jsonl")):
            samples = pd.DataFrame(read_jsonl(path))
            if samples.empty or "power_w" not in samples:
                continue
            samples = samples.dropna(subset=["power_w"])
            for dev, s in samples.groupby("device_index"):
                t = s["t_s"] - s["t_s"].min()
                ax.plot(
                    t,
                    s["power_w"],
                    lw=1,
                    label=f"{FRAMEWORK_NAMES.get(r['framework'])} {r['run']} GPU {dev}",
                )
                shown = True
    if not shown:
        plt.close(fig)
        reasons = runs["gpu_energy_reason"].dropna() if not runs.empty else pd.Series(dtype=str)
        why = str(reasons.iloc[0]) if len(reasons) else "no gpu_samples.rank<r>.jsonl in any run"
        return _placeholder("GPU power over time", f"no GPU samples ({why})")
    ax.set_xlabel("time since the first sample, s")
    ax.set_ylabel("power, W")
    ax.set_title("GPU power over time (NVML samples, idle measurement included)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _fig_png(fig)


def plot_samples(res: BaselineResult, rows: int = GRID_ROWS) -> bytes:
    """Clean, noisy, PyTorch, TensorFlow (and BM3D) for sample images, PSNR under each."""
    columns = [("clean", res.clean), ("noisy input", res.noisy)]
    columns += [(m, res.outputs[m]) for m in ("PyTorch", "TensorFlow", "BM3D") if m in res.outputs]
    rows = min(rows, len(res.clean))
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(2.0 * len(columns), 2.25 * rows), squeeze=False
    )
    for i in range(rows):
        for j, (name, images) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if name != "clean":
                psnr = image_quality(res.clean[i : i + 1], images[i : i + 1])["psnr_db"]
                ax.set_xlabel(f"{psnr:.2f} dB", fontsize=8)
            else:
                ax.set_xlabel(f"test sample {res.indices[i]}", fontsize=8)
    fig.suptitle(f"Test images ({res.run_dir.name}); PSNR under each", fontsize=10)
    return _fig_png(fig)


# --------------------------------------------------------------------------- writing


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"

    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in frame.columns) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += [
        "| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    text = frame.to_html(index=False, escape=True, border=0, classes="t")
    # Grey out missing figures so they read as absent at a glance, not as values.
    return text.replace("<td>missing", '<td class="missing">missing')


NOTES = [
    "Each figure is the median over the group's completed runs, with [min, max] when they "
    "differ; no run is dropped. A group is one framework, engine, device count, per-device "
    "batch and setup (the config apart from the batch size; its id is profile:hash).",
    "Throughput is the steady-state figure (warm-up steps excluded): the median over epochs "
    "within a run (summary.json), then the median over repeats. Step times, data-wait "
    "fraction: over all steady steps of a run (steps.jsonl, every rank); a step's time is "
    "CUDA-event time for PyTorch on a GPU and the host clock on a CPU; TensorFlow on a GPU "
    "waits for the device once an epoch, so its step percentiles are left out.",
    "Scaling efficiency = throughput(N) / (N x throughput(1)), against the 1-device group of "
    "the same framework, per-device batch and setup; the range is the widest the repeats allow.",
    "Time to target: training time summed over epochs (evaluation excluded) up to the first "
    "epoch whose test PSNR reaches the target; energy to target sums the GPU energy the same way.",
    "A verdict names a winner only when both frameworks have at least two repeats and their "
    "[min, max] ranges do not overlap; otherwise it says the difference is within noise.",
]


@dataclass
class Report:
    """Everything the Markdown and HTML writers show."""

    title: str
    generated: str
    runs: pd.DataFrame
    runs_display: pd.DataFrame
    groups: pd.DataFrame
    verdicts: list[str]
    tables: dict[str, tuple[str, pd.DataFrame]]
    plots: list[tuple[str, str, bytes]]  # (file name, caption, PNG)
    baselines: pd.DataFrame
    baseline_note: str
    environment: pd.DataFrame
    configs: dict[str, dict[str, Any]]
    data: list[str]
    skipped: list[str] = field(default_factory=list)
    """Run folders left out, each with the file that did not parse and why."""


def _sections(r: Report) -> list[tuple[str, str, Any]]:
    """(heading, kind, content) in report order; kind: text, list, table, plots, configs."""
    intro = [
        f"Generated {r.generated} from {r.runs['folder'].nunique()} run folder(s), "
        f"{len(r.runs)} framework run(s), {len(r.groups)} group(s).",
        *(f"Data: {d}" for d in r.data),
    ]
    out: list[tuple[str, str, Any]] = [("", "list", intro)]
    if r.skipped:
        out.append(("Skipped run folders (damaged files)", "list", r.skipped))
    out.append(("Verdicts", "list", r.verdicts))
    out += [(title, "table", frame) for title, frame in r.tables.values()]
    out.append(("Classical baselines (same noisy test images)", "text", r.baseline_note))
    out.append(("", "table", r.baselines))
    out.append(("Plots", "plots", r.plots))
    out.append(("Runs", "table", r.runs_display))
    out.append(("Environment", "table", r.environment))
    out.append(("Configs", "configs", r.configs))
    out.append(("How the figures are computed", "list", NOTES))
    return out


def render_markdown(r: Report) -> str:
    lines = [f"# {r.title}", ""]
    for heading, kind, content in _sections(r):
        if heading:
            lines += [f"## {heading}", ""]
        if kind == "list":
            lines += [f"- {x}" for x in content] + [""]
        elif kind == "text":
            lines += [content, ""]
        elif kind == "table":
            lines += [_md_table(content)]
        elif kind == "plots":
            for name, caption, _png in content:
                lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
        elif kind == "configs":
            for setup, cfg in content.items():
                lines += [
                    f"### setup {setup}",
                    "",
                    "```json",
                    json.dumps(cfg, indent=2, sort_keys=True),
                    "```",
                    "",
                ]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.t { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
table.t th, table.t td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
table.t th { background: #f3f3f3; }
td.missing { color: #888; font-style: italic; }
figure { margin: 1em 0 2em; } figcaption { font-weight: 600; margin-bottom: 0.3em; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.5em; overflow: auto; font-size: 12px; }
"""
# Writes each image's decoded width into the page (data-natural-width) and a count into
# #image-check: a headless browser's DOM dump then shows whether the embedded PNGs decoded.
IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute("data-natural-width", String(imgs[i].naturalWidth));
    if (imgs[i].naturalWidth > 0) { ok++; }
  }
  document.getElementById("image-check").textContent = ok + " of " + imgs.length + " images decoded";
});
"""


def render_html(r: Report) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(r.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(r.title)}</h1>",
    ]
    for heading, kind, content in _sections(r):
        if heading:
            parts.append(f"<h2>{esc(heading)}</h2>")
        if kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in content) + "</ul>")
        elif kind == "text":
            parts.append(f"<p>{esc(content)}</p>")
        elif kind == "table":
            parts.append(_html_table(content))
        elif kind == "plots":
            for name, caption, png in content:
                data = base64.b64encode(png).decode("ascii")
                parts.append(
                    f'<figure><figcaption>{esc(caption)}</figcaption><img alt="{esc(caption)}" '
                    f'data-file="{esc(name)}" src="data:image/png;base64,{data}"></figure>'
                )
        elif kind == "configs":
            for setup, cfg in content.items():
                parts.append(
                    f"<details><summary>setup {esc(setup)}</summary>"
                    f"<pre>{esc(json.dumps(cfg, indent=2, sort_keys=True))}</pre></details>"
                )
    parts.append('<p id="image-check">images not checked (scripts off)</p>')
    parts.append(f"<script>{IMAGE_CHECK_JS}</script></body></html>")
    return "\n".join(parts)


def build_report(
    run_dirs: Sequence[Path],
    target_psnr_db: float | None = None,
    target_gain_db: float = DEFAULT_TARGET_GAIN_DB,
    baseline_images: int = 8,
    baseline_seed: int = 0,
) -> tuple[Report, dict[str, pd.DataFrame]]:
    """The report's content and its CSV tables, from run folders (no files written)."""
    runs = runs_frame(run_dirs, target_psnr_db, target_gain_db)
    groups = group_frame(runs)
    tables = {name: (title, display_table(groups, keys)) for name, (title, keys) in TABLES.items()}
    csvs = {name: csv_table(groups, keys) for name, (_title, keys) in TABLES.items()}
    csvs["runs"] = runs
    modes = speed_modes_table(groups)
    if not modes.empty:  # only when faithful and tuned (or custom) runs of one setup are here
        tables["speed_modes"] = (
            "Speed modes against faithful float32 (medians; speed-up of steady img/s)",
            modes,
        )
        csvs["speed_modes"] = modes

    # Baselines per test set (data and noise config): on one run folder of it, the one with
    # both frameworks' outputs, fewest devices, first by path. With the classical methods
    # switched off the sample still scores the noisy input and the frameworks, for the grid.
    methods = tuple(METHODS) if baseline_images > 0 else ()
    sample = baseline_images if baseline_images > 0 else GRID_ROWS
    baseline_results: list[BaselineResult] = []
    done = runs[runs["status"] == "completed"]
    for _data_id, sel in done.groupby("data_setup", sort=True):
        folders = sel.groupby("folder").agg(
            frameworks=("framework", "nunique"), devices=("devices", "min")
        )
        best = folders.sort_values(
            ["frameworks", "devices"], ascending=[False, True], kind="stable"
        )
        folder = Path(best.index[0])
        if (folder / "test_samples.npz").is_file():
            baseline_results.append(
                run_baselines(folder, images=sample, seed=baseline_seed, methods=methods)
            )
    csvs["baselines"] = baseline_csv(baseline_results)
    if baseline_results:
        note = "; ".join(
            f"{res.run_dir.name}: {len(res.indices)} test images (seeded sample, seed "
            f"{baseline_seed}, of test_samples.npz), noise sigma {res.sigma_source}"
            for res in baseline_results
        )
        note += ". Every row of one run folder is scored on the same images."
        if not methods:
            note += " Classical baselines: missing (switched off: --baseline-images 0)."
    else:
        note = "missing (no completed run with test_samples.npz)"

    panels, overlay = plot_losses(runs, groups)
    plots = [
        (
            "loss_per_framework.png",
            "Training and validation loss per epoch, one panel per framework (as the paper's Figures 4 and 5)",
            panels,
        ),
        ("loss_overlay.png", "Training and validation loss, both frameworks on one axis", overlay),
        (
            "throughput_scaling.png",
            "Throughput against device count, with the ideal line",
            plot_scaling(groups),
        ),
        ("energy_per_image.png", "GPU energy per image", plot_energy(groups)),
        ("power_over_time.png", "GPU power over time", plot_power(runs)),
        ("peak_memory.png", "Peak memory", plot_memory(groups)),
    ]
    for i, res in enumerate(baseline_results):
        name = "test_images.png" if i == 0 else f"test_images_{i + 1}.png"
        plots.append(
            (
                name,
                f"Test images of {res.run_dir.name}: clean, noisy, outputs, PSNR under each",
                plot_samples(res),
            )
        )

    env = environment_table(runs)
    csvs["environment"] = env
    verdict_lines = verdicts(groups)
    csvs["verdicts"] = pd.DataFrame({"verdict": verdict_lines})
    configs = {}
    for _, r in runs.drop_duplicates("setup").iterrows():
        configs[r["setup"]] = read_json(Path(r["folder"]) / "config.json")
    report = Report(
        title="denoisebench: PyTorch vs TensorFlow",
        generated=utc_now(),
        runs=runs,
        runs_display=runs_display(runs),
        groups=groups,
        verdicts=verdict_lines or ["No framework runs to compare."],
        tables=tables,
        plots=plots,
        baselines=baseline_display(baseline_results),
        baseline_note=note,
        environment=env,
        configs=configs,
        data=sorted(set(runs["data"].dropna())),
    )
    return report, csvs


def write_report(
    run_dirs: list[Path] | None,
    out_dir: Path,
    results_root: Path,
    *,
    target_psnr_db: float | None = None,
    target_gain_db: float = DEFAULT_TARGET_GAIN_DB,
    baseline_images: int = 8,
    baseline_seed: int = 0,
) -> Path:
    """Write report.md, report.html, the plots (PNG) and one CSV per table into out_dir.

    run_dirs: run folders or folders above them (searched recursively); None: all of
    results_root. Returns the path of report.html.
    """
    folders = find_run_folders(run_dirs if run_dirs is not None else [results_root])
    if not folders:
        where = ", ".join(map(str, run_dirs)) if run_dirs else str(results_root)
        raise ReportError(f"no run folders (config.json and <framework>/summary.json) in {where}")
    damaged = {folder: reason for folder in folders if (reason := damage(folder))}
    skipped = [f"{folder}: {reason}" for folder, reason in damaged.items()]
    for line in skipped:
        print(f"warning: skipping run folder {line}", file=sys.stderr, flush=True)
    folders = [folder for folder in folders if folder not in damaged]
    if not folders:
        raise ReportError(f"every run folder is damaged: {'; '.join(skipped)}")
    report, csvs = build_report(
        folders, target_psnr_db, target_gain_db, baseline_images, baseline_seed
    )
    report.skipped = skipped
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in csvs.items():
        atomic_write_text(out_dir / f"{name}.csv", frame.to_csv(index=False))
    for name, _caption, png in report.plots:
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, out_dir / name)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "report.html", render_html(report))
    # atomic_write_text's temporary files are private (0600); a report is meant to be shared.
    written = [f"{n}.csv" for n in csvs] + [n for n, _c, _p in report.plots]
    for name in [*written, "report.md", "report.html"]:
        os.chmod(out_dir / name, 0o644)
    return out_dir / "report.html"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch report",
        description="Gather run folders into results/report/: report.md, a self-contained "
        "report.html and one CSV per table.",
    )
    p.add_argument(
        "results",
        nargs="*",
        type=Path,
        metavar="RESULTS",
        help="run folders or folders above them, searched recursively (default: all of --results)",
    )
    p.add_argument(
        "--results-root",
        type=Path,
        default=REPO_ROOT / "results",
        help="the results folder (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="where to write (default: <results root>/report)")
    p.add_argument(
        "--target-psnr",
        type=float,
        metavar="DB",
        help="PSNR target for time and energy to target (default: each run's noisy-input "
        f"PSNR + {DEFAULT_TARGET_GAIN_DB:g} dB)",
    )
    p.add_argument(
        "--baseline-images",
        type=int,
        default=8,
        metavar="N",
        help="test images (seeded sample) for BM3D and the other classical baselines; "
        "BM3D takes about 1 s each; 0 skips them (default: %(default)s)",
    )
    p.add_argument("--baseline-seed", type=int, default=0, help="(default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or args.results_root / "report"
    try:
        path = write_report(
            args.results or None,
            out,
            args.results_root,
            target_psnr_db=args.target_psnr,
            baseline_images=args.baseline_images,
            baseline_seed=args.baseline_seed,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}", flush=True)
    print(
        f"        {path.with_name('report.md')} and the tables as CSV in {path.parent}", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
