"""The side-by-side table printed at the end of a run, read back from the results folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from denoisebench.results import FRAMEWORKS, read_json

COLUMNS = {
    "framework": "framework",
    "status": "status",
    "epochs": "epochs",
    "test_mae": "test MAE",
    "test_psnr_db": "PSNR dB",
    "test_ssim": "SSIM",
    "noisy_psnr_db": "noisy PSNR dB",
    "throughput_img_s": "img/s",
    "wall_time_s": "wall s",
}


def comparison_frame(run_dir: Path) -> pd.DataFrame:
    """One row per framework run found in run_dir; figures not measured stay missing (NaN)."""
    rows = []
    for framework in FRAMEWORKS:
        path = Path(run_dir) / framework / "summary.json"
        if not path.exists():
            continue
        summary = read_json(path)
        final = summary.get("final") or {}
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
                "wall_time_s": summary.get("wall_time_s"),
            }
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    numeric = [c for c in COLUMNS if c not in ("framework", "status")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric)  # None (not measured) -> NaN
    return frame


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
        "wall s": 1,
    }
    return frame.to_string(
        index=False,
        na_rep="missing",
        formatters={col: _fixed(digits) for col, digits in formats.items()},
    )


def _fixed(digits: int):
    return lambda v: "missing" if pd.isna(v) else f"{v:.{digits}f}"
