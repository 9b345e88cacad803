"""Verdicts: PyTorch against TensorFlow, per metric and setup: a short line with the numbers for
the report (`Verdict.line`) and the full reasoning for verdicts.csv (`Verdict.detail`).

The rule (docs/results.md#verdicts): a winner only when each side has two runs or more, their
[min, max] ranges do not overlap and, for speed and energy, no run was disturbed by machine load.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from denoisebench.report.baselines import FRAMEWORK_NAMES
from denoisebench.report.terms import RUN_CONDITIONS_DOC, VERDICTS_DOC
from denoisebench.report.values import _missing, _sig

METHOD = (
    f"How a winner is decided: [docs/results.md, Verdicts]({VERDICTS_DOC}) (medians, the runs' "
    "[min, max] ranges, 2 runs a framework at least). Disturbed: other load on the machine "
    f"crossed a threshold while the run trained ([run conditions]({RUN_CONDITIONS_DOC})). Each "
    "line's full reasoning: verdicts.csv, column detail."
)
"""The line under the verdicts: the method, behind links."""


@dataclass(frozen=True)
class Verdict:
    """One comparison: its line in the report and its full reasoning (verdicts.csv)."""

    line: str
    """One or two short sentences with the numbers (headline)."""
    detail: str
    """Ratio, difference, the range the repeats' extremes allow, n, load (verdict)."""


@dataclass(frozen=True)
class Stat:
    """One group's figure for a verdict: median, [min, max] over `n` repeats, or a reason."""

    name: str
    median: float | None
    min: float | None
    max: float | None
    n: int
    reason: str | None = None
    runs: int = 0
    """Completed runs of the group (`n` counts those with this figure); 0: not known, use n."""
    disturbed: int = 0
    """Completed runs the machine's load disturbed (summary.json `disturbed`)."""
    disturbed_reason: str | None = None
    """The first disturbed run's first reason."""
    load_recorded: bool = True
    """Every completed run recorded the machine's load (False: a folder from before that)."""


@dataclass(frozen=True)
class VerdictMetric:
    """How a verdict words one figure."""

    words: str
    unit: str
    higher_better: bool
    as_ratio: str | None
    """The ratio of the medians in words ({a}, {b}: the groups, better median first; {r}), or
    None: the figure is set against the other as a difference (PSNR, already logarithmic)."""
    better: str
    """What the winner does, after its name."""
    load_sensitive: bool
    """Machine load changes it: no winner from a disturbed run."""
    short: str | None
    """The ratio in the headline ({a}, {b}, {r}); None: the difference ({a} {d} above {b})."""


VERDICT_METRICS = {
    "throughput_steady_img_s": VerdictMetric(
        "throughput",
        "img/s",
        True,
        "{a} trains {r}x as fast as {b}",
        "is faster",
        True,
        "{a} {r}x as fast as {b}",
    ),
    "gpu_energy_per_image_j": VerdictMetric(
        "GPU energy per image",
        "J/img",
        False,
        "{a} uses {r}x the GPU energy per image of {b}",
        "uses less GPU energy per image",
        True,
        "{a} uses {r}x the energy of {b}",
    ),
    "test_psnr_db": VerdictMetric(
        "final test PSNR", "dB", True, None, "reaches the higher final test PSNR", False, None
    ),
}


def _fmt_plain(v: float, unit: str) -> str:
    if unit == "dB":
        return f"{v:.2f}"
    return _sig(v)


def _signed(v: float, unit: str) -> str:
    return f"{'-' if v < 0 else '+'}{_fmt_plain(abs(v), unit)} {unit}"


def comparison(metric: str, a: Stat, b: Stat) -> str:
    """The two groups set against each other, the better median first: the ratio of the
    medians (or their difference) and the range that the repeats' extremes allow."""
    m = VERDICT_METRICS[metric]
    first, second = _better_first(m, a, b)
    assert first.median is not None and second.median is not None
    lo, hi, other_lo, other_hi = first.min, first.max, second.min, second.max
    assert lo is not None and hi is not None and other_lo is not None and other_hi is not None
    spread_measured = not (lo == hi and other_lo == other_hi)
    diff = first.median - second.median
    medians = (
        f"medians {_fmt_plain(first.median, m.unit)} vs {_fmt_plain(second.median, m.unit)} "
        f"{m.unit}, {_signed(diff, m.unit)}"
    )
    if m.as_ratio is None or second.median <= 0 or first.median < 0:
        side = "above" if m.higher_better else "below"
        text = f"{first.name}'s {m.words} is {_fmt_plain(abs(diff), m.unit)} {m.unit} {side} "
        text += f"{second.name}'s"
        spread = (
            f"difference range {_signed(lo - other_hi, m.unit)} to {_signed(hi - other_lo, m.unit)}"
            " over the repeats' extremes"
            if spread_measured
            else "one value per side: no spread"
        )
        return f"{text} ({medians}; {spread}; {_counts(first, second)})"
    text = m.as_ratio.format(a=first.name, b=second.name, r=f"{first.median / second.median:.2f}")
    if not spread_measured:
        spread = "one value per side: no spread"
    elif other_lo > 0:
        spread = f"ratio range {lo / other_hi:.2f}-{hi / other_lo:.2f} over the repeats' extremes"
    else:
        spread = "ratio range not defined (a value of 0)"
    return f"{text} ({medians}; {spread}; {_counts(first, second)})"


def _counts(first: Stat, second: Stat) -> str:
    """How many runs each side has (n), and whether the machine's load disturbed any."""
    runs = " and ".join(f"{s.n} {s.name} run{'s' if s.n != 1 else ''}" for s in (first, second))
    disturbed = [f"{s.disturbed} {s.name}" for s in (first, second) if s.disturbed]
    if disturbed:
        load = f"{' and '.join(disturbed)} disturbed by machine load"
    elif first.load_recorded and second.load_recorded:
        load = "none disturbed by machine load"
    else:
        load = "machine load not recorded"
    return f"{runs}, {load}"


def _better_first(m: VerdictMetric, a: Stat, b: Stat) -> tuple[Stat, Stat]:
    """The two groups, the one with the better median first (ties: `a`)."""
    assert a.median is not None and b.median is not None
    if a.median == b.median or (a.median > b.median) == m.higher_better:
        return a, b
    return b, a


def load_reason(a: Stat, b: Stat) -> str | None:
    """Which framework's runs the machine's load disturbed, and the first reason; None: none."""
    parts = []
    for s in (a, b):
        if s.disturbed:
            runs = s.runs or s.n
            verb = "was" if s.disturbed == 1 else "were"
            parts.append(
                f"{s.disturbed} of {runs} {s.name} run{'s' if runs != 1 else ''} {verb} "
                f"disturbed ({s.disturbed_reason or 'no reason recorded'})"
            )
    return " and ".join(parts) or None


def _head(m: VerdictMetric, where: str) -> str:
    return f"{m.words[0].upper()}{m.words[1:]} {where}"


def _missing_line(head: str, a: Stat, b: Stat) -> str | None:
    """The line for a comparison one side has no figure for; None: both have one."""
    for s in (a, b):
        if s.median is None:
            return f"{head}: missing for {s.name} ({s.reason or 'not recorded'}); no comparison."
    return None


def _spread(a: Stat, b: Stat) -> str | None:
    """Why the repeats name no winner: "few" (under 2 runs a side), "same" (every repeat gave
    the same value), "overlap" (the [min, max] ranges overlap); None: the ranges separate."""
    if a.n < 2 or b.n < 2:
        return "few"
    if a.min == a.max and b.min == b.max:
        return "same"
    assert a.min is not None and a.max is not None and b.min is not None and b.max is not None
    if a.min <= b.max and b.min <= a.max:
        return "overlap"
    return None


SHORT_WHY = {
    "few": "no winner: that needs 2 runs or more of each (--repeats 3)",
    "same": "no winner: every repeat gave the same value, so no spread was measured",
    "overlap": "no winner: the ranges overlap",
}
"""The headline's reason for each `_spread` outcome."""


def verdict(metric: str, a: Stat, b: Stat, where: str) -> str:
    """The full reasoning of one comparison of two groups on `metric` at one device count
    (`where`), for verdicts.csv.

    It always gives the ratio of the medians (the difference for PSNR) with the range the
    repeats' extremes allow. A winner is named only when each side has at least two repeats,
    their [min, max] ranges do not overlap and, for a figure that machine load changes (speed,
    energy), no run of either side was disturbed; otherwise it says "no winner" and why, and a
    disturbed comparison labels its ratio "not a verdict".
    """
    m = VERDICT_METRICS[metric]
    head = _head(m, where)
    if (missing := _missing_line(head, a, b)) is not None:
        return missing
    measured = comparison(metric, a, b)
    load = load_reason(a, b)
    first, second = _better_first(m, a, b)
    ranges = (
        f"the ranges {first.name} {_range(first, m.unit)} and {second.name} "
        f"{_range(second, m.unit)} {m.unit} over {first.n} and {second.n} repeats"
    )
    why = {
        "few": f"not enough repeats ({a.n} and {b.n} run(s)): a single run cannot separate the "
        "difference from run-to-run noise (use --repeats 3 or more)",
        # Repeats share the config's seed; with deterministic kernels they give identical
        # figures, which measure no spread at all rather than a spread of zero.
        "same": "within noise / no spread measured (every repeat gave the same value: same seed, "
        "deterministic kernels): the difference cannot be separated from seed-to-seed variation",
        "overlap": f"{ranges} overlap: the difference is within noise",
        None: None,
    }[_spread(a, b)]
    if load and m.load_sensitive:
        also = f"; also {why}" if why else ""
        return f"{head}: no winner: {load}{also}. Not a verdict, as measured: {measured}."
    note = f" ({load}; machine load does not change this figure)" if load else ""
    if why:
        return f"{head}: {measured}; no winner: {why}{note}."
    return f"{head}: {measured}; {ranges} do not overlap: {first.name} {m.better}{note}."


def headline(metric: str, a: Stat, b: Stat, where: str) -> str:
    """The report's line for one comparison: who is ahead by how much, the medians, the runs
    and their load, and the decision in a few words (the rule is behind METHOD's link):
    "Throughput on 1 CPU worker: TensorFlow 1.11x as fast as PyTorch (1,017 vs 918 img/s,
    1 run each, none disturbed); no winner: that needs 2 runs or more of each (--repeats 3)."
    """
    m = VERDICT_METRICS[metric]
    head = _head(m, where)
    if (missing := _missing_line(head, a, b)) is not None:
        return missing
    first, second = _better_first(m, a, b)
    assert first.median is not None and second.median is not None
    if first.median == second.median:
        claim = f"{first.name} and {second.name} equal"
    elif m.short is None or second.median <= 0 or first.median < 0:
        diff = _fmt_plain(abs(first.median - second.median), m.unit)
        side = "above" if m.higher_better else "below"
        claim = f"{first.name} {diff} {m.unit} {side} {second.name}"
    else:
        ratio = f"{first.median / second.median:.2f}"
        claim = m.short.format(a=first.name, b=second.name, r=ratio)
    numbers = (
        f"{_fmt_plain(first.median, m.unit)} vs {_fmt_plain(second.median, m.unit)} {m.unit}, "
        f"{_runs_short(first, second)}"
    )
    disturbed = [s for s in (first, second) if s.disturbed]
    if m.load_sensitive and disturbed:
        why = "no winner: machine load disturbed " + " and ".join(
            f"{s.disturbed} of {s.runs or s.n} {s.name} run{'s' if (s.runs or s.n) > 1 else ''}"
            for s in disturbed
        )
    else:
        numbers += f", {_load_short(first, second)}"
        spread = _spread(a, b)
        why = (
            SHORT_WHY[spread] if spread else f"{first.name} {m.better} (the ranges do not overlap)"
        )
    return f"{head}: {claim} ({numbers}); {why}."


def _runs_short(first: Stat, second: Stat) -> str:
    """How many runs each median is of, in a few words."""
    if first.n == second.n:
        return "1 run each" if first.n == 1 else f"medians of {first.n} runs each"
    return f"{first.n} {first.name} and {second.n} {second.name} runs"


def _load_short(first: Stat, second: Stat) -> str:
    """Whether machine load disturbed any run, in a few words."""
    disturbed = [f"{s.disturbed} {s.name}" for s in (first, second) if s.disturbed]
    if disturbed:
        return f"{' and '.join(disturbed)} disturbed"
    if first.load_recorded and second.load_recorded:
        return "none disturbed"
    return "machine load not recorded"


def _range(s: Stat, unit: str) -> str:
    if s.min == s.max:
        return _fmt_plain(s.median, unit)
    return f"{_fmt_plain(s.min, unit)}-{_fmt_plain(s.max, unit)}"


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
        runs=int(g["repeats"]),
        disturbed=int(g.get("disturbed_runs", 0) or 0),
        disturbed_reason=g.get("disturbed_reason"),
        load_recorded=int(g.get("conditions_recorded_runs", 0) or 0) >= int(g["repeats"]),
    )


def verdicts(groups: pd.DataFrame) -> list[Verdict]:
    """Every PyTorch vs TensorFlow comparison at the same devices, batch, engine and setup; a
    figure that no run has is one line at the end (not compared, and why), not one per pair."""
    out: list[Verdict] = []
    if groups.empty:
        return out
    absent = {
        metric: "; ".join(dict.fromkeys(str(r) for r in groups[f"{metric}_reason"].dropna()))
        for metric in VERDICT_METRICS
        if groups[f"{metric}_median"].isna().all()
    }
    compared = False
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
            line = f"Only {only} ran {where}: nothing to compare."
            out.append(Verdict(line, line))
            continue
        compared = True
        for metric in (m for m in VERDICT_METRICS if m not in absent):
            stats = (group_stat(by_fw["torch"], metric), group_stat(by_fw["tf"], metric))
            out.append(Verdict(headline(metric, *stats, where), verdict(metric, *stats, where)))
    if compared:
        for metric, why in absent.items():
            words = VERDICT_METRICS[metric].words
            line = (
                f"{words[0].upper()}{words[1:]}: not compared: missing in every run "
                f"({why or 'not recorded'})."
            )
            out.append(Verdict(line, line))
    return out
