"""The side-by-side table printed at the end of a run, read back from the results folder, with
a few lines under it saying what its columns mean (`legend`)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from denoisebench.core.records import FRAMEWORKS, FrameworkRecords, read_json
from denoisebench.report.terms import WARMUP, warmup

COLUMNS = {
    "framework": "framework",
    "status": "status",
    "epochs": "epochs",
    "test_mae": "test MAE",
    "test_psnr_db": "PSNR dB",
    "test_ssim": "SSIM",
    "noisy_psnr_db": "noisy PSNR dB",
    "throughput_img_s": "img/s",
    "throughput_steady_img_s": "steady img/s",
    "gpu_energy_per_image_j": "GPU J/img",
    "host_rss_peak_gib": "RSS GiB",
    "wall_time_s": "wall s",
}


LEGEND: list[tuple[tuple[str, ...], str]] = [
    (("steady img/s",), f"steady img/s: without warm-up ({WARMUP}), median over epochs"),
    (("img/s",), "img/s: all training steps"),
    (("test MAE", "PSNR dB", "SSIM"), "PSNR dB, SSIM, test MAE: last epoch, test images"),
    (("noisy PSNR dB",), "noisy PSNR dB: the noisy inputs' (before denoising)"),
    (("GPU J/img",), "GPU J/img: GPU energy per training image"),
    (("RSS GiB",), "RSS GiB: peak host memory"),
    (("wall s",), "wall s: training + evaluation"),
]
"""(the column labels an entry explains, its words); the words of terms.py where shared."""


def legend(labels: Iterable[str], run_dir: Path | None = None) -> list[str]:
    """What the shown columns (`labels`) mean, wrapped into a few indented lines; with
    `run_dir`, the warm-up steps its config.json sets."""
    shown = set(labels)
    words = [text for columns, text in LEGEND if shown & set(columns)]
    if not words:
        return []
    text = "; ".join(words) + "."
    try:
        steps = read_json(Path(run_dir) / "config.json")["profiler"]["warmup_steps"]
        text = text.replace(WARMUP, warmup(int(steps)))
    except (TypeError, OSError, ValueError, KeyError):
        pass  # no run folder, or no readable config: the words without the number
    return textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")


def comparison_frame(run_dir: Path) -> pd.DataFrame:
    """One row per framework run found in run_dir; figures not measured stay missing (NaN)."""
    rows = []
    for framework in FRAMEWORKS:
        records = FrameworkRecords.read(run_dir, framework)
        if records is None:
            continue
        summary = records.summary
        # a run that ended early has no final record: its last checkpointed epoch's quality
        final = records.final()
        rows.append(
            {
                "framework": framework,
                "status": summary.get("status"),
                "epochs": summary.get("epochs_completed"),
                "test_mae": final.get("test_mae"),
                "test_psnr_db": final.get("test_psnr_db"),
                "test_ssim": final.get("test_ssim"),
                "noisy_psnr_db": final.get("noisy_psnr_db"),
                "throughput_img_s": summary.get("throughput_img_s"),
                "throughput_steady_img_s": summary.get("throughput_steady_img_s"),
                "gpu_energy_per_image_j": summary.get("gpu_energy_per_image_j"),
                "host_rss_peak_gib": summary.get("host_rss_peak_gib"),
                "wall_time_s": summary.get("wall_time_s"),
            }
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    numeric = [c for c in COLUMNS if c not in ("framework", "status")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric)  # None (not measured) -> NaN
    return frame


def repeats_table(folders: list[Path]) -> str:
    """Median [min, max] over repeats, per framework; every repeat is counted, none dropped."""
    frame = pd.concat([comparison_frame(f) for f in folders], ignore_index=True)
    if frame.empty:
        return f"(no framework results in {folders})"
    lines = [f"{len(folders)} repeats; median [min, max] over the completed ones"]
    for framework, group in frame.groupby("framework", sort=False):
        done = group[group["status"] == "completed"]
        lines.append(f"{framework}: {len(done)}/{len(group)} repeats completed")
        for col, label, digits in (
            ("throughput_steady_img_s", "steady img/s", 0),
            ("gpu_energy_per_image_j", "GPU J/img", 4),
            ("test_psnr_db", "PSNR dB", 2),
            ("wall_time_s", "wall s", 1),
        ):
            values = done[col].dropna()
            if values.empty:
                lines.append(f"  {label:>12}: missing: {_why_missing_in(col, folders, framework)}")
                continue
            lines.append(
                f"  {label:>12}: {values.median():.{digits}f} "
                f"[{values.min():.{digits}f}, {values.max():.{digits}f}]"
            )
    return "\n".join(
        [*lines, *legend(["steady img/s", "GPU J/img", "PSNR dB", "wall s"], folders[0])]
    )


def comparison_table(run_dir: Path) -> str:
    frame = comparison_frame(run_dir).rename(columns=COLUMNS)
    if frame.empty:
        return f"(no framework results in {run_dir})"
    formats = {
        "epochs": 0,
        "test MAE": 4,
        "PSNR dB": 2,
        "SSIM": 3,
        "noisy PSNR dB": 2,
        "img/s": 0,
        "steady img/s": 0,
        "GPU J/img": 4,
        "RSS GiB": 2,
        "wall s": 1,
    }
    table = frame.to_string(
        index=False,
        na_rep="missing",
        formatters={col: _fixed(digits) for col, digits in formats.items()},
    )
    return "\n".join(
        [
            table,
            *diverged_lines(run_dir),
            *missing_reasons(run_dir),
            *legend(frame.columns, run_dir),
        ]
    )


def diverged_lines(run_dir: Path) -> list[str]:
    """One line per framework whose run diverged (where: the summary's `error`) or was skipped
    (why: the same field)."""
    lines = []
    for framework in FRAMEWORKS:
        records = FrameworkRecords.read(run_dir, framework)
        status = records.summary.get("status") if records else None
        if status == "diverged":
            where = records.summary.get("error") or "a loss that was not finite"
            lines.append(f"  {framework}: diverged: {where}")
        elif status == "skipped":
            lines.append(f"  {framework}: skipped: {records.summary.get('error')}")
    return lines


def missing_reasons(run_dir: Path) -> list[str]:
    """One line per framework and reason for the table's missing cells, the columns named
    (never a silent blank): GPU energy's own reason, the steady window's, a run that ended
    before its end-of-run figures, a run with no finished epoch."""
    frame = comparison_frame(run_dir).set_index("framework")
    lines = []
    for framework in frame.index:
        records = FrameworkRecords.read(run_dir, framework)
        summary = records.summary if records else {}
        reasons: dict[str, list[str]] = {}
        for column, label in COLUMNS.items():
            if column in ("framework", "status") or pd.notna(frame.loc[framework, column]):
                continue
            why = _why_missing(column, summary, records.final() if records else {})
            reasons.setdefault(why, []).append(label)
        for why, labels in reasons.items():
            lines.append(f"  {framework}: {', '.join(labels)} missing: {why}")
    return lines


def _why_missing_in(column: str, folders: list[Path], framework: str) -> str:
    """Why a figure is missing in every repeat: the first repeat's reason that has records."""
    for folder in folders:
        records = FrameworkRecords.read(folder, framework)
        if records is not None:
            return _why_missing(column, records.summary, records.final())
    return "no records"


def _why_missing(column: str, summary: dict, final: dict) -> str:
    """Why one figure of a framework's row is missing."""
    status = summary.get("status")
    if column == "gpu_energy_per_image_j" and summary.get("gpu_energy_reason"):
        return str(summary["gpu_energy_reason"])
    if column in ("test_mae", "test_psnr_db", "test_ssim", "noisy_psnr_db") and not final:
        return "no epoch finished"
    if status not in ("completed", "diverged"):
        return f"the run is {status}: these are figured when it ends"
    if column == "throughput_steady_img_s" and final.get("steady_reason"):
        return str(final["steady_reason"])
    return "not recorded"


def _fixed(digits: int):
    return lambda v: "missing" if pd.isna(v) else f"{v:.{digits}f}"


def sweep_table(sweep_dir: Path, elements: list) -> str:
    """One row per sweep element: its devices and batch, then the comparison columns."""
    frames = []
    for el in elements:
        frame = comparison_frame(Path(sweep_dir) / el.name)
        if frame.empty:
            frame = pd.DataFrame([{"framework": el.framework, "status": "not run"}])
        frames.append(frame.assign(devices=el.devices, batch=el.batch_size))
    frame = pd.concat(frames, ignore_index=True)
    columns = [
        "framework",
        "devices",
        "batch",
        "status",
        "throughput_steady_img_s",
        "test_psnr_db",
        "gpu_energy_per_image_j",
        "wall_time_s",
    ]
    shown = frame.reindex(columns=columns).rename(columns=COLUMNS)
    return "\n".join(
        [
            shown.to_string(
                index=False,
                na_rep="missing",
                formatters={
                    "steady img/s": _fixed(0),
                    "PSNR dB": _fixed(2),
                    "GPU J/img": _fixed(4),
                    "wall s": _fixed(1),
                },
            ),
            *legend(shown.columns, Path(sweep_dir) / elements[0].name if elements else None),
        ]
    )
