"""The results folder: layout, record schemas and atomic writes, shared by both trainers.

    results/<run-id>/
        config.json           resolved config (profile < file < overrides)
        data.json             what data was used (source, description, counts)
        split.json            train and test indices into the canonical image order
        test_samples.npz      the first 32 test images: clean, noisy (shared), and their indices
        <framework>/          one per framework run: torch/ or tf/
            environment.json  library versions, CPU/GPU model, driver, git commit
            steps.jsonl       one STEP record per optimizer step and rank
            devices.jsonl     one row per GPU per epoch: energy, power, memory, utilisation
            hosts.jsonl       one row per process per epoch: RSS, CPU use, CPU energy
            gpu_samples.rank<r>.jsonl  every NVML sample, appended as taken (GPU runs)
            epochs.jsonl      one EPOCH record per finished epoch
            summary.json      status and final figures (SUMMARY)
            weights.npz       final weights in the canonical (PyTorch) layout, either framework
            test_outputs.npz  the final model's outputs for test_samples.npz
            checkpoints/      the last finished epoch, to --resume from
            trace/            the framework profiler's trace (profiler.trace_steps; off by default)

Every JSON file is written to a temporary name and renamed into place, so a reader never sees
half a file. The JSONL records are appended and fsynced at each epoch end; on resume, records
past the last checkpoint are dropped so the finished run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("torch", "tf")

# One schema for both frameworks. Name -> meaning (units in the name).
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
    "steady_steps": "steps after the warm-up (profiler.warmup_steps) in this epoch",
    "steady_reason": "why the steady-state figures are missing, else null",
    "step_time_p50_s": "median step time after warm-up, all ranks",
    "step_time_p95_s": "95th percentile step time after warm-up, all ranks",
    "data_wait_fraction": "share of step time spent waiting for input, after warm-up",
    "throughput_steady_img_s": "images/s after warm-up: all ranks' images / slowest rank's time",
    "throughput_per_device_img_s": "throughput_steady_img_s / devices",
    "model_flops_per_image": "training FLOPs per image from the spec (3 x forward)",
    "mfu": "model FLOP utilisation: achieved FLOP/s / (peak FLOP/s x devices)",
    "mfu_reason": "why mfu is missing (CPU, or a GPU not in hardware.py), else null",
    "gpu_energy_j": "energy of all GPUs over the epoch's training window",
    "gpu_energy_above_idle_j": "gpu_energy_j less the idle power over the same time",
    "gpu_energy_method": "nvml_energy_counter or power_integration",
    "gpu_energy_reason": "why GPU energy is missing, else null",
    "gpu_energy_per_image_j": "gpu_energy_j / training images of the epoch",
    "energy_window_too_short": "true when the window is shorter than profiler.min_window_s",
    "gpu_power_mean_w": "mean power of all GPUs together over the window",
    "gpu_util_mean_pct": "mean NVML utilisation over the window, averaged over GPUs",
    "gpu_mem_alloc_peak_gib": "framework allocator's peak (torch max_memory_allocated, TF peak)",
    "gpu_mem_reserved_peak_gib": "PyTorch's peak reserved memory (its caching allocator)",
    "gpu_mem_used_peak_gib": "NVML's peak device memory used (all processes on the GPU)",
    "host_rss_peak_gib": "peak resident memory of a training process and its children",
    "cpu_util_mean_pct": "process CPU time / (window x cores), mean over processes",
    "cpu_energy_j": "CPU package energy from RAPL over the window",
    "cpu_energy_reason": "why cpu_energy_j is missing, else null",
}
SUMMARY_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "status": "running, completed or failed",
    "error": "the exception, when status is failed",
    "failed_process": "which process failed first, when a distributed job failed",
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
    "strategy": "how the devices were used: single, ddp, mirrored, multi_worker_mirrored",
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
}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_npz(path: Path, *arrays: Any, **named: Any) -> None:
    """np.savez to a temporary name, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, *arrays, **named)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def new_run_id(profile: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{Path(profile).stem}"


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError) as e:
        return {"commit": None, "reason": f"git unavailable: {e}"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_info() -> dict[str, Any]:
    """GPU names and driver from NVML; missing with the reason where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # no library, no driver, no device: all mean "no NVML here"
        return {"gpus": None, "reason": f"NVML unavailable: {e}"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "memory_total_gib": mem.total / 2**30,
                }
            )
        return {"gpus": gpus, "driver": pynvml.nvmlSystemGetDriverVersion()}
    finally:
        pynvml.nvmlShutdown()


def local_device_kind(device_choice: str) -> str:
    """ "gpu" where a run with train.device=`device_choice` trains on this machine's GPUs,
    else "cpu": which table of a speed mode (profiles/modes/) applies here."""
    return "gpu" if device_choice != "cpu" and gpu_info()["gpus"] else "cpu"


def environment(framework: str) -> dict[str, Any]:
    packages = ["numpy", "scikit-image", "nvidia-ml-py"]
    packages += ["torch"] if framework == "torch" else ["tensorflow", "tensorflow-cpu", "keras"]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git": git_commit(),
        **gpu_info(),
    }


class RunRecorder:
    """Writes one framework's records into results/<run-id>/<framework>/."""

    def __init__(self, run_dir: Path, framework: str) -> None:
        self.dir = Path(run_dir) / framework
        self.framework = framework
        self.checkpoint_dir = self.dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def write_environment(self, env: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "environment.json", env)

    def truncate_after(self, epochs_done: int) -> None:
        """Drop records of epochs that no checkpoint covers (an interrupted epoch)."""
        for name in ("steps.jsonl", "devices.jsonl", "hosts.jsonl", "epochs.jsonl"):
            kept = [r for r in read_jsonl(self.dir / name) if r["epoch"] < epochs_done]
            atomic_write_text(self.dir / name, "".join(json.dumps(r) + "\n" for r in kept))

    def epoch(
        self,
        record: dict[str, Any],
        steps: list[dict[str, Any]],
        devices: list[dict[str, Any]] | None = None,
        hosts: list[dict[str, Any]] | None = None,
    ) -> None:
        """Append an epoch's STEP rows (every rank's), its per-GPU and per-process profiler
        rows, and its EPOCH record (last, so a record never exists without its rows), durably."""
        epoch = record["epoch"]
        tables = (
            ("steps.jsonl", steps),
            ("devices.jsonl", [{"epoch": epoch, **d} for d in devices or []]),
            ("hosts.jsonl", [{"epoch": epoch, **h} for h in hosts or []]),
            ("epochs.jsonl", [record]),
        )
        for name, rows in tables:
            with open(self.dir / name, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
                f.flush()
                os.fsync(f.fileno())

    def write_weights(self, weights: list[Any]) -> None:
        """weights.npz: canonical-layout arrays arr_0, arr_1, ... = W0, b0, W1, b1, ..."""
        atomic_write_npz(self.dir / "weights.npz", *weights)

    def write_outputs(self, outputs: np.ndarray) -> None:
        """test_outputs.npz: the model's outputs for the run's test_samples.npz (NHWC)."""
        atomic_write_npz(self.dir / "test_outputs.npz", outputs=outputs.astype(np.float32))

    def epochs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dir / "epochs.jsonl")

    def summary(self, **fields: Any) -> None:
        path = self.dir / "summary.json"
        current = read_json(path) if path.exists() else {}
        current.update(fields, framework=self.framework, updated=utc_now())
        atomic_write_json(path, current)


def mark_failed(run_dir: Path, framework: str, error: str) -> None:
    """Record a failure the trainer could not record itself (it was killed, or never started).

    A summary that already holds the trainer's own error keeps it; `failed_process` says which
    process failed first (a worker's crash shows on the others as a broken collective).
    """
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") != "failed" or not current.get("error"):
        current.update(status="failed", error=error)
    current.update(framework=framework, failed_process=error, updated=utc_now())
    atomic_write_json(path, current)
