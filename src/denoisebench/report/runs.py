"""One run's figures: a run folder and framework read into one flat record (run_record)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.core.epochs import step_stats
from denoisebench.core.records import FrameworkRecords, read_json

DEFAULT_TARGET_GAIN_DB = 3.0
"""Without an explicit target, time-to-target aims at the noisy input's PSNR plus this."""
DISPATCH_REASON = (
    "TensorFlow on a GPU waits for the device once an epoch: its single steps are host "
    "dispatch intervals, not device times (the epoch's throughput is exact)"
)


def _setup_id(config: dict[str, Any]) -> str:
    """The config without the per-device batch (its own key) and the seed, hashed: repeats
    share it, those of `--seeds` too (the seed is what varies between repeats). Named by its
    profile and its speed mode where it has one (faithful and tuned runs of one profile are
    different setups)."""
    rest = json.loads(json.dumps(config))
    rest.get("train", {}).pop("batch_size", None)
    rest.get("train", {}).pop("seed", None)
    rest.get("runtime", {}).pop("collective_timeout_s", None)  # how long peers wait
    if not rest.get("runtime", {}).get("share_gpus", True):  # the default, new in the config:
        rest["runtime"].pop("share_gpus")  # older run folders keep pooling with newer ones
    digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]
    mode = f"{config['mode']}:" if config.get("mode") else ""
    return f"{config.get('profile', '?')}:{mode}{digest}"


def _base_setup_id(config: dict[str, Any]) -> str:
    """The setup without its speed settings ([runtime] and the mode): the faithful and tuned
    runs of one experiment share it."""
    rest = json.loads(json.dumps(config))
    rest.get("train", {}).pop("batch_size", None)
    rest.get("train", {}).pop("seed", None)
    rest.pop("runtime", None)
    rest.pop("mode", None)
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]


def _data_id(config: dict[str, Any]) -> str:
    """What decides the test images and their noise: runs sharing it share test_samples.npz."""
    part = {k: config.get(k) for k in ("data", "noise")}
    part["image_size"] = config.get("model", {}).get("image_size")
    return hashlib.sha1(json.dumps(part, sort_keys=True).encode()).hexdigest()[:6]


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _first(rows: Iterable[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key)), None)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def time_to_target(epochs: list[dict[str, Any]], target_db: float) -> dict[str, Any]:
    """Training time (and GPU energy) summed over epochs up to the first one whose test PSNR
    reaches `target_db`; missing with the reason if it never does or energy was not measured.

    Train time only (epochs.jsonl train_time_s): evaluation is the same work for both
    frameworks and would blur the comparison.
    """
    time_s, energy_j, energy_reason = 0.0, 0.0, None
    ordered = sorted(epochs, key=lambda r: r["epoch"])
    for rec in ordered:
        time_s += rec["train_time_s"]
        if rec.get("gpu_energy_j") is None:
            energy_reason = (
                energy_reason or rec.get("gpu_energy_reason") or "GPU energy not measured"
            )
        else:
            energy_j += rec["gpu_energy_j"]
        if rec.get("test_psnr_db") is not None and rec["test_psnr_db"] >= target_db:
            return {
                "epochs_to_target": rec["epoch"] + 1,
                "time_to_target_s": time_s,
                "energy_to_target_j": None if energy_reason else energy_j,
                "target_reason": None,
                "energy_target_reason": energy_reason,
            }
    # finite only: a record written before non-finite figures became null may hold NaN
    best = max((r["test_psnr_db"] for r in ordered if _finite(r.get("test_psnr_db"))), default=None)
    reason = f"target {target_db:.2f} dB never reached in {len(ordered)} epochs" + (
        f" (best {best:.2f} dB)" if best is not None else ""
    )
    return {
        "epochs_to_target": None,
        "time_to_target_s": None,
        "energy_to_target_j": None,
        "target_reason": reason,
        "energy_target_reason": reason,
    }


def load_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's conditions as the trainer recorded them (summary.json `disturbed`,
    `disturbed_reasons`, `conditions`), flat for the runs table: with several nodes
    (`conditions.hosts`) each figure is the worst node's, as the slowest node sets every step's
    time. A folder written before they were recorded reads as not disturbed, with
    `conditions_recorded` False."""
    conditions = summary.get("conditions") or {}
    nodes = conditions.get("hosts") or [conditions]
    reasons = [str(r) for r in summary.get("disturbed_reasons") or []]
    disturbed = bool(summary.get("disturbed"))
    if disturbed and not reasons:
        reasons = ["disturbed (no reason recorded)"]

    def worst(values: list[Any], pick: Any = max) -> Any:
        known = [v for v in values if v is not None]
        return pick(known) if known else None

    return {
        "disturbed": disturbed,
        "disturbed_reasons": "; ".join(reasons) or None,
        "disturbed_reason": reasons[0] if reasons else None,
        "conditions_recorded": "disturbed" in summary or bool(conditions),
        **{
            key: worst([n.get(key) for n in nodes])
            for key in (
                "other_cpu_share",
                "other_cpu_share_max",
                "load_per_core_max",
                "steal_share",
            )
        },
        "gpu_sm_clock_ratio_min": worst(
            [(n.get("gpu") or {}).get("sm_clock_ratio_min") for n in nodes], min
        ),
    }


def _is_gpu(summary: dict[str, Any], devices: list[dict[str, Any]]) -> bool:
    device = str(summary.get("device") or "").lower()
    return bool(devices) or "cuda" in device or "gpu" in device


SPEED_FIGURES = {
    "throughput_steady_img_s": "throughput_reason",
    "throughput_per_device_img_s": "throughput_reason",
    "step_time_p50_s": "step_time_reason",
    "step_time_p95_s": "step_time_reason",
    "mfu": "mfu_reason",
    "epoch_time_s": "epoch_time_reason",
    "time_to_target_s": "target_reason",
    "energy_to_target_j": "energy_target_reason",
    "gpu_energy_per_image_j": "gpu_energy_reason",
    "gpu_energy_per_epoch_j": "gpu_energy_reason",
    "cpu_energy_per_image_j": "cpu_energy_reason",
}
"""Each time or energy figure of a run and the key of its reason when missing."""


def without_speed_figures(record: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """`record` with its time and energy figures missing for `reason`, where the trainer gave
    one (runtime.speed_reason: ranks sharing a GPU wait for each other, a correctness check):
    quality, memory and the rest stay."""
    if not reason:
        return record
    for figure, why in SPEED_FIGURES.items():
        record[figure] = None
        record[why] = reason
    return record


def run_record(
    folder: Path, framework: str, label: str, target_psnr_db: float | None, gain_db: float
) -> dict[str, Any]:
    """One row of the runs table: every figure of one framework's run, read from its records."""
    config = read_json(folder / "config.json")
    records = FrameworkRecords.read(folder, framework)
    if records is None:
        raise FileNotFoundError(f"{folder / framework / 'summary.json'}: no such file")
    summary, epochs, steps = records.summary, records.epochs(), records.steps()
    devices, hosts = records.devices(), records.hosts()
    final = records.final(epochs)
    world = summary.get("world_size") or 1
    warmup = config.get("profiler", {}).get("warmup_steps", 0)
    # Run-level step statistics over every epoch's steady steps, the same arithmetic as the
    # trainers' per-epoch figures (core.epochs.step_stats), not a median of per-epoch medians.
    stats = step_stats(steps, warmup) if steps else {"steady_reason": "no steps.jsonl rows"}
    tput = summary.get("throughput_steady_img_s")
    dispatch = summary.get("step_clock") == "host_dispatch"
    mfu_values = [e["mfu"] for e in epochs if e.get("mfu") is not None]
    gpu_reason = _first(hosts, "gpu_reason")
    mem_reason = None
    if summary.get("gpu_mem_alloc_peak_gib") is None:
        mem_reason = gpu_reason or (
            "the framework reported no allocator peak" if devices else "not recorded"
        )
    images = sum((e.get("throughput_img_s") or 0.0) * e["train_time_s"] for e in epochs)
    cpu_energy = [e.get("cpu_energy_j") for e in epochs]
    cpu_ok = bool(epochs) and all(v is not None for v in cpu_energy)
    noisy_psnr = final.get("noisy_psnr_db")
    target = target_psnr_db
    if target is None and noisy_psnr is not None:
        target = noisy_psnr + gain_db
    to_target = (
        time_to_target(epochs, target)
        if target is not None and epochs
        else {"target_reason": "no epoch records", "energy_target_reason": "no epoch records"}
    )
    mem_used = [e["gpu_mem_used_peak_gib"] for e in epochs if e.get("gpu_mem_used_peak_gib")]
    status = summary.get("status")
    error = summary.get("error") or summary.get("failed_process")
    if status == "diverged":  # the error says where: epoch and step
        error = f"diverged: {error}"
    record = {
        "run": label,
        "folder": str(folder),
        "framework": framework,
        "engine": summary.get("engine") or "native",
        "devices": int(world),
        "batch_per_device": int(config.get("train", {}).get("batch_size", 0)),
        "setup": _setup_id(config),
        "base_setup": _base_setup_id(config),
        # faithful / tuned / custom, as the trainer recorded it (config.speed_label)
        "speed_mode": (summary.get("runtime") or {}).get("mode") or config.get("mode") or None,
        "data_setup": _data_id(config),
        "device_kind": "GPU" if _is_gpu(summary, devices) else "CPU",
        "device": summary.get("device"),
        "strategy": summary.get("strategy"),
        "status": status,
        "error": error,
        "epochs_completed": summary.get("epochs_completed", len(epochs)),
        "data": summary.get("data"),
        "throughput_steady_img_s": tput,
        "throughput_per_device_img_s": tput / world if tput is not None else None,
        "throughput_reason": None
        if tput is not None
        else (stats.get("steady_reason") or f"not recorded (status {status})"),
        # single steps are device times only where the trainer waited for each one
        "step_time_p50_s": None if dispatch else stats.get("step_time_p50_s"),
        "step_time_p95_s": None if dispatch else stats.get("step_time_p95_s"),
        "step_time_reason": DISPATCH_REASON if dispatch else stats.get("steady_reason"),
        "data_wait_fraction": stats.get("data_wait_fraction"),
        "steady_reason": stats.get("steady_reason"),
        "mfu": _median(mfu_values),
        "mfu_reason": None if mfu_values else (final.get("mfu_reason") or "not recorded"),
        "gpu_mem_alloc_peak_gib": summary.get("gpu_mem_alloc_peak_gib"),
        "gpu_mem_used_peak_gib": max(mem_used) if mem_used else None,
        "gpu_mem_reason": mem_reason,
        "host_rss_peak_gib": summary.get("host_rss_peak_gib"),
        "host_rss_reason": None if summary.get("host_rss_peak_gib") else "not recorded",
        "gpu_energy_per_image_j": summary.get("gpu_energy_per_image_j"),
        "gpu_energy_per_epoch_j": summary.get("gpu_energy_per_epoch_j"),
        "gpu_energy_method": summary.get("gpu_energy_method"),
        "gpu_energy_reason": summary.get("gpu_energy_reason")
        or (None if summary.get("gpu_energy_j") is not None else "not recorded"),
        "energy_window_too_short": any(e.get("energy_window_too_short") for e in epochs),
        "cpu_energy_per_image_j": (sum(cpu_energy) / images) if cpu_ok and images else None,
        "cpu_energy_reason": None
        if cpu_ok
        else (_first(epochs, "cpu_energy_reason") or "not recorded"),
        "epoch_time_s": _median([e["train_time_s"] for e in epochs]),
        "epoch_time_reason": None if epochs else "no epoch records",
        "target_psnr_db": target,
        "epochs_to_target": to_target.get("epochs_to_target"),
        "time_to_target_s": to_target.get("time_to_target_s"),
        "energy_to_target_j": to_target.get("energy_to_target_j"),
        "target_reason": to_target.get("target_reason"),
        "energy_target_reason": to_target.get("energy_target_reason"),
        "test_mae": final.get("test_mae"),
        "test_psnr_db": final.get("test_psnr_db"),
        "test_ssim": final.get("test_ssim"),
        "noisy_psnr_db": noisy_psnr,
        "quality_reason": None if final else "no finished epoch",
        "wall_time_s": summary.get("wall_time_s"),
        **load_fields(summary),
    }
    return without_speed_figures(record, (summary.get("runtime") or {}).get("speed_reason"))
