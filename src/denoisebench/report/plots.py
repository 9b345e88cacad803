"""The report's plots (matplotlib, Agg), each returned as PNG bytes, or, when it has nothing to
show, as one line saying why (a str: the report prints it in the plot's place, never an empty
axis)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from denoisebench.core.records import FRAMEWORKS, read_jsonl
from denoisebench.measure.quality import image_quality
from denoisebench.report.baselines import FRAMEWORK_NAMES, BaselineResult
from denoisebench.report.groups import GROUP_KEYS
from denoisebench.report.values import _missing

Plot = bytes | str
"""A plot's PNG, or one line saying why there is nothing to show."""
GRID_ROWS = 6
"""Test images in the picture grid (the first of the baseline sample)."""
COLORS = {"torch": "#1f77b4", "tf": "#ff7f0e"}
"""The one place that colours the frameworks: PyTorch blue, TensorFlow orange, in every plot,
so a reader matches them across figures. Nothing else in a plot uses these two colours: the
training and test curves differ by line style and marker, devices and runs by line style."""
OTHER_COLOR = "#7f7f7f"
"""A framework without a colour of its own (grey: never one of COLORS)."""
SPLIT_STYLES = {"train": ("-", "o"), "test": ("--", "s")}
"""Line style and marker of the training and the test (held-out) curve; `test` is the records'
word (epochs.jsonl test_loss, split.json), the console's and the report's."""


def framework_color(framework: str) -> str:
    return COLORS.get(framework, OTHER_COLOR)


def _fig_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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
    return {"train": agg["train_loss"], "test": agg["test_loss"], "n": len(frames)}


def plot_losses(runs: pd.DataFrame, groups: pd.DataFrame) -> tuple[Plot, Plot]:
    """Figures 4 and 5 of the paper (one panel per framework), and both on one axis."""
    ref = _reference_groups(groups)
    curves = {g["framework"]: (_group_label(g), _loss_curves(runs, g)) for _, g in ref.iterrows()}
    curves = {fw: c for fw, c in curves.items() if c[1]}
    if not curves:
        msg = "no completed run with epoch records"
        return msg, msg
    fws = [fw for fw in FRAMEWORKS if fw in curves]
    fig, axes = plt.subplots(1, len(fws), figsize=(5.5 * len(fws), 3.8), squeeze=False, sharey=True)
    for ax, fw in zip(axes[0], fws, strict=True):
        label, c = curves[fw]
        _median_lines(ax, fw, c, [f"{part} loss" for part in SPLIT_STYLES])
        _loss_axis(ax, f"{label}\ntraining and test loss, {_of_runs(c['n'])}")
        ax.legend()
    panels = _fig_png(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for fw in fws:
        label, c = curves[fw]
        _median_lines(ax, fw, c, [f"{label} {part} (n={c['n']})" for part in SPLIT_STYLES])
    _loss_axis(ax, "Training (solid) and test (dashed) loss, both frameworks (n: runs per line)")
    ax.legend(fontsize=8)
    return panels, _fig_png(fig)


def _of_runs(n: int) -> str:
    return "n=1 run" if n == 1 else f"median of n={n} runs, band: min-max"


def _median_lines(ax: plt.Axes, fw: str, curves: dict[str, Any], labels: list[str]) -> None:
    """A group's median training and test loss per epoch (1-based) in the framework's colour;
    the min-max band only over two runs or more."""
    for (part, (style, marker)), label in zip(SPLIT_STYLES.items(), labels, strict=True):
        s = curves[part]
        x = s.index + 1  # epochs.jsonl counts from 0, the console and the report from 1
        color = framework_color(fw)
        ax.plot(x, s["median"], style, color=color, marker=marker, ms=3, label=label)
        if curves["n"] > 1:
            ax.fill_between(x, s["min"], s["max"], color=color, alpha=0.15)


RunCurve = tuple[list[float], list[float]]
"""One run's training and test loss per epoch."""
INIT_TITLES = {"native": "native initialisers", "shared": "shared initial weights"}


def _run_lines(ax: plt.Axes, fw: str, runs: list[RunCurve]) -> None:
    """Every run's training (solid) and test (dashed) loss, in the framework's colour; one
    legend entry for each of the two."""
    for i, (train, test) in enumerate(runs):
        for (part, (style, marker)), values in zip(
            SPLIT_STYLES.items(), (train, test), strict=True
        ):
            name = f"{FRAMEWORK_NAMES.get(fw, fw)} {part}" if i == 0 else None
            x = np.arange(1, len(values) + 1)
            color = framework_color(fw)
            ax.plot(x, values, style, color=color, lw=1, alpha=0.8, marker=marker, ms=3, label=name)


def _loss_axis(ax: plt.Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)


def plot_claim_losses(curves: dict[str, dict[str, list[RunCurve]]]) -> tuple[Plot, Plot]:
    """The claims' loss plots from every run's curves (init -> framework -> runs): both
    frameworks on one axis, one panel per initialisation side by side; and the paper's Figures
    4 and 5 (one panel per framework), a row per initialisation. An initialisation without
    runs gets no panel; with none at all, each is one line."""
    inits = [init for init, by_fw in curves.items() if any(by_fw.values())]
    if not inits:
        return ("no completed single-device run with epoch records",) * 2
    fig, axes = plt.subplots(1, len(inits), figsize=(6 * len(inits), 4), squeeze=False, sharey=True)
    for ax, init in zip(axes[0], inits, strict=True):
        by_fw = curves[init]
        for fw in [f for f in FRAMEWORKS if by_fw.get(f)]:
            _run_lines(ax, fw, by_fw[fw])
        n = ", ".join(f"{len(by_fw[f])} {FRAMEWORK_NAMES.get(f, f)}" for f in by_fw if by_fw[f])
        _loss_axis(ax, f"{INIT_TITLES.get(init, init)}: every run ({n})")
        ax.legend(fontsize=8)
    overlay = _fig_png(fig)
    fws = [f for f in FRAMEWORKS if any(curves[i].get(f) for i in inits)]
    fig, axes = plt.subplots(
        len(inits),
        len(fws),
        figsize=(5.5 * len(fws), 3.8 * len(inits)),
        squeeze=False,
        sharey="row",
        layout="constrained",
    )
    for row, init in zip(axes, inits, strict=True):
        for ax, fw in zip(row, fws, strict=True):
            runs = curves[init].get(fw) or []
            if not runs:
                ax.axis("off")
                ax.set_title(f"{FRAMEWORK_NAMES.get(fw, fw)}, {INIT_TITLES.get(init, init)}")
                ax.text(0.5, 0.5, "no run", ha="center", va="center", color="grey")
                continue
            _run_lines(ax, fw, runs)
            _loss_axis(
                ax,
                f"{FRAMEWORK_NAMES.get(fw, fw)}, {INIT_TITLES.get(init, init)}: {len(runs)} run(s)",
            )
            ax.legend(fontsize=8)
    return overlay, _fig_png(fig)


def plot_scaling(groups: pd.DataFrame) -> Plot:
    """Throughput against devices (median, [min, max] bars) with the ideal N x T(1) line; a
    line saying why where no framework and setup ran on two device counts or more."""
    measured = groups.dropna(subset=["throughput_steady_img_s_median"]) if len(groups) else groups
    if measured.empty:
        return "no steady-state throughput recorded"
    counts = measured.groupby(["framework", "batch_per_device", "setup"])["devices"].nunique()
    if counts.max() < 2:
        devices = ", ".join(map(str, sorted(measured["devices"].unique())))
        return (
            f"every run of a framework and setup used the same device count ({devices}): "
            "nothing to scale against (add runs with --gpus N)"
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    several = groups["setup"].nunique() > 1 or groups["batch_per_device"].nunique() > 1
    seen: dict[str, int] = {}
    for (fw, batch, setup), g in groups.groupby(["framework", "batch_per_device", "setup"]):
        g = g.dropna(subset=["throughput_steady_img_s_median"]).sort_values("devices")
        if g.empty:
            continue
        k = seen[fw] = seen.get(fw, -1) + 1  # a framework's setups: one colour, other markers
        name = FRAMEWORK_NAMES.get(fw, fw) + (f" b{batch} {setup}" if several else "")
        _scaling_line(ax, g, fw, name, SETUP_MARKERS[k % len(SETUP_MARKERS)])
    ax.set_xlabel("devices")
    ax.set_ylabel("steady-state throughput, img/s")
    ax.set_title("Throughput against device count (median; bars: min-max where n > 1)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _fig_png(fig)


LINE_STYLES = ("-", "--", ":", "-.")
"""Line styles that tell one framework's devices and runs apart in the power plot."""
SETUP_MARKERS = ("o", "^", "D", "v", "P")
"""Markers that tell one framework's setups apart in the scaling plot (its colour is one)."""


def _n_words(ns: Iterable[int]) -> str:
    """n of a legend entry: one count, or the range over its points."""
    ns = sorted(set(int(n) for n in ns))
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _scaling_line(ax: plt.Axes, g: pd.DataFrame, fw: str, name: str, marker: str) -> None:
    """One framework and setup's medians against devices, with min-max bars only where a
    point has two runs or more (n in the legend), and the ideal N x T(1) line."""
    color, key = framework_color(fw), "throughput_steady_img_s"
    med, n = g[f"{key}_median"], g[f"{key}_n"]
    ax.plot(g["devices"], med, "-", marker=marker, color=color, label=f"{name} ({_n_words(n)})")
    spread = g[n > 1]
    if not spread.empty:
        m = spread[f"{key}_median"]
        err = [m - spread[f"{key}_min"], spread[f"{key}_max"] - m]
        ax.errorbar(spread["devices"], m, yerr=err, fmt="none", capsize=4, color=color)
    one = g[g["devices"] == 1]
    if not one.empty:
        devices = np.arange(1, g["devices"].max() + 1)
        ideal = devices * one[f"{key}_median"].iloc[0]
        ax.plot(devices, ideal, ":", color=color, label=f"{name} ideal (N x 1 device)")


def _bars(groups: pd.DataFrame, key: str, title: str, ylabel: str, ax: plt.Axes) -> bool:
    """Bars of one metric per group in the framework's colour, n under each, with min-max
    whiskers only where a group has two runs or more; missing groups say so in place."""
    labels = [f"{_group_label(g)} (n={g[f'{key}_n']})" for _, g in groups.iterrows()]
    any_value, spread = False, False
    for i, (_, g) in enumerate(groups.iterrows()):
        med = g[f"{key}_median"]
        if _missing(med):
            ax.text(
                i, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=8, color="grey"
            )
            continue
        any_value = True
        ax.bar(i, med, color=framework_color(g["framework"]))
        if g[f"{key}_n"] > 1:
            spread = True
            err = [[med - g[f"{key}_min"]], [g[f"{key}_max"] - med]]
            ax.errorbar(i, med, yerr=err, color="black", capsize=4)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_title(f"{title}\n(median; whiskers: min-max over n runs)" if spread else title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return any_value


def _first_reason(groups: pd.DataFrame, key: str) -> str:
    reasons = groups[f"{key}_reason"].dropna()
    return str(reasons.iloc[0]) if len(reasons) else "not recorded"


def plot_energy(groups: pd.DataFrame) -> Plot:
    key = "gpu_energy_per_image_j"
    if groups.empty or groups[f"{key}_median"].isna().all():
        return _first_reason(groups, key) if not groups.empty else "no runs"
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(groups, key, "GPU energy per training image", "J per image", ax)
    return _fig_png(fig)


MEMORY_PANELS = {
    "gpu_mem_alloc_peak_gib": "Peak GPU memory (framework allocator)",
    "host_rss_peak_gib": "Peak host RSS (training processes)",
}


def memory_missing(groups: pd.DataFrame) -> dict[str, str]:
    """The panels of plot_memory with nothing to show, each with the records' reason."""
    if groups.empty:
        return dict.fromkeys(MEMORY_PANELS, "no runs")
    return {
        key: _first_reason(groups, key)
        for key in MEMORY_PANELS
        if groups[f"{key}_median"].isna().all()
    }


def plot_memory(groups: pd.DataFrame) -> Plot:
    """Peak GPU memory and host RSS per group; a panel with no figure is left out (its reason
    is memory_missing's, for the caption), and with neither this is one line."""
    missing = memory_missing(groups)
    keys = [key for key in MEMORY_PANELS if key not in missing]
    if not keys:
        return "; ".join(f"{MEMORY_PANELS[k]}: {why}" for k, why in missing.items())
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        _bars(groups, key, MEMORY_PANELS[key], "GiB", ax)
    return _fig_png(fig)


def plot_power(runs: pd.DataFrame) -> Plot:
    """Power against time from gpu_samples.rank<r>.jsonl, the first completed run of each group."""
    done = runs[runs["status"] == "completed"].drop_duplicates(subset=GROUP_KEYS)
    fig, ax = plt.subplots(figsize=(8, 4))
    shown: dict[str, int] = {}  # lines per framework: one colour, other line styles
    for _, r in done.iterrows():
        fw, fw_dir = r["framework"], Path(r["folder"]) / r["framework"]
        for path in sorted(fw_dir.glob("gpu_samples.rank*.jsonl")):
            samples = pd.DataFrame(read_jsonl(path))
            if samples.empty or "power_w" not in samples:
                continue
            samples = samples.dropna(subset=["power_w"])
            for dev, s in samples.groupby("device_index"):
                k = shown[fw] = shown.get(fw, -1) + 1
                ax.plot(
                    s["t_s"] - s["t_s"].min(),
                    s["power_w"],
                    LINE_STYLES[k % len(LINE_STYLES)],
                    color=framework_color(fw),
                    lw=1,
                    label=f"{FRAMEWORK_NAMES.get(fw, fw)} {r['run']} GPU {dev}",
                )
    if not shown:
        plt.close(fig)
        reasons = runs["gpu_energy_reason"].dropna() if not runs.empty else pd.Series(dtype=str)
        why = str(reasons.iloc[0]) if len(reasons) else "no gpu_samples.rank<r>.jsonl in any run"
        return f"no GPU samples ({why})"
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
