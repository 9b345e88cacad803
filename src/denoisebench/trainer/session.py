"""What both trainers share for one run, in plain Python: the data, split and test set on disk,
the order of the batches, and the epoch bookkeeping.

Both frameworks see the same images in the same order: the split is written once into the run
folder (and checked by whichever trainer comes second), the batch order of every epoch is a
NumPy permutation of (seed, epoch), and the noisy test images are generated once from a seed.
Only the training noise differs between frameworks: it is drawn on the device by each one's own
random ops, with the same statistics (noise.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.core.config import Config, ConfigError, load_resolved
from denoisebench.core.distributed import maybe_delay_after_eval
from denoisebench.core.epochs import (
    Measured,
    epoch_line,
    measured_fields,
)
from denoisebench.core.noise import noisy_test_set
from denoisebench.core.records import (
    DISK_FULL,
    STOP_SIGNALS,
    Interrupted,
    RunRecorder,
    atomic_write_json,
    atomic_write_npz,
    disk_full_report,
    mark_interrupted,
    read_json,
    resume_command,
    write_failure,
)
from denoisebench.data.images import DataError, Images, load_images, make_split
from denoisebench.measure.environment import environment
from denoisebench.measure.hardware import peak_flops
from denoisebench.measure.profiler import Profiler, maybe_profile
from denoisebench.measure.quality import image_quality


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
    """The EPOCH record (records.EPOCH_FIELDS) from every rank's STEP records of the epoch.

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
        if _HELD["depth"]:  # inside uninterrupted(): raised when it ends
            _HELD["pending"] = signum
            return
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


_HELD: dict[str, Any] = {"depth": 0, "pending": None}


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold a stop signal back while an epoch's records and checkpoint are written, and raise
    it (`Interrupted`) once they are: a checkpoint is never cut by the signal (torch.save turns
    an exception in mid-write into its own RuntimeError, a traceback instead of a quiet stop),
    and the records, checkpoint and summary of an epoch end up all written or none."""
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
    if not _HELD["depth"] and _HELD["pending"] is not None:
        signum, _HELD["pending"] = _HELD["pending"], None
        raise Interrupted(signum)


def record_failure(rec: RunRecorder | None, e: BaseException, fw_dir: Path, process: str) -> None:
    """How a trainer process ended early. Every process that failed on an exception writes its
    own failure (records.write_failure), so the launcher can name the first one and list the
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


def end_epoch(
    rec: RunRecorder,
    cfg: Config,
    data: RunData,
    epoch: int,
    steps: list[dict[str, Any]],
    train_time_s: float,
    profiled: tuple[list[dict[str, Any]], list[dict[str, Any]], int] | None,
    times: tuple[float, float],
    evaluate: Callable[[], tuple[float, np.ndarray]],
    save: Callable[[int, float], None],
) -> float:
    """What the main process does after every epoch's steps, in both trainers: evaluate on the
    test split, write the epoch's records (durably, before the checkpoint: a resume drops
    records no checkpoint covers), save the checkpoint, mark the epoch done, print its line.

    `profiled`: the epoch's GPU rows, host rows and world size, None with the profiler off;
    `times`: the run's wall time before this epoch and the perf_counter() the epoch started at;
    `evaluate` returns the test loss and outputs; `save(epochs_done, wall_time_s)` writes the
    checkpoint. Returns the run's wall time after this epoch (training and evaluation)."""
    wall_before, t_epoch = times
    t_eval = time.perf_counter()
    test_loss, outputs = evaluate()
    maybe_delay_after_eval()
    devices, hosts, world_size = profiled or ([], [], 1)
    record = epoch_record(
        rec.framework,
        epoch,
        steps,
        train_time_s,
        time.perf_counter() - t_eval,
        test_loss,
        outputs,
        data,
        measured(cfg, devices, hosts, world_size) if profiled is not None else None,
    )
    wall_time_s = wall_before + time.perf_counter() - t_epoch
    with uninterrupted():
        rec.epoch(record, steps, devices, hosts)
        save(epoch + 1, wall_time_s)
        rec.summary(epochs_completed=epoch + 1)
    print(epoch_line(record, cfg.train.epochs), flush=True)
    return wall_time_s


def trainer_main(
    framework: str,
    train: Callable[..., Any],
    argv: list[str] | None,
    doc: str,
    devices_option: bool = False,
) -> None:
    """The command line both trainers share: `python -m <trainer> RUN_DIR [--resume]` (and
    `--devices N` for TensorFlow's MirroredStrategy). Stop signals become `Interrupted`; bad
    input and a full disk end with one line (exit 2 and 1), not a traceback."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run-id>, holding config.json")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    if devices_option:
        parser.add_argument(
            "--devices",
            type=int,
            default=1,
            help="replicas on this machine: GPUs, or logical CPU devices without GPUs",
        )
    args = parser.parse_args(argv)
    raise_on_sigterm()
    extra = {"devices": args.devices} if devices_option else {}
    try:
        train(load_resolved(args.run_dir / "config.json"), args.run_dir, args.resume, **extra)
    except USER_ERRORS as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(
            f"[{framework}] error: {disk_full_report(e, args.run_dir / framework)}", file=sys.stderr
        )
        sys.exit(1)
