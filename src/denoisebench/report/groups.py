"""Runs gathered into a frame, grouped by setup (median, [min, max] over repeats), and
scaling efficiency."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from denoisebench.core.records import FRAMEWORKS
from denoisebench.report.baselines import FRAMEWORK_NAMES
from denoisebench.report.runs import DEFAULT_TARGET_GAIN_DB, run_record
from denoisebench.report.values import _missing

GROUP_KEYS = ["framework", "engine", "devices", "batch_per_device", "setup"]


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
    Metric("epoch_time_s", "epoch train s", "epoch_time_reason"),
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
METRIC["scaling_efficiency"] = Metric("scaling_efficiency", "scaling efficiency", digits=3)
LOAD_FIGURES = [
    "other_cpu_share",
    "other_cpu_share_max",
    "load_per_core_max",
    "steal_share",
    "gpu_sm_clock_ratio_min",
]
"""The run conditions of the runs table (runs.load_fields) that are numbers."""


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
    numeric = [m.key for m in METRICS] + ["wall_time_s", "epochs_completed", *LOAD_FIGURES]
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
        # Machine load: a verdict on speed names no winner from a disturbed run (verdicts.py).
        disturbed = done[done["disturbed"].astype(bool)]
        row["disturbed_runs"] = len(disturbed)
        row["disturbed_reason"] = next(iter(disturbed["disturbed_reason"].dropna()), None)
        row["disturbed_reasons"] = (
            "; ".join(f"{r['run']}: {r['disturbed_reasons']}" for _, r in disturbed.iterrows())
            or None
        )
        row["conditions_recorded_runs"] = int(done["conditions_recorded"].astype(bool).sum())
        for m in METRICS:
            values = done[m.key].dropna()
            row[f"{m.key}_median"] = float(values.median()) if len(values) else None
            row[f"{m.key}_min"] = float(values.min()) if len(values) else None
            row[f"{m.key}_max"] = float(values.max()) if len(values) else None
            row[f"{m.key}_n"] = len(values)
            reason = None
            if done.empty:
                errors = "; ".join(str(e) for e in group["error"].dropna().unique())
                skipped = (group["status"] == "skipped").all()  # its package is not installed
                if skipped:
                    reason = f"skipped: {errors}" if errors else "skipped"
                else:
                    reason = "no completed run" + (f" ({errors})" if errors else "")
            elif len(values) < len(done) and m.reason:
                reasons = done.loc[done[m.key].isna(), m.reason].dropna()
                reason = str(reasons.iloc[0]) if len(reasons) else "not recorded"
            elif len(values) < len(done):
                reason = "not recorded"
            row[f"{m.key}_reason"] = reason
        rows.append(row)
    groups = _none_for_missing_reasons(pd.DataFrame(rows))
    if not groups.empty:
        order = {fw: i for i, fw in enumerate(FRAMEWORKS)}  # PyTorch first, as everywhere
        groups = groups.sort_values(
            ["setup", "batch_per_device", "framework", "engine", "devices"],
            key=lambda c: c.map(order) if c.name == "framework" else c,
            ignore_index=True,
        )
        groups = _none_for_missing_reasons(add_scaling_efficiency(groups))
    return groups


def _none_for_missing_reasons(groups: pd.DataFrame) -> pd.DataFrame:
    """The `*_reason` columns with None where no reason is: pandas makes a None beside strings
    NaN, which reads as true, so `reason or ...` and `if reason` would not mean what they say."""
    reasons = [c for c in groups.columns if c.endswith("_reason")]
    if reasons:
        groups[reasons] = groups[reasons].astype(object).where(groups[reasons].notna(), None)
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
