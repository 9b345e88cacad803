"""What both trainers share for one run, in plain Python: the data, split and test set on disk,
the order of the batches, and the epoch bookkeeping.

Both frameworks see the same images in the same order: the split is written once into the run
folder (and checked by whichever trainer comes second), the batch order of every epoch is a
NumPy permutation of (seed, epoch), and the noisy test images are generated once from a seed.
Only the training noise differs between frameworks: it is drawn on the device by each one's own
random ops, with the same statistics (noise.py).
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.config import Config, ConfigError
from denoisebench.data import DataError, Images, load_images, make_split
from denoisebench.hardware import peak_flops
from denoisebench.metrics import image_quality
from denoisebench.noise import noisy_test_set
from denoisebench.profiler import Profiler, maybe_profile
from denoisebench.results import (
    STOP_SIGNALS,
    Interrupted,
    RunRecorder,
    atomic_write_json,
    atomic_write_npz,
    environment,
    mark_interrupted,
    read_json,
    resume_command,
    write_failure,
)


@dataclass(frozen=True)
class RunData:
    """Everything a trainer needs from the data, as NumPy arrays (NHWC)."""

    train_u8: np.ndarray
    """Training images, uint8 (N, H, W, C)."""
    test_clean: np.ndarray
    """Clean test images, float32 in [0, 1]."""
    test_noisy: np.ndarray
    """Noisy test images, float32 in [0, 1], identical for both frameworks."""
    noisy_quality: dict[str, float]
    """MAE/PSNR/SSIM of the noisy test inputs: the baseline a denoiser must beat."""
    description: str
    """What the images are (never calls other images EuroSAT)."""


SAMPLE_IMAGES = 32
"""Test images whose clean, noisy and output versions are saved for the report."""


class SplitMismatchError(RuntimeError):
    """The run folder's split.json disagrees with the split computed now."""


def announce(rec: RunRecorder, cfg: Config, world: dict[str, Any]) -> None:
    """What every run records as it starts: its environment, a 'running' summary, one line."""
    rec.write_environment(environment(rec.framework) | {"device": world["device"]})
    rec.summary(status="running", error=None, epochs=cfg.train.epochs, **world)
    print(
        f"[{rec.framework}] {world['strategy']} on {world['device']}: global batch "
        f"{world['global_batch']} ({cfg.train.batch_size} per device), lr {world['lr']:g}",
        flush=True,
    )


def run_profiler(
    cfg: Config, run_dir: Path, framework: str, gpus: list[int], rank: int
) -> AbstractContextManager[Profiler | None]:
    """This process' profiler (maybe_profile), its GPU samples spooled into the run folder."""
    spool = Path(run_dir) / framework / f"gpu_samples.rank{rank}.jsonl"
    if gpus:
        spool.parent.mkdir(parents=True, exist_ok=True)
    return maybe_profile(
        cfg.profiler.enabled,
        devices=gpus,
        rank=rank,
        spool=spool,
        interval_s=cfg.profiler.sample_interval_s,
        min_window_s=cfg.profiler.min_window_s,
    )


def prepare_data(cfg: Config, run_dir: Path, is_main: bool = True) -> RunData:
    """Load the images, write (or check) split.json and data.json, build the noisy test set.

    Only the main process (rank 0) touches the run folder; the others compute the same split.
    """
    t0 = time.perf_counter()
    images: Images = load_images(cfg.data, cfg.model.image_size, seed=cfg.train.seed)
    split = make_split(len(images.images), cfg.data)
    split_json = {"train": split.train.tolist(), "test": split.test.tolist()}
    path = Path(run_dir) / "split.json"
    if is_main and path.exists():
        if read_json(path) != split_json:
            raise SplitMismatchError(
                f"{path}: the split on disk differs from the one computed from the config; "
                "the frameworks would not see the same data"
            )
    elif is_main:
        atomic_write_json(path, split_json)
    if is_main and not (Path(run_dir) / "data.json").exists():
        atomic_write_json(
            Path(run_dir) / "data.json",
            {
                "source": images.source,
                "description": images.description,
                "images": len(images.images),
                "train": len(split.train),
                "test": len(split.test),
                "image_shape": list(images.images.shape[1:]),
                "test_names": [images.names[i] for i in split.test[:50]],
            },
        )
    test_u8 = images.images[split.test]
    test_clean = test_u8.astype(np.float32) / 255.0
    test_noisy = noisy_test_set(test_u8, cfg.noise)
    samples = Path(run_dir) / "test_samples.npz"
    if is_main and not samples.exists():  # for the report: image grid, classical baselines
        atomic_write_npz(
            samples,
            clean=test_clean[:SAMPLE_IMAGES],
            noisy=test_noisy[:SAMPLE_IMAGES],
            index=split.test[:SAMPLE_IMAGES],
        )
    if is_main:
        print(
            f"data: {images.description}; {len(split.train)} train / {len(split.test)} test "
            f"({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
    return RunData(
        train_u8=images.images[split.train],
        test_clean=test_clean,
        test_noisy=test_noisy,
        noisy_quality=image_quality(test_clean, test_noisy),
        description=images.description,
    )


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


def peak_precision(cfg: Config) -> str:
    """The hardware.py precision a run's convolutions use: its mixed-precision dtype, else
    TF32 or plain float32."""
    if cfg.runtime.precision != "float32":
        return {"bfloat16": "bf16", "float16": "fp16"}[cfg.runtime.precision]
    return "tf32" if cfg.runtime.tf32 else "fp32"


def measured(
    cfg: Config, devices: list[dict[str, Any]], hosts: list[dict[str, Any]], world_size: int
) -> Measured:
    """Bundle an epoch's gathered profiler rows with what MFU needs (precision, peak)."""
    precision = peak_precision(cfg)
    name = devices[0]["device_name"] if devices else None
    peak, reason = peak_flops(name, precision)
    return Measured(
        devices=devices,
        hosts=hosts,
        warmup_steps=cfg.profiler.warmup_steps,
        flops_per_image=3.0 * cfg.model.forward_flops_per_image(),
        peak_flops=peak,
        peak_reason=reason,
        world_size=world_size,
    )


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
    energy = _sum_or_none(m.devices, "energy_j")
    out["gpu_energy_j"] = energy
    out["gpu_energy_above_idle_j"] = _sum_or_none(m.devices, "energy_above_idle_j")
    out["gpu_energy_method"] = (
        ",".join(sorted({d["energy_method"] for d in m.devices if d.get("energy_method")})) or None
    )
    out["gpu_energy_reason"] = (
        gpu_reason
        if not m.devices
        else (None if energy is not None else "a device had no energy counter and no power samples")
    )
    out["gpu_energy_per_image_j"] = energy / images if energy is not None and images else None
    out["energy_window_too_short"] = any(d.get("energy_window_too_short") for d in m.devices)
    out["gpu_power_mean_w"] = _sum_or_none(m.devices, "power_mean_w")
    out["gpu_util_mean_pct"] = (
        float(np.mean([d["util_mean_pct"] for d in m.devices]))
        if m.devices and all(d.get("util_mean_pct") is not None for d in m.devices)
        else None
    )
    out["gpu_mem_alloc_peak_gib"] = _max_or_none(m.devices, "alloc_peak_gib")
    out["gpu_mem_reserved_peak_gib"] = _max_or_none(m.devices, "reserved_peak_gib")
    out["gpu_mem_used_peak_gib"] = _max_or_none(m.devices, "mem_used_max_gib")
    out["host_rss_peak_gib"] = _max_or_none(m.hosts, "rss_peak_gib")
    out["cpu_util_mean_pct"] = (
        float(np.mean([h["cpu_util_pct"] for h in m.hosts])) if m.hosts else None
    )
    out["cpu_energy_j"] = _sum_or_none(m.hosts, "cpu_energy_j")
    out["cpu_energy_reason"] = next(
        (h["cpu_energy_reason"] for h in m.hosts if h.get("cpu_energy_reason")), None
    )
    return out


def epoch_record(
    framework: str,
    epoch: int,
    steps: list[dict[str, Any]],
    train_time_s: float,
    eval_time_s: float,
    test_loss: float,
    outputs: np.ndarray,
    data: RunData,
    measured: Measured | None = None,
) -> dict[str, Any]:
    """The EPOCH record (results.EPOCH_FIELDS) from every rank's STEP records of the epoch.

    train_time_s is the slowest rank's, so the throughput is what the whole job achieved.
    """
    quality = image_quality(data.test_clean, outputs)
    images = sum(r["batch_size"] for r in steps)
    return {
        "framework": framework,
        "epoch": epoch,
        "steps": len({r["step"] for r in steps}),
        "train_loss": float(
            np.average([r["loss"] for r in steps], weights=[r["batch_size"] for r in steps])
        ),
        "test_loss": float(test_loss),
        "test_mae": quality["mae"],
        "test_psnr_db": quality["psnr_db"],
        "test_ssim": quality["ssim"],
        "noisy_psnr_db": data.noisy_quality["psnr_db"],
        "noisy_ssim": data.noisy_quality["ssim"],
        "train_time_s": train_time_s,
        "eval_time_s": eval_time_s,
        "throughput_img_s": images / train_time_s if train_time_s > 0 else None,
        **measured_fields(steps, measured),
    }


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
    rec: RunRecorder, wall_time_s: float, parameters: int, data: RunData, world: dict[str, Any]
) -> dict[str, Any]:
    """The SUMMARY fields of a finished run (results.SUMMARY_FIELDS), from its epoch records."""
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
        "data": data.description,
        **world,
    }


# Errors that mean bad input rather than a bug: entry points print these without a traceback.
USER_ERRORS = (ConfigError, DataError, SplitMismatchError)


def raise_on_sigterm() -> None:
    """Turn the first stop signal into `Interrupted`, so the run folder is marked interrupted
    (record_failure) instead of the process vanishing mid-epoch: SIGTERM from the launcher,
    torchrun or SLURM, SIGINT from Ctrl-C, SIGHUP. Later ones do nothing: a terminal's Ctrl-C
    reaches the launcher and its children alike, and the launcher then sends its SIGTERM
    (SLURM, too, signals every process of a job step); a second exception would cut the record
    short."""
    stopping = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def record_failure(rec: RunRecorder | None, e: BaseException, fw_dir: Path, process: str) -> None:
    """How a trainer process ended early. Every process that failed on an exception writes its
    own failure (results.write_failure), so the launcher can name the first one and list the
    others' knock-on errors; rank 0 (`rec`; other ranks pass None) also records the summary:
    'interrupted' with the signal, the epochs finished and the command that resumes it, for
    `Interrupted`; else 'failed' with the exception. The caller re-raises `e`: Interrupted is a
    SystemExit, so the process then ends quietly with 128 + the signal number."""
    if not isinstance(e, Interrupted):
        write_failure(fw_dir, process, f"{type(e).__name__}: {e}")
    if rec is None:
        return
    try:
        if isinstance(e, Interrupted):
            resume = resume_command(rec.dir.parent)
            mark_interrupted(rec.dir.parent, rec.framework, e.signal, resume)
            done = read_json(rec.dir / "summary.json")["epochs_completed"]
            print(
                f"[{rec.framework}] interrupted by {e.signal} after {done} finished epoch(s); "
                f"continue with: {resume}",
                file=sys.stderr,
                flush=True,
            )
        else:
            rec.summary(status="failed", error=f"{type(e).__name__}: {e}")
    except OSError as write_error:  # a full disk: the summary keeps its last whole state
        print(
            f"[{rec.framework}] could not record this in {rec.dir / 'summary.json'}: {write_error}",
            file=sys.stderr,
            flush=True,
        )
