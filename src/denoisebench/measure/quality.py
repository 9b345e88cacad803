"""Image quality on the test split: MAE, PSNR and SSIM, computed the same way for both frameworks.

On a CPU both trainers hand their test outputs here as NumPy arrays, so the figures that compare
the frameworks come from one implementation (on a GPU, see the end). PSNR and SSIM are computed
per image and averaged; SSIM is the Gaussian-weighted form of Wang et al. (2004) (11x11 window, sigma 1.5,
population covariance), the same as `tf.image.ssim` and as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
channel_axis=-1)`, which tests/test_metrics.py holds it to (within 2e-6 per image).

Why not call scikit-image per image: every epoch evaluates the whole test split, and on a GPU
the per-image loop was the slowest part of an epoch (the paper's 2,000 test images: about 7 s on
two CPU cores, while a GPU trains the epoch in under a second; measured on an H200,
results/benchmarks/gpu_check_h200_2026-11-26). Here the same arithmetic runs on blocks of
images with scipy's 1-D Gaussian filter (which skimage calls too) in threads, which it releases
the GIL for. Two more savings: skimage averages SSIM over the image less a 5-pixel border, and
the 11-tap window of a pixel inside that border never reaches the image's edge, so each blur
keeps only those rows (then columns) as soon as it has them, and everything after the blurs
works on 54x54 instead of 64x64; the maps are float32 (scipy filters in float64 inside either
way), which keeps each image's SSIM within 2e-6 of skimage's float64 figure. On two cores:
2,000 images in 1.6 s instead of 2.1 s (`python -m denoisebench.measure.quality`).

On a GPU that is still more than a training epoch: an H200 trained the paper's epoch in 0.5 s
and ran the test split's forward pass in 0.1 s, yet each epoch took about 1.1 s more; on two
CPU cores the same gap (1.6 s an epoch) is exactly this function's time. So on a GPU the
trainers compute the same figures on the device with their framework (`image_metrics` in
torch_backend/model.py, with pytorch-msssim, and in tf_backend/model.py, with tf.image.ssim),
sum them there in float64 over the epoch and bring the sums back at once (`from_sums`; each
backend's evaluation.py); tests/test_metrics.py holds both to skimage image by image.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import gaussian_filter1d

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's: an 11x11 window at sigma 1.5
SSIM_CROP = 5  # (window - 1) // 2: skimage averages S over the image less this border
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW = 2 * SSIM_CROP + 1  # 11
PSNR_CAP_DB = 100.0  # identical images: a finite PSNR, so that a mean stays finite
BLOCK = 64  # images per filter call: small enough to stay in cache


def ssim_per_image(clean: np.ndarray, images: np.ndarray) -> np.ndarray:
    """SSIM of each image against its clean one; NHWC floats in [0, 1] (data range 1)."""
    c = SSIM_CROP

    def blur(z: np.ndarray) -> np.ndarray:
        # height, then width, each cropped to the border-free interior once filtered; the
        # interior's windows stay inside the image, so the border mode never matters there
        for axis in (1, 2):
            z = gaussian_filter1d(z, SSIM_SIGMA, axis=axis, truncate=SSIM_TRUNCATE, mode="reflect")
            z = z[:, c:-c] if axis == 1 else z[:, :, c:-c]
        return z

    x, y = clean.astype(np.float32), images.astype(np.float32)
    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3), dtype=np.float64)


def psnr_per_image(clean: np.ndarray, images: np.ndarray) -> np.ndarray:
    """PSNR (dB, data range 1) of each image; identical images are capped at 100 dB, so that a
    mean stays finite."""
    mse = np.mean((clean - images) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / mse), PSNR_CAP_DB)


def image_quality(clean: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Mean MAE, PSNR (dB) and SSIM of `images` against `clean`; NHWC floats in [0, 1]."""
    if clean.shape != images.shape:
        raise ValueError(f"shape mismatch: clean {clean.shape} vs images {images.shape}")
    starts = range(0, len(clean), BLOCK)

    def block(i: int) -> tuple[np.ndarray, np.ndarray, float]:
        # float64 a block at a time (the whole split at once is 400 MB at the paper's size)
        x = clean[i : i + BLOCK].astype(np.float64)
        y = np.clip(images[i : i + BLOCK].astype(np.float64), 0.0, 1.0)
        return psnr_per_image(x, y), ssim_per_image(x, y), float(np.abs(y - x).sum())

    workers = max(1, min(len(starts), cpus(), 16))
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(block, starts))
    return summarize(
        np.concatenate([p for p, _, _ in parts]),
        np.concatenate([s for _, s, _ in parts]),
        sum(m for _, _, m in parts),
        clean.size,
    )


def cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def summarize(psnr_db: np.ndarray, ssim: np.ndarray, abs_sum: float, size: int) -> dict[str, float]:
    """The figures of an epoch (mean MAE, PSNR, SSIM) from per-image PSNR and SSIM and the sum
    of |output - clean| over `size` elements: image_quality's, or a framework's own computed on
    its device with the definitions above (the trainers' `image_metrics`)."""
    return {
        "mae": float(abs_sum) / size,
        "psnr_db": float(np.mean(psnr_db, dtype=np.float64)),
        "ssim": float(np.mean(ssim, dtype=np.float64)),
    }


def from_sums(
    psnr_sum: float, ssim_sum: float, abs_sum: float, images: int, size: int
) -> dict[str, float]:
    """summarize's figures from the sums of per-image PSNR and SSIM over `images` images and of
    |output - clean| over `size` elements, as a trainer reduces them on its device (float64)."""
    return {"mae": float(abs_sum) / size, "psnr_db": psnr_sum / images, "ssim": ssim_sum / images}


TEST_FIELDS = ("test_loss", "test_mae", "test_psnr_db", "test_ssim", "noisy_psnr_db", "noisy_ssim")
"""The EPOCH record's test figures (core.schema.EPOCH_FIELDS), what a trainer's evaluation
returns each epoch."""


def epoch_scores(
    test_loss: float, quality: dict[str, float], noisy: dict[str, float]
) -> dict[str, float]:
    """An epoch's TEST_FIELDS: its test loss, its outputs' quality and the noisy inputs'."""
    return {
        "test_loss": float(test_loss),
        "test_mae": quality["mae"],
        "test_psnr_db": quality["psnr_db"],
        "test_ssim": quality["ssim"],
        "noisy_psnr_db": noisy["psnr_db"],
        "noisy_ssim": noisy["ssim"],
    }


def main() -> None:
    """Time image_quality on 2,000 random 64x64 RGB images (the paper's test split)."""
    import time

    rng = np.random.default_rng(0)
    clean = rng.random((2000, 64, 64, 3), dtype=np.float32)
    images = rng.random((2000, 64, 64, 3), dtype=np.float32)
    image_quality(clean, images)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        image_quality(clean, images)
        times.append(time.perf_counter() - t0)
    print(f"image_quality, 2,000 images of 64x64x3: {min(times):.2f} s (best of 3), "
          f"{cpus()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
