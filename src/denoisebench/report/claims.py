"""The paper's claims, tested: each statement of the study this suite reproduces, against the
runs given, with the measured figures, their spread and a verdict by one stated rule.

    python -m launch claims --data builtin --epochs 4 --limit 480   # runs them, then the report
    python -m launch report results/<claims-run> --claims           # the section from runs on disk

The study (EuroSAT, Gaussian sigma 0.2, MAE, Adam, 100 epochs, each framework's own
initialisers) draws its conclusions from one run per framework. Here every statement is one
figure per run (run_figures), compared over the completed single-device runs of each
framework, separately for native initialisers and shared initial weights (train.init), with
the seed varying between repeats (`--seeds`). claims_section gives the table, the rule, the
scope (data, epochs, runs) and the loss plots; a statement the runs cannot test says why.

Plain Python over pandas (scipy for the p-value shown beside the verdict): no framework.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denoisebench.core.records import FRAMEWORKS, FrameworkRecords, read_json
from denoisebench.report.baselines import FRAMEWORK_NAMES
from denoisebench.report.plots import Plot, RunCurve, plot_claim_losses
from denoisebench.report.values import _missing

MIN_RUNS = 3
"""Runs per framework below which no verdict other than "within noise" is given."""
PLATEAU_PCT = 5.0
"""Claim 4: the training loss has levelled off from the first epoch after which it stays within
this many percent of its final value."""
PLATEAU_EPOCHS = (10, 30)
"""Claim 4 ("falls until about epoch 20, ... at least 30 epochs are needed") holds for a run
whose plateau epoch lies in this range (1-based, inclusive)."""
PLATEAU_MIN_EPOCHS = 40
"""Claim 4 is about epochs 20 to 30: runs shorter than this cannot show a plateau there."""
RISES_MIN_EPOCHS = 3
"""Claim 3 needs two epoch-to-epoch changes of the validation loss at least."""
TRAINED_MARGIN_DB = 3.0
"""Claim 1 is about final quality: testable once every run's final test PSNR lies this far above
its noisy input's (the network denoises), or the runs reached the paper's epoch count."""
PAPER_EPOCHS = 100
"""The paper's training length (profiles/paper.toml's train.epochs)."""
INITS = ("native", "shared")

SUPPORTED, NOT_SUPPORTED, WITHIN_NOISE, NOT_TESTABLE = (
    "supported",
    "not supported",
    "within noise",
    "not testable",
)

RULE = [
    "Each figure is taken once per run; a row gives it per framework as median [min-max] over "
    "n runs (completed single-device runs, the seed varying between them).",
    f"Claims 1, 2, 3 and 5: supported when both frameworks have at least {MIN_RUNS} runs, "
    "their [min-max] ranges do not overlap and the difference goes the way the paper says; "
    "not supported when the ranges do not overlap and it goes the other way; within noise "
    "when they overlap, when every run of a framework gave one value (no spread measured), or "
    f"with fewer than {MIN_RUNS} runs per framework. With 3 runs each, ranges that do not "
    "overlap arise by chance 1 time in 10 (2 of the 20 ways to split 6 values), so a verdict "
    "on 3 runs is a first look.",
    "Every compared figure gives PyTorch/TensorFlow (the ratio of the medians) and "
    "PyTorch - TensorFlow (their difference), each with the range the runs' extremes allow "
    "([min/max - max/min] and [min-max to max-min]), whatever the verdict.",
    f"Claim 1 is about final quality: not testable until the models are trained, that is until "
    f"every run's final test PSNR lies at least {TRAINED_MARGIN_DB:g} dB above its noisy "
    f"input's, or the runs reached the paper's {PAPER_EPOCHS} epochs: the final loss of a "
    "network that does not denoise yet says nothing of how well it trains.",
    "Not testable, too: a figure that is the same in every run of both frameworks (every run "
    "with 0 rises of the validation loss, say): nothing was measured to compare, which is not "
    "the same as a difference within noise.",
    "Welch's t-test p-value (two-sided, scipy) is shown for information; it does not decide "
    "the verdict.",
    f"Claim 4: the plateau epoch of a run is the first epoch (1-based) from which its training "
    f"loss stays within {PLATEAU_PCT:g}% of its final value. Supported when every run's lies in "
    f"{PLATEAU_EPOCHS[0]}-{PLATEAU_EPOCHS[1]}, not supported when none does, within noise "
    f"otherwise; not testable on runs shorter than {PLATEAU_MIN_EPOCHS} epochs (the final value "
    "is then not a plateau).",
    "Claim 6 (left open by the paper) is answered by the same range rule, naming the faster "
    "framework (and the one using less energy where energy was measured), else within noise. "
    "It names none from runs the machine's load disturbed (other processes on the run's cores, "
    "a throttled GPU: summary.json `disturbed`, the reasons in the report's environment table); "
    "the row then says whose runs and why, and gives the ratio as measured, not as a verdict.",
    "Not testable: the runs given cannot answer the statement (too few epochs, no runs of that "
    "initialisation); the row says which.",
]


@dataclass(frozen=True)
class Row:
    """One statement of the paper, tested."""

    claim: str
    paper: str
    """The paper's words."""
    figure: str
    """What is measured, in words."""
    measured: str
    """The figures per framework with their spread."""
    verdict: str
    """supported, not supported, within noise, not testable (or claim 6's answer)."""
    why: str
    """The rule's reason for the verdict."""
    numbers: dict[str, Any] = field(default_factory=dict)
    """The figures as numbers, for claims.csv."""


@dataclass
class ClaimsSection:
    """The report's "The paper's claims" section."""

    scope: list[str]
    rule: list[str]
    rows: list[Row]
    plots: list[tuple[str, str, Plot]]

    def table(self) -> pd.DataFrame:
        """The table as the report shows it."""
        return pd.DataFrame(
            {
                "claim": r.claim,
                "the paper": r.paper,
                "measured: median [min-max] over n runs": f"{r.figure}: {r.measured}",
                "verdict": f"{r.verdict} ({r.why})",
            }
            for r in self.rows
        )

    def csv(self) -> pd.DataFrame:
        """One row per statement, its figures as numbers."""
        return pd.DataFrame(
            {"claim": r.claim, "verdict": r.verdict, "why": r.why, **r.numbers} for r in self.rows
        )

    def text(self) -> str:
        """The section as plain text, for the terminal."""
        lines = ["The paper's claims", ""]
        lines += [f"  {s}" for s in self.scope] + [""]
        for r in self.rows:
            lines += [
                f"{r.claim}. {r.paper}",
                f"   measured: {r.figure}: {r.measured}",
                f"   verdict: {r.verdict} ({r.why})",
                "",
            ]
        lines += ["Rule:"] + [f"  - {s}" for s in self.rule]
        return "\n".join(lines)


# --- one run's figures ---------------------------------------------------------------------


def plateau_epoch(train_loss: Sequence[float], pct: float = PLATEAU_PCT) -> int:
    """The first epoch (1-based) from which the training loss stays within `pct` percent of
    its final value."""
    final = train_loss[-1]
    within = [abs(v - final) <= abs(final) * pct / 100.0 for v in train_loss]
    first = len(within)
    while first > 1 and within[first - 2]:
        first -= 1
    return first


def rises(val_loss: Sequence[float]) -> tuple[int, float]:
    """The validation loss's rises: how many epochs it went up over the previous one, and by
    how much in all, as a percentage of its final value."""
    ups = [b - a for a, b in pairwise(val_loss) if b > a]
    return len(ups), 100.0 * sum(ups) / val_loss[-1] if val_loss[-1] else float("nan")


def run_figures(folder: Path, framework: str) -> dict[str, Any]:
    """The figures the claims need from one framework's run in `folder` (FrameworkRecords):
    the loss curves and what is read from them, and the measured speed, memory and energy."""
    records = FrameworkRecords.read(folder, framework)
    if records is None:
        raise FileNotFoundError(f"{folder / framework / 'summary.json'}: no such file")
    config = read_json(Path(folder) / "config.json")
    done = records.summary.get("epochs_completed") or 0
    epochs = sorted((e for e in records.epochs() if e["epoch"] < done), key=lambda e: e["epoch"])
    train = [float(e["train_loss"]) for e in epochs]
    val = [float(e["test_loss"]) for e in epochs]
    count, size = rises(val) if val else (0, float("nan"))
    noisy = epochs[-1].get("noisy_psnr_db") if epochs else None
    return {
        "init": config.get("train", {}).get("init"),
        "seed": config.get("train", {}).get("seed"),
        "epochs": len(epochs),
        "train_loss": train,
        "val_loss": val,
        "first_train_loss": train[0] if train else None,
        "final_val_loss": val[-1] if val else None,
        "final_psnr_db": float(epochs[-1]["test_psnr_db"]) if epochs else None,
        "noisy_psnr_db": None if noisy is None else float(noisy),
        "val_rises": count,
        "val_rise_pct": size,
        "plateau_epoch": plateau_epoch(train) if train else None,
    }


def claims_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the claims use, one row per completed single-device (run folder, framework) of
    the runs table (groups.runs_frame), with run_figures' columns added."""
    if runs.empty:
        return pd.DataFrame()
    sel = runs[(runs["status"] == "completed") & (runs["devices"] == 1)]
    rows = [
        {**r.to_dict(), **run_figures(Path(r["folder"]), r["framework"])} for _, r in sel.iterrows()
    ]
    return pd.DataFrame(rows)


def pick_setups(frame: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The runs of each initialisation: those of its setup with the most runs (ties: the first
    by id), and a note per setup left out."""
    out, notes = {}, []
    for init in INITS:
        sel = frame[frame["init"] == init] if not frame.empty else frame
        if sel.empty:
            continue
        counts = sel.groupby("setup").size()
        best = counts[counts == counts.max()].index.sort_values()[0]
        out[init] = sel[sel["setup"] == best]
        for setup in counts.index.drop(best):
            notes.append(
                f"Left out: {counts[setup]} {init}-init run(s) of setup {setup} "
                f"(the claims use setup {best}, the one with the most runs)."
            )
    return out, notes


# --- the verdict rule ----------------------------------------------------------------------


def _num(v: float, digits: int) -> str:
    """`digits` significant digits; whole numbers, thousands separated, from 10**digits up."""
    return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"


def spread(values: Sequence[float], digits: int = 4, unit: str = "") -> str:
    """median [min-max] n=N (`digits` significant digits), or one value when they are all the
    same."""
    v = np.asarray(values, dtype=float)
    med = f"{_num(float(np.median(v)), digits)}{unit}"
    if v.min() == v.max():
        return f"{med} (all {len(v)} runs)" if len(v) > 1 else f"{med} (1 run)"
    return f"{med} [{_num(v.min(), digits)}-{_num(v.max(), digits)}] n={len(v)}"


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's two-sided t-test p-value, None where it is not defined (n < 2, no variance)."""
    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return None
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # nearly equal values: a precision warning, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if np.isnan(p) else p


def range_verdict(
    torch: Sequence[float], tf: Sequence[float], lower: str | None
) -> tuple[str, str]:
    """(verdict, why) for PyTorch's values against TensorFlow's by the range rule. `lower`: the
    framework whose figure the paper says is lower; None for an open question, whose answer
    then names the framework with the lower figure ("torch lower" / "tf lower")."""
    absent = [FRAMEWORK_NAMES[fw] for fw, v in (("torch", torch), ("tf", tf)) if not v]
    if absent:
        return NOT_TESTABLE, f"no {' or '.join(absent)} run with this figure"
    every = [*torch, *tf]
    if min(every) == max(every):
        return NOT_TESTABLE, (
            f"every run of both frameworks gave {_num(every[0], 4)}: the figure did not vary, "
            "so nothing was measured to compare"
        )
    if len(torch) < MIN_RUNS or len(tf) < MIN_RUNS:
        return WITHIN_NOISE, (
            f"{len(torch)} and {len(tf)} run(s): fewer than {MIN_RUNS} per framework"
        )
    if min(torch) == max(torch) and min(tf) == max(tf) and min(torch) != min(tf):
        return WITHIN_NOISE, "no spread measured: every run of a framework gave the same value"
    if min(torch) <= max(tf) and min(tf) <= max(torch):
        return WITHIN_NOISE, f"the ranges over {len(torch)} and {len(tf)} runs overlap"
    found = "torch" if max(torch) < min(tf) else "tf"
    why = f"the ranges over {len(torch)} and {len(tf)} runs do not overlap"
    if lower is None:
        return f"{found} lower", why
    return (SUPPORTED if found == lower else NOT_SUPPORTED), why


RANGE = ("median", "min", "max")
"""The three numbers of a figure with its spread, as claims.csv names them."""


def _signed(v: float, digits: int = 3) -> str:
    return f"{'-' if v < 0 else '+'}{_num(abs(v), digits)}"


def contrast(
    torch: Sequence[float], tf: Sequence[float], unit: str = "", prefix: str = ""
) -> tuple[str, dict[str, Any]]:
    """PyTorch against TensorFlow, as text and numbers: the ratio of the medians and their
    difference, each with the range the runs' extremes allow ([min/max - max/min] and
    [min-max to max-min]). The ratio is left out where TensorFlow's values reach 0 or below."""
    if not torch or not tf:
        return "", {}
    a, b = np.asarray(torch, dtype=float), np.asarray(tf, dtype=float)
    diff = (float(np.median(a) - np.median(b)), a.min() - b.max(), a.max() - b.min())
    numbers: dict[str, Any] = {
        f"{prefix}diff_{k}": float(v) for k, v in zip(RANGE, diff, strict=True)
    }
    text = (
        f"PyTorch - TensorFlow {_signed(diff[0])} [{_signed(diff[1])} to {_signed(diff[2])}]{unit}"
    )
    if b.min() > 0 and a.min() >= 0:
        ratio = (float(np.median(a) / np.median(b)), a.min() / b.max(), a.max() / b.min())
        numbers |= {f"{prefix}ratio_{k}": float(v) for k, v in zip(RANGE, ratio, strict=True)}
        text = f"PyTorch/TensorFlow {ratio[0]:.2f}x [{ratio[1]:.2f}-{ratio[2]:.2f}], {text}"
    return text, numbers


def disturbed(runs: pd.DataFrame) -> str | None:
    """Whose runs the machine's load disturbed (summary.json `disturbed`), how many and the
    first reason; None when none was (or none recorded it: an older run folder)."""
    if "disturbed" not in runs:
        return None
    parts = []
    for fw in FRAMEWORKS:
        sel = runs[runs["framework"] == fw]
        hit = sel[sel["disturbed"].astype(bool)]
        if len(hit):
            reason = next(iter(hit["disturbed_reason"].dropna()), "no reason recorded")
            verb = "was" if len(hit) == 1 else "were"
            parts.append(
                f"{len(hit)} of {len(sel)} {FRAMEWORK_NAMES[fw]} run(s) {verb} disturbed ({reason})"
            )
    return " and ".join(parts) or None


def untrained(runs: pd.DataFrame) -> str | None:
    """Why the final quality of these runs cannot be compared yet, None when it can: every run
    must end with a test PSNR at least TRAINED_MARGIN_DB above its noisy input's, or have
    trained the paper's PAPER_EPOCHS epochs."""
    gain = pd.to_numeric(runs["final_psnr_db"]) - pd.to_numeric(runs["noisy_psnr_db"])
    below = (runs["epochs"] < PAPER_EPOCHS) & ~(gain >= TRAINED_MARGIN_DB)  # NaN: not shown
    if not below.any():
        return None
    parts = []
    for fw in FRAMEWORKS:
        sel = runs["framework"] == fw
        if (below & sel).any():
            gains = gain[sel].dropna()
            median = f"median {_signed(float(gains.median()))} dB" if len(gains) else "no PSNR"
            parts.append(
                f"{int((below & sel).sum())} of {int(sel.sum())} {FRAMEWORK_NAMES[fw]} runs "
                f"({median} over the noisy input)"
            )
    return (
        f"not trained yet: {' and '.join(parts)} end less than {TRAINED_MARGIN_DB:g} dB above "
        f"the noisy input's PSNR, before the paper's {PAPER_EPOCHS} epochs"
    )


def _by_fw(runs: pd.DataFrame, key: str) -> dict[str, list[float]]:
    """The values of `key` per framework, missing ones left out."""
    return {
        fw: [float(v) for v in runs.loc[runs["framework"] == fw, key] if not _missing(v)]
        for fw in FRAMEWORKS
    }


def _measured(values: dict[str, list[float]], unit: str = "", digits: int = 4) -> str:
    parts = []
    for fw in FRAMEWORKS:
        name = FRAMEWORK_NAMES[fw]
        v = values.get(fw) or []
        parts.append(f"{name} {spread(v, digits, unit)}" if v else f"{name}: no run")
    p = welch_p(values.get("torch") or [], values.get("tf") or [])
    return "; ".join(parts) + ("" if p is None else f"; Welch p = {p:.2g}")


def _numbers(values: dict[str, list[float]], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fw in FRAMEWORKS:
        v = values.get(fw) or []
        out[f"{prefix}{fw}_median"] = float(np.median(v)) if v else None
        out[f"{prefix}{fw}_min"] = min(v) if v else None
        out[f"{prefix}{fw}_max"] = max(v) if v else None
        out[f"{prefix}{fw}_n"] = len(v)
    out[f"{prefix}welch_p"] = welch_p(values.get("torch") or [], values.get("tf") or [])
    return out


def _no_runs(claim: str, paper: str, figure: str, init: str) -> Row:
    return Row(claim, paper, figure, "no runs", NOT_TESTABLE, f"no completed {init}-init runs")


def _compared(
    claim: str,
    paper: str,
    figure: str,
    runs: pd.DataFrame,
    key: str,
    lower: str,
    gate: str | None = None,
) -> Row:
    """A figure compared by the range rule, with its ratio and difference; `gate`: why the
    runs cannot test it yet (the verdict is then not testable, the figures still shown)."""
    values = _by_fw(runs, key)
    verdict, why = range_verdict(values["torch"], values["tf"], lower)
    text, numbers = contrast(values["torch"], values["tf"])
    if text:
        why = f"{why}; {text}"
    if gate is not None and verdict != NOT_TESTABLE:
        verdict, why = NOT_TESTABLE, f"{gate}. Not a verdict, as measured: {why}"
    return Row(claim, paper, figure, _measured(values), verdict, why, _numbers(values) | numbers)


# --- the statements --------------------------------------------------------------------------

PAPER = {
    "1": "PyTorch trained slightly better than TensorFlow: a lower final loss; the outputs are "
    '"very similar".',
    "2": "PyTorch's loss at the first epoch is significantly lower than TensorFlow's, "
    '"indicating that the training load might have been initialised better in PyTorch".',
    "3": "TensorFlow's validation curve shows clear peaks; PyTorch's decreases more smoothly.",
    "4": "The training loss falls significantly until about epoch 20 and then stays almost "
    "flat: at least 30 epochs are needed.",
    "5": 'PyTorch "could save more RAM while training".',
    "6": "(Left open by the paper) Which framework is computationally more efficient: speed, "
    "energy.",
}


def claim_1(native: pd.DataFrame | None) -> Row:
    figure = "final validation loss (test split, last epoch; native initialisers)"
    if native is None:
        return _no_runs("1", PAPER["1"], figure, "native")
    gate = untrained(native)
    row = _compared("1", PAPER["1"], figure, native, "final_val_loss", lower="torch", gate=gate)
    psnr = _by_fw(native, "final_psnr_db")
    measured = f"{row.measured}. Final test PSNR dB: {_measured(psnr, digits=4)}"
    noisy = [float(v) for v in native["noisy_psnr_db"] if not _missing(v)]
    if noisy:
        measured += f"; the noisy input's: {spread(noisy, 4)}"
    return replace(row, measured=measured)


def claim_2(runs: pd.DataFrame | None, init: str) -> Row:
    label = {"native": "native initialisers", "shared": "shared initial weights"}[init]
    claim = f"2 ({init} init)"
    figure = f"training loss of the first epoch (mean over its steps; {label})"
    paper = PAPER["2"] + (
        ""
        if init == "native"
        else " Tested again with the same initial weights in both: if the difference comes "
        "from the initialisation, it is gone here."
    )
    if runs is None:
        return _no_runs(claim, paper, figure, init)
    return _compared(claim, paper, figure, runs, "first_train_loss", lower="torch")


def claim_3(native: pd.DataFrame | None) -> Row:
    figure = (
        "validation-loss rises per run: the epochs it went up, and their total size in % of "
        "the final validation loss (native initialisers; the verdict is on the size)"
    )
    if native is None:
        return _no_runs("3", PAPER["3"], figure, "native")
    size = _by_fw(native, "val_rise_pct")
    count = _by_fw(native, "val_rises")
    measured = f"size %: {_measured(size, digits=3)}. Count: {_measured(count, digits=3)}"
    numbers = {**_numbers(size), **_numbers(count, "count_")}
    epochs = int(native["epochs"].min())
    if epochs < RISES_MIN_EPOCHS:
        why = f"{epochs} epoch(s): fewer than {RISES_MIN_EPOCHS}, at most one change to rise"
        return Row("3", PAPER["3"], figure, measured, NOT_TESTABLE, why, numbers)
    if count["torch"] and count["tf"] and not any(count["torch"] + count["tf"]):
        why = (
            f"every run had 0 rises of the validation loss ({len(count['torch'])} and "
            f"{len(count['tf'])} runs): no peaks were measured to compare"
        )
        return Row("3", PAPER["3"], figure, measured, NOT_TESTABLE, why, numbers)
    verdict, why = range_verdict(size["torch"], size["tf"], lower="torch")
    text, diff = contrast(size["torch"], size["tf"], " pp")
    why = f"{why}; size: {text}" if text else why
    return Row("3", PAPER["3"], figure, measured, verdict, why, numbers | diff)


def claim_4(native: pd.DataFrame | None) -> Row:
    figure = (
        f"plateau epoch: the first epoch from which the training loss stays within "
        f"{PLATEAU_PCT:g}% of its final value (native initialisers)"
    )
    if native is None:
        return _no_runs("4", PAPER["4"], figure, "native")
    values = _by_fw(native, "plateau_epoch")
    epochs = int(native["epochs"].min())
    measured = f"{_measured(values, digits=3)} (of {epochs} epochs)"
    numbers = _numbers(values)
    if epochs < PLATEAU_MIN_EPOCHS:
        why = (
            f"runs of {epochs} epochs; a plateau from about epoch 20 needs at least "
            f"{PLATEAU_MIN_EPOCHS}"
        )
        return Row("4", PAPER["4"], figure, measured, NOT_TESTABLE, why, numbers)
    every = values["torch"] + values["tf"]
    lo, hi = PLATEAU_EPOCHS
    inside = [lo <= v <= hi for v in every]
    if all(inside):
        verdict, why = SUPPORTED, f"every run's plateau epoch lies in {lo}-{hi}"
    elif not any(inside):
        verdict, why = NOT_SUPPORTED, f"no run's plateau epoch lies in {lo}-{hi}"
    else:
        verdict, why = WITHIN_NOISE, f"{sum(inside)} of {len(every)} runs' lie in {lo}-{hi}"
    return Row("4", PAPER["4"], figure, measured, verdict, why, numbers)


def _gpu_memory(runs: pd.DataFrame) -> tuple[str, dict[str, Any]]:
    values = _by_fw(runs, "gpu_mem_alloc_peak_gib")
    if not values["torch"] and not values["tf"]:
        reasons = runs["gpu_mem_reason"].dropna()
        why = str(reasons.iloc[0]) if len(reasons) else "not recorded"
        return f"not measured: {why}", {}
    verdict, why = range_verdict(values["torch"], values["tf"], lower=None)
    answer = _answer(verdict, False, "uses less")
    text, diff = contrast(values["torch"], values["tf"], " GiB", "gpu_mem_")
    why = f"{why}; {text}" if text else why
    return f"{_measured(values, ' GiB', 3)} ({answer}: {why})", _numbers(values, "gpu_mem_") | diff


def claim_5(both: pd.DataFrame | None) -> Row:
    figure = (
        "peak host RSS of the training process (GiB; psutil, the same instrument for both) "
        "and peak GPU memory (framework allocator); runs of both initialisations"
    )
    if both is None:
        return _no_runs("5", PAPER["5"], figure, "single-device")
    rss = _by_fw(both, "host_rss_peak_gib")
    gpu_text, gpu_numbers = _gpu_memory(both)
    measured = f"host RSS: {_measured(rss, ' GiB', 3)}. GPU memory: {gpu_text}"
    verdict, why = range_verdict(rss["torch"], rss["tf"], lower="torch")
    text, diff = contrast(rss["torch"], rss["tf"], " GiB")
    why = f"{why}; {text}" if text else why
    numbers = {**_numbers(rss), **diff, **gpu_numbers}
    return Row("5", PAPER["5"], figure, measured, verdict, f"host RSS: {why}", numbers)


def _answer(verdict: str, higher_better: bool, better: str) -> str:
    """An open question's range verdict ("torch lower", "tf lower", within noise) as the
    framework that did better, e.g. "TensorFlow faster"."""
    if verdict not in ("torch lower", "tf lower"):
        return verdict
    lower = "torch" if verdict == "torch lower" else "tf"
    winner = ({"torch", "tf"} - {lower}).pop() if higher_better else lower
    return f"{FRAMEWORK_NAMES[winner]} {better}"


def _open_answer(
    values: dict[str, list[float]], higher_better: bool, better: str, load: str | None
) -> tuple[str, str, dict[str, Any]]:
    """(answer, why, ratio numbers) of an open question on a figure that machine load changes:
    the range rule's answer, or none from runs the load disturbed (the figures still shown)."""
    verdict, why = range_verdict(values["torch"], values["tf"], lower=None)
    text, numbers = contrast(values["torch"], values["tf"])
    why = f"{why}, {text}" if text else why
    if load and verdict != NOT_TESTABLE:
        return (
            "no framework named (disturbed runs)",
            f"none named from disturbed runs: {load}; not a verdict, as measured: {why}",
            numbers,
        )
    return _answer(verdict, higher_better, better), why, numbers


def claim_6(both: pd.DataFrame | None) -> Row:
    figure = (
        "steady-state throughput (img/s, warm-up steps left out) and energy per training "
        "image where measured; runs of both initialisations"
    )
    if both is None:
        return _no_runs("6", PAPER["6"], figure, "single-device")
    load = disturbed(both)
    tput = _by_fw(both, "throughput_steady_img_s")
    answer, why, ratio = _open_answer(tput, True, "faster", load)
    answers = [f"throughput: {answer}"]
    whys = [f"throughput: {why}"]
    measured = [f"throughput img/s: {_measured(tput, '', 4)}"]
    numbers = _numbers(tput) | ratio
    for key, label, reason_key in (
        ("gpu_energy_per_image_j", "GPU J/img", "gpu_energy_reason"),
        ("cpu_energy_per_image_j", "CPU J/img (RAPL)", "cpu_energy_reason"),
    ):
        energy = _by_fw(both, key)
        if not energy["torch"] and not energy["tf"]:
            reasons = both[reason_key].dropna()
            measured.append(
                f"{label}: not measured ({reasons.iloc[0] if len(reasons) else 'not recorded'})"
            )
            continue
        e_answer, e_why, e_ratio = _open_answer(energy, False, "uses less", load)
        answers.append(f"{label}: {e_answer}")
        whys.append(f"{label}: {e_why}")
        measured.append(f"{label}: {_measured(energy, '', 3)}")
        numbers |= _numbers(energy, f"{key}_") | {f"{key}_{k}": v for k, v in e_ratio.items()}
    if len(answers) == 1:
        answers.append("energy: not measured")
    return Row(
        "6", PAPER["6"], figure, ". ".join(measured), "; ".join(answers), "; ".join(whys), numbers
    )


# --- the section ---------------------------------------------------------------------------


def _scope(frame: pd.DataFrame, chosen: dict[str, pd.DataFrame], notes: list[str]) -> list[str]:
    """What the claims were tested on: data, epochs, runs and seeds, device; what is left out."""
    if not chosen:
        return ["No completed single-device run: no claim can be tested.", *notes]
    any_runs = pd.concat(chosen.values())
    config = read_json(Path(any_runs["folder"].iloc[0]) / "config.json")
    source = config.get("data", {}).get("source")
    data = "; ".join(sorted(set(any_runs["data"].dropna()))) or str(source)
    eurosat = source in ("eurosat", "tfds")
    lines = [
        f"Data: {data}"
        + ("." if eurosat else " (the paper's data is EuroSAT RGB: these are not EuroSAT)."),
        f"Noise: {config.get('noise', {}).get('kind')} sigma {config.get('noise', {}).get('sigma')}"
        f"; loss {config.get('train', {}).get('loss')}; Adam lr {config.get('train', {}).get('lr')}"
        f"; batch {config.get('train', {}).get('batch_size')} (the paper: Gaussian 0.2, MAE, "
        "Adam, 100 epochs).",
    ]
    for init, runs in chosen.items():
        seeds = sorted({int(s) for s in runs["seed"].dropna()})
        counts = ", ".join(
            f"{(runs['framework'] == fw).sum()} {FRAMEWORK_NAMES[fw]}" for fw in FRAMEWORKS
        )
        epochs = sorted(set(runs["epochs"]))
        lines.append(
            f"{init} init: {counts} run(s); seeds {', '.join(map(str, seeds))}; "
            f"{'/'.join(map(str, epochs))} epochs; setup {runs['setup'].iloc[0]}."
        )
    missing = [init for init in INITS if init not in chosen]
    if missing:
        lines.append(f"No {' or '.join(missing)}-init runs: the rows that need them say so.")
    devices = sorted(set(any_runs["device_kind"]))
    names = sorted({str(d) for d in any_runs["device"].dropna()})
    lines.append(f"Device: {', '.join(devices)} ({', '.join(names)}), one device per run.")
    load = disturbed(any_runs)
    unknown = int((~any_runs["conditions_recorded"].astype(bool)).sum())
    if load:
        lines.append(
            f"Machine load: {load}; claim 6 names no framework from them (the environment "
            "table gives every run's conditions)."
        )
    elif unknown:
        lines.append(
            f"Machine load: not recorded for {unknown} of {len(any_runs)} runs (run folders "
            "written before the trainers recorded it); the others were not disturbed."
        )
    else:
        lines.append("Machine load: no run was disturbed.")
    left_out = len(frame) - len(any_runs) if not frame.empty else 0
    if left_out > 0:
        lines.append(f"{left_out} other completed single-device run(s) not used (see below).")
    return lines + notes


def claims_section(runs: pd.DataFrame) -> ClaimsSection:
    """The claims tested on the runs table (groups.runs_frame): rows, rule, scope and plots."""
    frame = claims_frame(runs)
    chosen, notes = pick_setups(frame)
    native, shared = chosen.get("native"), chosen.get("shared")
    both = pd.concat(chosen.values()) if chosen else None
    rows = [
        claim_1(native),
        claim_2(native, "native"),
        claim_2(shared, "shared"),
        claim_3(native),
        claim_4(native),
        claim_5(both),
        claim_6(both),
    ]
    curves: dict[str, dict[str, list[RunCurve]]] = {
        init: {
            fw: [
                (r["train_loss"], r["val_loss"])
                for _, r in sel[sel["framework"] == fw].sort_values("seed").iterrows()
                if r["train_loss"]
            ]
            for fw in FRAMEWORKS
        }
        for init, sel in chosen.items()
    }
    overlay, panels = plot_claim_losses(curves)
    plots = [
        (
            "claims_loss_curves.png",
            "Training (solid) and test (dashed) loss of every run, both frameworks on one "
            "axis: native initialisers and shared initial weights side by side",
            overlay,
        ),
        (
            "claims_loss_per_framework.png",
            "Every run's loss, one panel per framework as the paper's Figures 4 and 5, a row per "
            "initialisation",
            panels,
        ),
    ]
    return ClaimsSection(_scope(frame, chosen, notes), RULE, rows, plots)
