"""What both trainers share for one run, in plain Python: the data, split and test set on disk,
the order of the batches, and the epoch bookkeeping.

Both frameworks see the same images in the same order: the split is written once into the run
folder (and checked by whichever trainer comes second), the batch order of every epoch is a
NumPy permutation of (seed, epoch), and the noisy test images are generated once from a seed.
Only the training noise differs between frameworks: it is drawn on the device by each one's own
random ops, with the same statistics (noise.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.config import Config, ConfigError
from denoisebench.data import DataError, Images, load_images, make_split
from denoisebench.metrics import image_quality
from denoisebench.noise import noisy_test_set
from denoisebench.results import RunRecorder, atomic_write_json, read_json


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


class SplitMismatchError(RuntimeError):
    """The run folder's split.json disagrees with the split computed now."""


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


def epoch_record(
    framework: str,
    epoch: int,
    steps: list[dict[str, Any]],
    train_time_s: float,
    eval_time_s: float,
    test_loss: float,
    outputs: np.ndarray,
    data: RunData,
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
    return {
        "status": "completed",
        "epochs_completed": len(epochs),
        "final": epochs[-1],
        "wall_time_s": wall_time_s,
        "throughput_img_s": images / train_time_s,
        "parameters": parameters,
        "data": data.description,
        **world,
    }


# Errors that mean bad input rather than a bug: entry points print these without a traceback.
USER_ERRORS = (ConfigError, DataError, SplitMismatchError)
