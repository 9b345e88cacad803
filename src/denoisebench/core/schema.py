"""The records' schemas, one for both frameworks: what each field of a STEP row, an EPOCH
record and a summary means (name -> meaning, units in the name), and StepRow, the STEP row
typed. docs/results.md is checked against them (tests/test_docs.py). `shape_error` checks a
record read back against them (a field holding what its name says it does)."""

from __future__ import annotations

import json
from dataclasses import dataclass

STEP_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "epoch": "epoch index, from 0",
    "step": "global optimizer step, from 0",
    "rank": "process that measured the row: torch rank, or TensorFlow worker index",
    "replicas": "devices that process drives (1 for torch; N under MirroredStrategy)",
    "batch_size": "images this process trained on in this step",
    "loss": "mean training loss over this process' images (before the update)",
    "step_time_s": "time from the end of the previous step to the end of this one: CUDA events "
    "(PyTorch on a GPU), else the host clock; the devices are waited for once per epoch, after "
    "its last step, so the steps of an epoch add up to its training time",
    "warmup": "true for a process' first steps, left out of the steady figures: "
    "profiler.warmup_steps of them, and with CUDA graphs every step up to the capture",
    "data_wait_s": "part of step_time_s spent getting the step's batch indices (the images "
    "are already on the device)",
}
EPOCH_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "epoch": "epoch index, from 0",
    "steps": "optimizer steps in the epoch",
    "train_loss": "mean training loss over the epoch's batches",
    "test_loss": "loss on the noisy test split (same loss as training)",
    "test_mae": "mean absolute error of the outputs against the clean test images",
    "test_psnr_db": "mean per-image PSNR of the outputs, dB",
    "test_ssim": "mean per-image SSIM of the outputs",
    "noisy_psnr_db": "mean PSNR of the noisy inputs themselves (the baseline to beat), dB",
    "noisy_ssim": "mean SSIM of the noisy inputs",
    "train_time_s": "wall time of the epoch's training steps",
    "eval_time_s": "wall time of the test evaluation",
    "throughput_img_s": "training images per second over the epoch (warm-up included)",
    "profiler_reason": "why the profiler's figures are missing (profiler off), else null",
    "steady_steps": "steps after the warm-up (the STEP rows' warmup flag) in this epoch",
    "steady_reason": "why the steady-state figures are missing, else null",
    "step_time_p50_s": "median step time after warm-up, all ranks",
    "step_time_p95_s": "95th percentile step time after warm-up, all ranks",
    "data_wait_fraction": "share of step time spent waiting for input, after warm-up",
    "throughput_steady_img_s": "images/s after warm-up: all ranks' images / slowest rank's time",
    "throughput_per_device_img_s": "throughput_steady_img_s / devices",
    "model_flops_per_image": "training FLOPs per image from the spec (3 x forward)",
    "mfu": "model FLOP utilisation: achieved FLOP/s / (peak FLOP/s x devices)",
    "mfu_reason": "why mfu is missing (CPU, or a GPU not in hardware.py), else null",
    "gpu_energy_j": "energy of all GPUs over the epoch's training window, each GPU once",
    "gpu_energy_above_idle_j": "gpu_energy_j less the idle power over the same time",
    "gpu_energy_method": "nvml_energy_counter or power_integration",
    "gpu_energy_reason": "why GPU energy is missing, else null",
    "gpu_energy_per_image_j": "gpu_energy_j / training images of the epoch",
    "energy_window_too_short": "true when the window is shorter than profiler.min_window_s",
    "gpu_power_mean_w": "mean power of all GPUs together over the window, each GPU once",
    "gpu_util_mean_pct": "mean NVML utilisation over the window, averaged over GPUs",
    "gpu_mem_alloc_peak_gib": "framework allocator's peak (torch max_memory_allocated, TF peak)",
    "gpu_mem_reserved_peak_gib": "PyTorch's peak reserved memory (its caching allocator)",
    "gpu_mem_used_peak_gib": "NVML's peak device memory used (all processes on the GPU)",
    "host_rss_peak_gib": "peak resident memory of a training process and its children",
    "cpu_util_mean_pct": "process CPU time / (window x cores), mean over processes",
    "cpu_energy_j": "CPU package energy from RAPL over the window, each package of each "
    "host once (every rank reads its whole host's packages)",
    "cpu_energy_reason": "why cpu_energy_j is missing, else null",
}
SUMMARY_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "status": "running, completed, failed, interrupted (stopped by a signal; resumable), "
    "diverged (stopped after the epoch in which a training loss was not finite) or skipped "
    "(not started: its package is not installed on this machine)",
    "error": "the exception, when status is failed ('killed by SIGKILL: ...' for a process "
    "that a signal killed); where the loss stopped being finite, when status is diverged; "
    "why, when status is skipped",
    "diverged_at": "the first training loss that was not finite, when status is diverged: "
    "{epoch, step, rank} as in steps.jsonl (from 0), and the loss as text (nan, inf, -inf)",
    "failed_process": "which process failed first (its own exception is `error`), when a "
    "distributed job failed",
    "knock_on_errors": "the other processes' errors after the first failure (a broken "
    "collective, most often), as {process, error}",
    "signal": "the stop signal (SIGINT, SIGTERM, SIGHUP), when status is interrupted",
    "resume_command": "the command that continues the run, when status is interrupted",
    "history": "earlier attempts that failed, were interrupted or diverged, oldest first: their "
    "status, error, failed_process, signal, epochs_completed and updated, and diverged_at for "
    "one that diverged (cleared from the top level when the run is resumed)",
    "epochs_completed": "finished epochs",
    "epochs": "epochs asked for",
    "final": "the last EPOCH record",
    "wall_time_s": "training and evaluation time of all epochs, resumed parts summed",
    "throughput_img_s": "training images per second over all epochs",
    "device": "what the model ran on",
    "parameters": "trainable parameters",
    "data": "data description (never calls other images EuroSAT)",
    "world_size": "devices (replicas) training together",
    "processes": "processes (torch ranks, TensorFlow workers)",
    "global_batch": "images per optimizer step over all devices",
    "lr": "learning rate used (train.lr, times world_size when train.scale_lr)",
    "strategy": "how the devices were used: single, ddp, mirrored, multi_worker_mirrored, horovod",
    "engine": "what ran the devices: native (torchrun, tf.distribute) or horovod (horovodrun)",
    "step_clock": "what a step's time is: cuda_events (device time between CUDA events), "
    "host (host clock, the step finished on return) or host_dispatch (host clock while the "
    "device still works: TensorFlow on a GPU waits once an epoch, so single steps are not "
    "device times)",
    "runtime": "speed settings in effect (mode, precision, TF32, cuDNN autotune, XLA, compile, "
    "channels_last, CUDA graphs, threads)",
    "throughput_steady_img_s": "median over epochs of the steady-state throughput",
    "throughput_steady_min_img_s": "slowest epoch's steady-state throughput",
    "throughput_steady_max_img_s": "fastest epoch's steady-state throughput",
    "gpu_energy_j": "GPU energy of all epochs' training windows",
    "gpu_energy_per_image_j": "gpu_energy_j / training images",
    "gpu_energy_per_epoch_j": "gpu_energy_j / epochs",
    "gpu_energy_method": "how the GPU energy was measured",
    "gpu_mem_alloc_peak_gib": "framework allocator's peak over the run",
    "host_rss_peak_gib": "peak resident memory over the run",
    "conditions": "what else the machine did while the run trained (measure.conditions): other "
    "processes' share of the run's cores, steal, load per core; on GPUs clock ratio, throttle "
    "reasons, other processes, XID and ECC events; null figures with their reasons; rank 0's "
    "node's at the top, every node's under `hosts`, each named by its `host`",
    "disturbed": "whether the conditions of any node crossed a threshold (docs/measurements.md): "
    "the report then names no speed or energy winner from this run",
    "disturbed_reasons": "one sentence per crossed threshold, with the measured value (and the "
    "node's host first when the run has several nodes)",
    "tensorboard_skipped": "why no TensorBoard events were written though "
    "profiler.tensorboard is on (the tensorboard package is not installed); null otherwise",
}


@dataclass(frozen=True)
class StepRow:
    """One STEP record, typed (fields and order of STEP_FIELDS, which says what each means):
    what one process measured of one optimizer step. `dataclasses.asdict` gives the row as it is
    written to steps.jsonl."""

    framework: str
    epoch: int
    step: int
    rank: int
    replicas: int
    batch_size: int
    loss: float
    step_time_s: float
    warmup: bool
    data_wait_s: float


# --- the records' shapes, for a reader that must not trust them (report.discover.damage) -------

TEXT_FIELDS = {
    "framework", "status", "error", "failed_process", "signal", "resume_command", "device",
    "data", "strategy", "engine", "step_clock", "gpu_energy_method", "tensorboard_skipped",
    "updated",
}  # fmt: skip
"""Fields that hold text (or null); so do all that end in `_reason`."""
FLAG_FIELDS = {"disturbed", "energy_window_too_short", "warmup"}
OBJECT_FIELDS = {"final", "conditions", "runtime", "diverged_at"}
LIST_FIELDS = {"history", "knock_on_errors", "disturbed_reasons"}
KNOWN_FIELDS = {
    "step": set(STEP_FIELDS),
    "epoch": set(EPOCH_FIELDS),
    "summary": set(SUMMARY_FIELDS),
}


def _kind(field: str) -> tuple[type | tuple[type, ...], str]:
    """The JSON type a record field holds besides null, and its name for a message."""
    if field in TEXT_FIELDS or field.endswith("_reason"):
        return str, "text"
    if field in FLAG_FIELDS:
        return bool, "true or false"
    if field in OBJECT_FIELDS:
        return dict, "an object"
    if field in LIST_FIELDS:
        return list, "a list"
    return (int, float), "a number"


def shape_error(record: object, kind: str) -> str | None:
    """Why `record` (a parsed STEP row, EPOCH record or summary: `kind` step, epoch, summary)
    is not what its schema says, naming the field, the value and what it should hold; None if
    it is. A field the schema does not know is left alone (records of a later version); a known
    field may be null (a missing figure); a summary's `final` is an EPOCH record."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    for field, value in record.items():
        if field not in KNOWN_FIELDS[kind] or value is None:
            continue
        types, what = _kind(field)
        # JSON's true and false are Python ints too: a flag is no number, a number no flag
        wrong = isinstance(value, bool) != (types is bool) or not isinstance(value, types)
        if wrong:
            return f"{field!r} is {json_repr(value)}, not {what}"
    if kind == "summary" and isinstance(record.get("final"), dict):
        inner = shape_error(record["final"], "epoch")
        return f"'final': {inner}" if inner else None
    return None


def json_repr(value: object) -> str:
    """A value as a message shows it: its JSON, cut to 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
