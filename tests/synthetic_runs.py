"""Run folders written the way the trainers write them, with figures chosen by the test.

The report's verdicts depend on figures that real tiny runs cannot be made to give on purpose
(a framework that is faster in every repeat, runs disturbed by machine load or not): these
folders hold them. `write_run` writes config.json and one framework's epochs.jsonl and
summary.json through RunRecorder, as a trainer does; `load_summary` gives the summary fields
that say whether the machine's load disturbed the run (`disturbed`, `disturbed_reasons`,
`conditions`), as the trainers record them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from denoisebench.core.config import Config
from denoisebench.core.records import RunRecorder, atomic_write_text

LOAD_REASON = "other processes took 48% of the run's 2 cores (threshold 10%)"
"""A disturbed run's reason, in the trainers' words."""


def load_summary(disturbed_reasons: Sequence[str] = (), gpu: bool = False) -> dict[str, Any]:
    """The summary.json fields on the run's conditions: disturbed when there are reasons."""
    share = 0.48 if disturbed_reasons else 0.02
    gpu_conditions = (
        {
            "sm_clock_ratio_min": 0.97,
            "sm_clock_ratio_median": 0.99,
            "throttle_reasons": [],
            "other_processes": 0,
            "xid_events": 0,
            "ecc_uncorrected": 0,
        }
        if gpu
        else None
    )
    return {
        "disturbed": bool(disturbed_reasons),
        "disturbed_reasons": list(disturbed_reasons),
        "conditions": {
            "samples": 20,
            "interval_s": 0.5,
            "cores": 2,
            "load_avg_max": 3.1 if disturbed_reasons else 1.0,
            "load_per_core_max": 1.55 if disturbed_reasons else 0.5,
            "other_cpu_share": share,
            "other_cpu_share_max": share + 0.1,
            "steal_share": 0.0,
            "gpu": gpu_conditions,
            "reasons": {} if gpu else {"gpu": "no GPU: training on CPU"},
        },
    }


def write_run(
    folder: Path,
    framework: str,
    *,
    img_s: float,
    psnr_db: float,
    noisy_psnr_db: float = 14.0,
    seed: int = 0,
    epochs: int = 2,
    disturbed_reasons: Sequence[str] = (),
    conditions: bool = True,
    world_size: int = 1,
    split: tuple[int, int] | None = None,
) -> None:
    """One framework's completed CPU run in `folder` on `world_size` workers: `epochs` epochs
    whose test PSNR climbs to `psnr_db`, the steady throughput `img_s`; without `conditions`, a
    folder written before the trainers recorded the machine's load; with `split` (train, test),
    the data.json a trainer writes with the split sizes it used."""
    config = json.loads(Config().to_json())
    config["train"].update(seed=seed, epochs=epochs)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True))
    if split is not None:
        data = {"source": "synthetic", "images": sum(split), "train": split[0], "test": split[1]}
        atomic_write_text(folder / "data.json", json.dumps(data))
    rec = RunRecorder(folder, framework)
    no_gpu = "no GPU: training on CPU"
    for e in range(epochs):
        loss = 0.2 / (e + 1)
        record = {
            "framework": framework,
            "epoch": e,
            "train_loss": loss,
            "test_loss": loss,
            "test_psnr_db": psnr_db - (epochs - 1 - e),
            "noisy_psnr_db": noisy_psnr_db,
            "train_time_s": 1.0,
            "throughput_img_s": img_s,
            "throughput_steady_img_s": img_s,
            "host_rss_peak_gib": 1.0,
            "gpu_energy_reason": no_gpu,
        }
        rec.epoch(record, [], hosts=[{"rank": 0, "rss_peak_gib": 1.0, "gpu_reason": no_gpu}])
    rec.summary(
        status="completed",
        epochs_completed=epochs,
        epochs=epochs,
        final=rec.epochs()[-1],
        world_size=world_size,
        processes=world_size,
        device="cpu",
        strategy="single" if world_size == 1 else "ddp",
        data="synthetic records (tests/synthetic_runs.py)",
        throughput_steady_img_s=img_s,
        host_rss_peak_gib=1.0,
        gpu_energy_j=None,
        gpu_energy_reason=no_gpu,
        **(load_summary(disturbed_reasons) if conditions else {}),
    )


def write_repeats(
    root: Path,
    img_s: dict[str, Sequence[float]],
    psnr_db: dict[str, Sequence[float]] | None = None,
    disturbed: dict[str, bool] | None = None,
) -> list[Path]:
    """Repeats of one setup, both frameworks in each (root/repeat-<k>): img_s[fw][k] is repeat
    k's throughput, psnr_db[fw][k] its final test PSNR (25 dB when not given); disturbed[fw]:
    every run of that framework was disturbed by the machine's load."""
    folders = []
    for k in range(len(img_s["torch"])):
        folder = root / f"repeat-{k}"
        for fw in ("torch", "tf"):
            write_run(
                folder,
                fw,
                img_s=img_s[fw][k],
                psnr_db=psnr_db[fw][k] if psnr_db else 25.0,
                seed=k,
                disturbed_reasons=[LOAD_REASON] if (disturbed or {}).get(fw) else [],
            )
        folders.append(folder)
    return folders
