"""The report's tables as strings for display and as plain columns for CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from denoisebench.core.config import PSNR_TOLERANCE_DB
from denoisebench.core.records import FrameworkRecords
from denoisebench.report.baselines import FRAMEWORK_NAMES, BaselineResult
from denoisebench.report.groups import GROUP_KEYS, METRIC, Metric
from denoisebench.report.leftout import ROW_KEYS, identity_line, trim_table
from denoisebench.report.terms import TARGET_DOC
from denoisebench.report.values import _missing, _sig


def _num(v: float, m: Metric) -> str:
    v = v * m.scale
    return _sig(v) if m.digits is None else f"{v:,.{m.digits}f}"


def cell(g: pd.Series, key: str) -> str:
    """median [min, max] (or one value), or 'missing (reason)'; never a silent blank or 0."""
    m = METRIC.get(key, Metric(key, key))
    med = g[f"{key}_median"]
    reason = g[f"{key}_reason"]  # a string, or None (group_frame)
    if _missing(med):
        return f"missing ({reason or 'not recorded'})"
    lo, hi = g[f"{key}_min"], g[f"{key}_max"]
    text = _num(med, m)
    if lo != hi:
        text += f" [{_num(lo, m)}, {_num(hi, m)}]"
    if reason:  # some runs of the group lack it
        text += f" ({g[f'{key}_n']} of {g['repeats']} runs; others: {reason})"
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
            + (f" of {g['runs']}" if g["runs"] != g["repeats"] else "")
            + (f" ({g['disturbed_runs']} disturbed)" if g.get("disturbed_runs") else ""),
        }
        for key in keys:
            if key == "energy_method":
                why = g["gpu_energy_per_image_j_reason"] or "no GPU energy"
                method = g["energy_method"] or f"missing ({why})"
                if g["energy_window_too_short"]:
                    method += " (a window shorter than profiler.min_window_s)"
                row["energy method"] = method
            else:
                row[METRIC[key].label] = cell(g, key)
        rows.append(row)
    return pd.DataFrame(rows)


def group_tables(
    groups: pd.DataFrame,
) -> tuple[dict[str, tuple[str, pd.DataFrame]], dict[str, list[str]], str | None]:
    """The group tables as displayed (name -> title, table), without the columns that hold
    nothing for these runs; the lines saying why (title -> lines); and the line naming what
    every group shares (None: the groups differ in engine, batch and setup)."""
    tables: dict[str, tuple[str, pd.DataFrame]] = {}
    notes: dict[str, list[str]] = {}
    shared = None
    for name, (title, keys) in TABLES.items():
        full = display_table(groups, keys)
        shared = shared or identity_line(full)
        shown, notes[title] = trim_table(full, groups)
        if set(shown.columns) <= set(ROW_KEYS):  # no figure left: the lines say why
            shown = pd.DataFrame()
        tables[name] = (title, shown)
    return tables, notes, shared


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
    cols = [*GROUP_KEYS, "device_kind", "repeats", "runs", "disturbed_runs", "disturbed_reasons"]
    for key in keys:
        if key == "energy_method":
            cols += ["energy_method", "energy_window_too_short"]
        else:
            cols += [f"{key}_{s}" for s in ("median", "min", "max", "n", "reason")]
    return groups.reindex(columns=cols)


def baseline_display(results: list[BaselineResult], labels: dict[str, str]) -> pd.DataFrame:
    """The baselines' rows as displayed; `labels`: run folder -> its name in the runs table."""
    rows = []
    for res in results:
        for _, r in res.frame.iterrows():
            ok = not _missing(r["psnr_db"])
            rows.append(
                {
                    "run folder": labels.get(str(res.run_dir), res.run_dir.name),
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


def baseline_note(
    results: list[BaselineResult], none: list[str], labels: dict[str, str], seed: int
) -> str:
    """What the baselines were scored on, which run folders share another's images (only their
    frameworks' rows), and which have no rows and why (`none`)."""

    def name(folder: Path) -> str:
        return labels.get(str(folder), folder.name)

    parts = [
        f"{name(r.run_dir)}: {len(r.indices)} test images (seeded sample, seed {seed}, of "
        f"test_samples.npz), noise sigma {r.sigma_source}"
        for r in results
        if r.same_images_as is None
    ]
    sharing: dict[Path, list[str]] = {}
    for r in results:
        if r.same_images_as is not None:
            sharing.setdefault(r.same_images_as, []).append(name(r.run_dir))
    parts += [
        f"{', '.join(names)}: the same images as {name(ref)}, whose noisy-input and classical "
        "rows hold for them too: only their frameworks' rows"
        for ref, names in sharing.items()
    ]
    text = "; ".join(parts) + ". Every row of one test set is scored on the same images."
    if not results:
        text = "missing (no completed run with test_samples.npz)."
    return " ".join([text, *(f"{line}." for line in none)])


def baseline_csv(results: list[BaselineResult]) -> pd.DataFrame:
    frames = [
        r.frame.assign(
            run_folder=str(r.run_dir),
            sigma=r.sigma,
            same_images_as=str(r.same_images_as or ""),
        )
        for r in results
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def target_term(groups: pd.DataFrame, target_psnr_db: float | None, gain_db: float) -> str:
    """What the time-to-target table's target PSNR is for these runs, and where it comes from
    (runs.run_record: the given --target-psnr, else each run's noisy-input PSNR + gain_db)."""
    link = f"([time to target]({TARGET_DOC}))"
    if target_psnr_db is not None:
        return f"the test PSNR to reach, {target_psnr_db:.2f} dB, set by --target-psnr {link}"
    columns = ["target_psnr_db_median", "noisy_psnr_db_median"]
    figures = groups.reindex(columns=columns).astype(float)
    targets = figures[columns[0]].dropna().round(2).unique()
    noisy = figures[columns[1]].dropna().round(2).unique()
    if len(targets) == 1 and len(noisy) == 1:
        return (
            f"the test PSNR to reach, {targets[0]:.2f} dB: the noisy test inputs' PSNR "
            f"({noisy[0]:.2f} dB) + {gain_db:g} dB (--target-psnr sets another) {link}"
        )
    return (
        f"the test PSNR to reach: each run's noisy test inputs' PSNR (noisy PSNR dB) + "
        f"{gain_db:g} dB (--target-psnr sets another) {link}"
    )


def _share(v: Any) -> str:
    return f"{100.0 * float(v):.0f}%"


def _listed(v: Any) -> str:
    """A recorded GPU condition (a count, a list or a mapping) in a few words."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items()) or "none"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def conditions_text(summary: dict[str, Any]) -> str:
    """The run conditions the trainer recorded (summary.json `conditions`) in one cell: other
    processes' share of the run's cores, load per core, steal, and the GPU's clocks, throttling
    and other processes where there is a GPU; a figure not recorded reads missing (reason). A
    run of several nodes gives each node's, named by its host (`conditions.hosts`)."""
    cond = summary.get("conditions")
    if not cond:
        return "not recorded (run folder written before the trainers recorded run conditions)"
    nodes = cond.get("hosts") or []
    if len(nodes) > 1:
        return " | ".join(f"{n.get('host', '?')}: {node_conditions_text(n)}" for n in nodes)
    return node_conditions_text(cond)


def node_conditions_text(cond: dict[str, Any]) -> str:
    """One node's run conditions (conditions_text) in one line."""
    why = cond.get("reasons") or {}

    def fig(key: str, fmt: Any) -> str:
        v = cond.get(key)
        return f"missing ({why.get(key, 'not recorded')})" if _missing(v) else fmt(v)

    parts = [
        f"other processes {fig('other_cpu_share', _share)} of the run's "
        f"{cond.get('cores', '?')} cores (mean), {fig('other_cpu_share_max', _share)} max",
        f"load per core max {fig('load_per_core_max', lambda v: f'{float(v):.2f}')} "
        f"(load average max {fig('load_avg_max', lambda v: f'{float(v):.2f}')})",
        f"steal {fig('steal_share', _share)}",
    ]
    gpu = cond.get("gpu")
    if gpu:
        lo, med = gpu.get("sm_clock_ratio_min"), gpu.get("sm_clock_ratio_median")
        clock = "missing" if _missing(lo) else f"{float(lo):.2f}"
        clock += "" if _missing(med) else f" (median {float(med):.2f})"
        parts.append(f"GPU SM clock / max: min {clock}")
        for key, words in (
            ("throttle_reasons", "throttle reasons"),
            ("other_processes", "other GPU processes"),
            ("xid_events", "XID events"),
            ("ecc_uncorrected", "uncorrected ECC errors"),
        ):
            if key in gpu:
                parts.append(f"{words}: {_listed(gpu[key])}")
    elif "gpu" in why:
        parts.append(f"GPU: missing ({why['gpu']})")
    samples = f"{cond.get('samples', '?')} samples"
    if not _missing(cond.get("interval_s")):
        samples += f" every {_sig(float(cond['interval_s']))} s"
    return "; ".join(parts) + f" ({samples})"


def disturbed_text(r: pd.Series) -> str:
    """A runs-table row's disturbed flag with its reasons, or why it is not known."""
    if not r.get("conditions_recorded", False):
        return "not recorded"
    return f"yes: {r['disturbed_reasons']}" if r["disturbed"] else "no"


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in runs.iterrows():
        records = FrameworkRecords.read(Path(r["folder"]), r["framework"])
        assert records is not None  # a runs-table row comes from a summary.json
        if records.summary.get("status") == "skipped":
            continue  # never started (its package is not installed): no environment to show
        env, summary = records.environment(), records.summary
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
                "disturbed": disturbed_text(r),
                "run conditions": conditions_text(summary),
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
