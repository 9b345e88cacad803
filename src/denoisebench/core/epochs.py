"""Epoch bookkeeping both trainers and the report share, framework-free: the batch order of an
epoch, which steps are warm-up, step-time and throughput statistics, the profiler's figures of an
epoch record, the one line per epoch, and a finished run's summary fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from denoisebench.core.config import Config, ConfigError
from denoisebench.core.records import RunRecorder


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches of one epoch: a permutation of (seed, epoch) cut into full global batches.

    The remainder (n mod global_batch images) is skipped for that epoch, a different set each
    epoch, so every step has exactly the global batch and N devices split it evenly.
    """
    if global_batch > n:
        raise ConfigError(
            f"the global batch ({global_batch} = train.batch_size x devices) is larger than the "
            f"training split ({n} images): lower --batch-size or use more data"
        )
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // global_batch
    return [order[i * global_batch : (i + 1) * global_batch] for i in range(steps)]


@dataclass(frozen=True)
class Measured:
    """What the profiler and the framework's allocator measured for one epoch, all ranks."""

    devices: list[dict[str, Any]]
    """One row per GPU (profiler.Profiler.window_end), with the allocator's peaks added."""
    hosts: list[dict[str, Any]]
    """One row per process: RSS, CPU utilisation, CPU energy."""
    warmup_steps: int
    flops_per_image: float
    """Training FLOPs per image (3 x forward: forward, then backward at twice its cost)."""
    peak_flops: float | None
    """Peak FLOP/s of one device at the precision used; None when unknown."""
    peak_reason: str | None
    world_size: int


def warmup_steps(cfg: Config, capture_step: int | None = None) -> int:
    """How many of a training process' first steps are warm-up, left out of the steady figures:
    `profiler.warmup_steps`, and with a CUDA graph at least every step up to and including the
    one that captures it (`capture_step`, counted from 0 in this process)."""
    n = cfg.profiler.warmup_steps
    return n if capture_step is None else max(n, capture_step + 1)


def is_warmup(row: dict[str, Any], warmup_steps: int) -> bool:
    """A STEP row's own warm-up flag; rows written before the flag existed count the first
    `warmup_steps` global steps."""
    return bool(row["warmup"]) if "warmup" in row else row["step"] < warmup_steps


def step_stats(steps: list[dict[str, Any]], warmup_steps: int) -> dict[str, Any]:
    """Step-time percentiles, data-wait fraction and steady-state throughput of some STEP rows.

    Warm-up rows (is_warmup) are left out. Throughput is the images of all ranks over the
    slowest rank's summed step time, not rank 0's figure times the world size.
    """
    steady = [r for r in steps if not is_warmup(r, warmup_steps)]
    if not steady:
        return {
            "steady_steps": 0,
            "step_time_p50_s": None,
            "step_time_p95_s": None,
            "data_wait_fraction": None,
            "throughput_steady_img_s": None,
            "steady_reason": "every step of this epoch is warm-up",
        }
    times = [r["step_time_s"] for r in steady]
    per_rank: dict[int, float] = {}
    for r in steady:
        per_rank[r["rank"]] = per_rank.get(r["rank"], 0.0) + r["step_time_s"]
    return {
        "steady_steps": len({r["step"] for r in steady}),
        "step_time_p50_s": float(np.percentile(times, 50)),
        "step_time_p95_s": float(np.percentile(times, 95)),
        "data_wait_fraction": sum(r["data_wait_s"] for r in steady) / sum(times),
        "throughput_steady_img_s": sum(r["batch_size"] for r in steady) / max(per_rank.values()),
        "steady_reason": None,
    }


def _sum_or_none(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r.get(key) for r in rows]
    return float(sum(values)) if rows and all(v is not None for v in values) else None


def _max_or_none(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(max(values)) if values else None


def once_per_gpu(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per physical GPU: the lowest rank's among rows of one (host, gpu_id). Every
    process that drives a GPU reads the whole GPU's counter (two ranks on one GPU, MIG slices
    of one GPU), so its energy and power are counted once. A row without a gpu_id (NVML gave
    no UUID or bus id) is its own GPU."""
    seen: dict[Any, dict[str, Any]] = {}
    for i, d in enumerate(sorted(devices, key=lambda d: d.get("rank", 0))):
        key = (d.get("host"), d["gpu_id"]) if d.get("gpu_id") else i
        seen.setdefault(key, d)
    return list(seen.values())


def cpu_energy_once(hosts: list[dict[str, Any]]) -> float | None:
    """CPU energy of an epoch's process rows, each package of each host once: every process
    reads its whole host's RAPL counters, so the lowest rank's reading of a (host, package)
    stands for all. None when a process had no reading (no partial sums); a row without its
    packages (`cpu_energy_packages_j`) counts as its host's one reading."""
    if not hosts or any(h.get("cpu_energy_j") is None for h in hosts):
        return None
    readings: dict[tuple[Any, str], float] = {}
    for h in sorted(hosts, key=lambda h: h.get("rank", 0)):
        packages = h.get("cpu_energy_packages_j") or {"all packages": h["cpu_energy_j"]}
        for package, joules in packages.items():
            readings.setdefault((h.get("host"), package), joules)
    return float(sum(readings.values()))


def measured_fields(steps: list[dict[str, Any]], m: Measured | None) -> dict[str, Any]:
    """The EPOCH record's speed, memory and energy fields; missing ones carry a reason."""
    if m is None:
        reason = "profiler off (profiler.enabled = false)"
        return {"profiler_reason": reason, **step_stats(steps, 0)}
    stats = step_stats(steps, m.warmup_steps)
    images = sum(r["batch_size"] for r in steps)
    out: dict[str, Any] = {"profiler_reason": None, **stats}
    out["throughput_per_device_img_s"] = (
        stats["throughput_steady_img_s"] / m.world_size
        if stats["throughput_steady_img_s"]
        else None
    )
    achieved = (stats["throughput_steady_img_s"] or 0.0) * m.flops_per_image
    out["model_flops_per_image"] = m.flops_per_image
    out["mfu"] = (
        achieved / (m.peak_flops * m.world_size)
        if m.peak_flops and stats["throughput_steady_img_s"]
        else None
    )
    out["mfu_reason"] = (
        None if out["mfu"] is not None else (m.peak_reason or stats["steady_reason"])
    )

    gpu_reason = next((h.get("gpu_reason") for h in m.hosts if h.get("gpu_reason")), None)
    gpus = once_per_gpu(m.devices)
    energy = _sum_or_none(gpus, "energy_j")
    out["gpu_energy_j"] = energy
    out["gpu_energy_above_idle_j"] = _sum_or_none(gpus, "energy_above_idle_j")
    out["gpu_energy_method"] = (
        ",".join(sorted({d["energy_method"] for d in gpus if d.get("energy_method")})) or None
    )
    out["gpu_energy_reason"] = (
        gpu_reason
        if not gpus
        else (None if energy is not None else "a device had no energy counter and no power samples")
    )
    out["gpu_energy_per_image_j"] = energy / images if energy is not None and images else None
    out["energy_window_too_short"] = any(d.get("energy_window_too_short") for d in gpus)
    out["gpu_power_mean_w"] = _sum_or_none(gpus, "power_mean_w")
    out["gpu_util_mean_pct"] = (
        float(np.mean([d["util_mean_pct"] for d in gpus]))
        if gpus and all(d.get("util_mean_pct") is not None for d in gpus)
        else None
    )
    out["gpu_mem_alloc_peak_gib"] = _max_or_none(m.devices, "alloc_peak_gib")
    out["gpu_mem_reserved_peak_gib"] = _max_or_none(m.devices, "reserved_peak_gib")
    out["gpu_mem_used_peak_gib"] = _max_or_none(m.devices, "mem_used_max_gib")
    out["host_rss_peak_gib"] = _max_or_none(m.hosts, "rss_peak_gib")
    out["cpu_util_mean_pct"] = (
        float(np.mean([h["cpu_util_pct"] for h in m.hosts])) if m.hosts else None
    )
    out["cpu_energy_j"] = cpu_energy_once(m.hosts)
    out["cpu_energy_reason"] = next(
        (h["cpu_energy_reason"] for h in m.hosts if h.get("cpu_energy_reason")), None
    )
    return out


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """The one line per epoch that both trainers print."""
    return (
        f"[{rec['framework']}] epoch {rec['epoch'] + 1}/{epochs}  "
        f"train {rec['train_loss']:.4f}  test {rec['test_loss']:.4f}  "
        f"PSNR {rec['test_psnr_db']:.2f} dB (noisy {rec['noisy_psnr_db']:.2f})  "
        f"SSIM {rec['test_ssim']:.3f}  {rec['throughput_img_s']:.0f} img/s  "
        f"({rec['train_time_s']:.1f}s + eval {rec['eval_time_s']:.1f}s)"
    )


def final_summary(
    rec: RunRecorder, wall_time_s: float, parameters: int, data: str, world: dict[str, Any]
) -> dict[str, Any]:
    """The SUMMARY fields of a finished run (schema.SUMMARY_FIELDS), from its epoch records;
    `data` is the data description (trainer.rundata.RunData)."""
    epochs = rec.epochs()
    train_time_s = sum(r["train_time_s"] for r in epochs)
    images = sum(r["throughput_img_s"] * r["train_time_s"] for r in epochs)
    steady = [e["throughput_steady_img_s"] for e in epochs if e.get("throughput_steady_img_s")]
    energy = [e.get("gpu_energy_j") for e in epochs]
    energy_j = float(sum(energy)) if all(v is not None for v in energy) else None
    methods = {e.get("gpu_energy_method") for e in epochs} - {None}
    return {
        "status": "completed",
        "epochs_completed": len(epochs),
        "final": epochs[-1],
        "wall_time_s": wall_time_s,
        "throughput_img_s": images / train_time_s,
        "throughput_steady_img_s": float(np.median(steady)) if steady else None,
        "throughput_steady_min_img_s": min(steady) if steady else None,
        "throughput_steady_max_img_s": max(steady) if steady else None,
        "gpu_energy_j": energy_j,
        "gpu_energy_per_image_j": energy_j / images if energy_j is not None else None,
        "gpu_energy_per_epoch_j": energy_j / len(epochs) if energy_j is not None else None,
        "gpu_energy_method": ",".join(sorted(methods)) or None,
        "gpu_energy_reason": epochs[-1].get("gpu_energy_reason"),
        "gpu_mem_alloc_peak_gib": _max_or_none(epochs, "gpu_mem_alloc_peak_gib"),
        "host_rss_peak_gib": _max_or_none(epochs, "host_rss_peak_gib"),
        "parameters": parameters,
        "data": data,
        **world,
    }
