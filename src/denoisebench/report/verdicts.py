"""Verdicts: one sentence per metric and setup, PyTorch against TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from denoisebench.report.baselines import FRAMEWORK_NAMES
from denoisebench.report.values import _missing, _sig


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
