"""The comparison report: every run folder given, gathered with pandas, written as report.md, a
self-contained report.html (plots embedded as PNG data URIs) and one CSV per table.

    python -m launch report                       # every run folder under results/
    python -m launch report results/exp1 results/sweep-x --target-psnr 27
    python -m launch report results/claims-x --claims   # with "The paper's claims" (claims.py)
    python -m denoisebench.report.build results/exp1 --out /tmp/report

A run folder is a folder with config.json and at least one <framework>/summary.json; folders
are searched recursively, so repeats (repeat-<k>/) and sweep elements are found. Runs are
grouped by (framework, engine, devices = summary world_size, per-device batch, setup), where
the setup is the config apart from the batch size and the seed: repeats of one config (with
--seeds, one seed each) form one group, and each figure is given as the median and [min, max] over the group's completed runs, none
dropped. A figure that was not measured stays missing with its reason, never 0.

The stages, each its own module: discover.py (run folders, damage), runs.py (one run's figures),
groups.py (grouping, metrics, scaling), verdicts.py, tables.py (display and CSV), plots.py
(matplotlib), render.py (report.md and report.html); this module puts them together.

Plain Python, pandas and matplotlib (Agg): no framework is imported.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from denoisebench.core.records import (
    atomic_write_text,
    default_results,
    utc_now,
)
from denoisebench.report.baselines import METHODS, BaselineResult, score_run_folders
from denoisebench.report.claims import claims_section
from denoisebench.report.configs import resolved_config
from denoisebench.report.discover import ReportError, damage, find_run_folders
from denoisebench.report.groups import group_frame, runs_frame
from denoisebench.report.leftout import trim_table
from denoisebench.report.plots import (
    GRID_ROWS,
    MEMORY_PANELS,
    Plot,
    memory_missing,
    plot_energy,
    plot_losses,
    plot_memory,
    plot_power,
    plot_samples,
    plot_scaling,
)
from denoisebench.report.render import Report, docs_href, render_html, render_markdown
from denoisebench.report.runs import DEFAULT_TARGET_GAIN_DB
from denoisebench.report.tables import (
    TABLES,
    baseline_csv,
    baseline_display,
    baseline_note,
    csv_table,
    environment_table,
    group_tables,
    runs_display,
    speed_modes_table,
    target_term,
)
from denoisebench.report.terms import steady_term, table_keys
from denoisebench.report.verdicts import verdicts


def build_report(
    run_dirs: Sequence[Path],
    target_psnr_db: float | None = None,
    target_gain_db: float = DEFAULT_TARGET_GAIN_DB,
    baseline_images: int = 8,
    baseline_seed: int = 0,
    claims: bool = False,
) -> tuple[Report, dict[str, pd.DataFrame]]:
    """The report's content and its CSV tables, from run folders (no files written); `claims`:
    with the section that tests the paper's statements (claims.py)."""
    runs = runs_frame(run_dirs, target_psnr_db, target_gain_db)
    groups = group_frame(runs)
    tables, left_out, shared = group_tables(groups)
    csvs = {name: csv_table(groups, keys) for name, (_title, keys) in TABLES.items()}
    csvs["runs"] = runs
    modes = speed_modes_table(groups)
    if not modes.empty:  # only when faithful and tuned (or custom) runs of one setup are here
        tables["speed_modes"] = (
            "Speed modes against faithful float32 (medians; speed-up of steady img/s)",
            modes,
        )
        csvs["speed_modes"] = modes

    baseline_results, note = _baselines(runs, baseline_images, baseline_seed)
    csvs["baselines"] = baseline_csv(baseline_results)
    plots = _plots(runs, groups, baseline_results)

    env = environment_table(runs)
    csvs["environment"] = env
    found = verdicts(groups)
    csvs["verdicts"] = pd.DataFrame(
        {"verdict": [v.line for v in found], "detail": [v.detail for v in found]}
    )
    configs, config_notes = {}, {}
    for _, r in runs.drop_duplicates("setup").iterrows():
        configs[r["setup"]], config_notes[r["setup"]] = resolved_config(Path(r["folder"]))
    runs_shown, left_out["Runs"] = trim_table(runs_display(runs))
    env_shown, left_out["Environment"] = trim_table(env)
    keys = table_keys(
        [*tables.values(), ("Runs", runs_shown), ("Environment", env_shown)],
        {
            "target PSNR dB": target_term(groups, target_psnr_db, target_gain_db),
            "throughput img/s": steady_term(
                {c.get("profiler", {}).get("warmup_steps") for c in configs.values()} - {None}
            ),
        },
    )
    report = Report(
        title="denoisebench: PyTorch vs TensorFlow",
        generated=utc_now(),
        runs=runs,
        runs_display=runs_shown,
        groups=groups,
        verdicts=[v.line for v in found] or ["No framework runs to compare."],
        tables=tables,
        plots=plots,
        baselines=baseline_display(baseline_results, _labels(runs)),
        baseline_note=note,
        environment=env_shown,
        configs=configs,
        data=sorted(set(runs["data"].dropna())),
        config_notes=config_notes,
        left_out=left_out,
        keys=keys,
        shared=shared,
    )
    if claims:
        report.claims = claims_section(runs)
        csvs["claims"] = report.claims.csv()
    return report, csvs


def _baselines(
    runs: pd.DataFrame, baseline_images: int, baseline_seed: int
) -> tuple[list[BaselineResult], str]:
    """The classical baselines and every run folder's frameworks on a seeded sample of its test
    images (baselines.score_run_folders), and the line saying what they were scored on. With
    the classical methods switched off the sample still scores the noisy input and the
    frameworks, for the grid."""
    methods = tuple(METHODS) if baseline_images > 0 else ()
    sample = baseline_images if baseline_images > 0 else GRID_ROWS
    results, none = score_run_folders(runs, sample, baseline_seed, methods)
    note = baseline_note(results, none, _labels(runs), baseline_seed)
    if results and not methods:
        note += " Classical baselines: missing (switched off: --baseline-images 0)."
    return results, note


def _labels(runs: pd.DataFrame) -> dict[str, str]:
    """Run folder -> its name in the runs table."""
    return dict(zip(runs["folder"], runs["run"], strict=True)) if not runs.empty else {}


def _plots(
    runs: pd.DataFrame, groups: pd.DataFrame, baseline_results: list[BaselineResult]
) -> list[tuple[str, str, Plot]]:
    """Every plot of the report but the claims': (file name, caption, PNG or why not)."""
    panels, overlay = plot_losses(runs, groups)
    plots = [
        (
            "loss_per_framework.png",
            "Training and test loss per epoch, one panel per framework (as the paper's Figures 4 and 5)",
            panels,
        ),
        ("loss_overlay.png", "Training and test loss, both frameworks on one axis", overlay),
        (
            "throughput_scaling.png",
            "Throughput against device count, with the ideal line",
            plot_scaling(groups),
        ),
        ("energy_per_image.png", "GPU energy per image", plot_energy(groups)),
        ("power_over_time.png", "GPU power over time", plot_power(runs)),
        ("peak_memory.png", _memory_caption(groups), plot_memory(groups)),
    ]
    own = [res for res in baseline_results if res.same_images_as is None]
    for i, res in enumerate(own):  # one grid per sample: the frameworks of its first folder
        name = "test_images.png" if i == 0 else f"test_images_{i + 1}.png"
        plots.append(
            (
                name,
                f"Test images of {res.run_dir.name}: clean, noisy, outputs, PSNR under each",
                plot_samples(res),
            )
        )
    return plots


def _memory_caption(groups: pd.DataFrame) -> str:
    """The memory plot's caption, naming a panel left out for want of figures, and why."""
    missing = memory_missing(groups)
    if not missing or len(missing) == len(MEMORY_PANELS):
        return "Peak memory"
    return "Peak memory; not drawn: " + "; ".join(
        f"{MEMORY_PANELS[key]}: {why}" for key, why in missing.items()
    )


def write_report(
    run_dirs: list[Path] | None,
    out_dir: Path,
    results_root: Path,
    *,
    target_psnr_db: float | None = None,
    target_gain_db: float = DEFAULT_TARGET_GAIN_DB,
    baseline_images: int = 8,
    baseline_seed: int = 0,
    claims: bool = False,
) -> Path:
    """Write report.md, report.html, the plots (PNG) and one CSV per table into out_dir.

    run_dirs: run folders or folders above them (searched recursively); None: all of
    results_root; claims: with the section that tests the paper's statements. Returns the
    path of report.html.
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
        folders, target_psnr_db, target_gain_db, baseline_images, baseline_seed, claims
    )
    report.skipped = skipped
    out_dir = Path(out_dir)
    report.docs = docs_href(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir}: a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out_dir}: cannot create the folder: {e.strerror}") from None
    for name, frame in csvs.items():
        atomic_write_text(out_dir / f"{name}.csv", csv_safe(frame).to_csv(index=False))
    for name, _caption, png in report.all_plots():
        if isinstance(png, str):  # nothing to show: a line in the report, and no stale file
            (out_dir / name).unlink(missing_ok=True)
            continue
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, out_dir / name)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "report.html", render_html(report))
    if report.claims is not None:  # the claims as plain text, for a terminal
        atomic_write_text(out_dir / "claims.txt", report.claims.text() + "\n")
    return out_dir / "report.html"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these is read as a formula by spreadsheets (CSV injection):
such a text cell gets a leading apostrophe, as OWASP advises; numbers are left as they are."""


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell that a spreadsheet would run as a formula defused (a run id
    or a --set value can hold any text)."""

    def defuse(value: object) -> object:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            try:
                float(value)  # "-1.5" is a number written as text, not a formula
            except ValueError:
                return "'" + value
        return value

    return frame.map(defuse)


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf are refused with the value given)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0, refused with the value given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser(prog: str = "python -m launch report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
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
        default=default_results(),
        help="the results folder (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="where to write (default: <results root>/report)")
    p.add_argument(
        "--target-psnr",
        type=finite_float,
        metavar="DB",
        help="PSNR target for time and energy to target (default: each run's noisy-input "
        f"PSNR + {DEFAULT_TARGET_GAIN_DB:g} dB)",
    )
    p.add_argument(
        "--baseline-images",
        type=non_negative_int,
        default=8,
        metavar="N",
        help="test images (seeded sample) for BM3D and the other classical baselines; "
        "BM3D takes about 1 s each; 0 skips them (default: %(default)s)",
    )
    p.add_argument("--baseline-seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument(
        "--claims",
        action="store_true",
        help="add the section on the paper's claims: each statement tested on these runs "
        "(native and shared init, repeats with --seeds; python -m launch claims runs them)",
    )
    return p


def main(argv: list[str] | None = None, prog: str = "python -m launch report") -> int:
    args = build_parser(prog).parse_args(argv)
    out = args.out or args.results_root / "report"
    try:
        path = write_report(
            args.results or None,
            out,
            args.results_root,
            target_psnr_db=args.target_psnr,
            baseline_images=args.baseline_images,
            baseline_seed=args.baseline_seed,
            claims=args.claims,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, most often while the baselines (BM3D) run
        print(
            f"report: interrupted by SIGINT; {out} keeps what it held (each file is replaced "
            "whole or not at all)",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    print(f"report: {path}", flush=True)
    print(
        f"        {path.with_name('report.md')} and the tables as CSV in {path.parent}", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
