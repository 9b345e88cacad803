"""The table the launcher prints at the end (report.compare): every missing cell has its reason
on a line below, the columns named (only GPU J/img had one)."""

from __future__ import annotations

import json
from pathlib import Path

from denoisebench.core.records import atomic_write_json
from denoisebench.report.compare import comparison_table

EPOCH = {"epoch": 0, "test_mae": 0.05, "test_psnr_db": 22.0, "test_ssim": 0.5,
         "noisy_psnr_db": 15.0, "steady_reason": None}  # fmt: skip


def write_run(run: Path, framework: str, summary: dict, epochs: list[dict]) -> None:
    atomic_write_json(run / framework / "summary.json", {"framework": framework, **summary})
    text = "".join(f"{json.dumps(e)}\n" for e in epochs)
    (run / framework / "epochs.jsonl").write_text(text)


def test_every_missing_cell_says_why(tmp_path):
    run = tmp_path / "r"
    write_run(run, "torch", {"status": "interrupted", "epochs_completed": 1,
                             "gpu_energy_reason": "no GPU: training on CPU"}, [EPOCH])  # fmt: skip
    write_run(run, "tf", {"status": "completed", "epochs_completed": 1, "final": {
        **EPOCH, "steady_reason": "no step after the warm-up"}, "throughput_img_s": 900.0,
        "host_rss_peak_gib": 1.0, "wall_time_s": 3.0,
        "gpu_energy_reason": "no GPU: training on CPU"}, [EPOCH])  # fmt: skip
    lines = comparison_table(run).splitlines()
    assert "  torch: GPU J/img missing: no GPU: training on CPU" in lines
    assert (
        "  torch: img/s, steady img/s, RSS GiB, wall s missing: the run is interrupted: these "
        "are figured when it ends" in lines
    )
    assert "  tf: steady img/s missing: no step after the warm-up" in lines
    assert "  tf: GPU J/img missing: no GPU: training on CPU" in lines
    reasons = [line for line in lines if " missing: " in line]
    assert len(reasons) == 4


def test_a_run_without_a_finished_epoch_says_so(tmp_path):
    run = tmp_path / "r"
    write_run(run, "torch", {"status": "failed", "epochs_completed": 0}, [])
    lines = comparison_table(run).splitlines()
    assert "  torch: test MAE, PSNR dB, SSIM, noisy PSNR dB missing: no epoch finished" in lines


def test_the_repeats_table_says_why_a_figure_is_missing_in_every_repeat(tmp_path):
    """`--repeats 3`'s table printed 'GPU J/img: missing' and nothing more (the main job's)."""
    from denoisebench.report.compare import repeats_table

    folders = [tmp_path / f"repeat-{k}" for k in range(2)]
    for folder in folders:
        write_run(folder, "torch", {"status": "completed", "epochs_completed": 1, "final": EPOCH,
                                    "throughput_steady_img_s": 900.0, "wall_time_s": 3.0,
                                    "gpu_energy_reason": "no GPU: training on CPU"}, [EPOCH])  # fmt: skip
    lines = repeats_table(folders).splitlines()
    assert "     GPU J/img: missing: no GPU: training on CPU" in lines
    assert not [line for line in lines if line.endswith(": missing")]
