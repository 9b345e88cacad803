"""The data of one run, the same for both trainers: the images, the split and the noisy test set
on disk, as NumPy arrays.

Both frameworks see the same images in the same order: the split is written once into the run
folder (and checked by whichever trainer comes second), the batch order of every epoch is a
NumPy permutation of (seed, epoch) (core.epochs.epoch_batches), and the noisy test images are
generated once from a seed (their scores, the noisy baseline, are the trainers': computed once,
on the device, by rank 0 alone). Only the training noise differs between frameworks: it is
drawn on the device by each one's own random ops, with the same statistics (core.noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from denoisebench.core.config import Config
from denoisebench.core.noise import noisy_test_set
from denoisebench.core.records import atomic_write_json, atomic_write_npz, read_json
from denoisebench.data.images import Images, load_images, make_split


@dataclass(frozen=True)
class RunData:
    """Everything a trainer needs from the data, as NumPy arrays (NHWC)."""

    train_u8: np.ndarray
    """Training images, uint8 (N, H, W, C)."""
    test_u8: np.ndarray
    """Clean test images, uint8: what the trainers put on the device."""
    test_clean: np.ndarray
    """Clean test images, float32 in [0, 1]: U8_TO_UNIT[test_u8], bit for bit."""
    test_noisy: np.ndarray
    """Noisy test images, float32 in [0, 1], identical for both frameworks."""
    description: str
    """What the images are (never calls other images EuroSAT)."""


SAMPLE_IMAGES = 32
"""Test images whose clean, noisy and output versions are saved for the report."""

U8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)
"""Each uint8 value as the float32 in [0, 1] the test set holds: the trainers index this table
on their devices, where a division need not round as NumPy's does (CUDA divides by a scalar
as a multiplication by its reciprocal), so both see the host's clean images bit for bit."""


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
    test_clean = test_u8.astype(np.float32) / 255.0  # U8_TO_UNIT[test_u8], bit for bit
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
        test_u8=test_u8,
        test_clean=test_clean,
        test_noisy=test_noisy,
        description=images.description,
    )
