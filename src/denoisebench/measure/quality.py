"""Image quality on the test split: MAE, PSNR and SSIM, computed the same way for both frameworks.

Both trainers hand their test outputs here as NumPy arrays, so the figures that compare the
frameworks come from one implementation, not from two. PSNR and SSIM are computed per image
and averaged; SSIM is the Gaussian-weighted form of Wang et al. (2004) (11x11 window, sigma 1.5,
population covariance), the same as `tf.image.ssim` and as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
channel_axis=-1)`, which tests/test_metrics.py holds it to (within 1e-12 per image).

Why not call scikit-image per image: every epoch evaluates the whole test split, and on a GPU
the per-image loop was the slowest part of an epoch (the paper's 2,000 test images: about 7 s on
two CPU cores, while a GPU trains the epoch in under a second; measured on an H200,
results/benchmarks/gpu_check_h200_2026-11-26). Here the same arithmetic runs on blocks of
images with scipy's Gaussian filter (which skimage calls too) in threads, which it releases
the GIL for.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import gaussian_filter

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's: an 11x11 window at sigma 1.5
SSIM_CROP = 5  # (window - 1) // 2: skimage averages S over the image less this border
SSIM_K1, SSIM_K2 = 0.01, 0.03
BLOCK = 64  # images per filter call: small enough to stay in cache


def ssim_per_image(clean: np.ndarray, images: np.ndarray) -> np.ndarray:
    """SSIM of each image against its clean one; NHWC float64 in [0, 1] (data range 1)."""

    def blur(z: np.ndarray) -> np.ndarray:
        # height and width only, reflected at the borders as skimage does
        sigma = (0, SSIM_SIGMA, SSIM_SIGMA, 0)
        return gaussian_filter(z, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    x, y = clean, images
    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    c = SSIM_CROP
    return s[:, c:-c, c:-c, :].mean(axis=(1, 2, 3))


def psnr_per_image(clean: np.ndarray, images: np.ndarray) -> np.ndarray:
    """PSNR (dB, data range 1) of each image; identical images are capped at 100 dB, so that a
    mean stays finite."""
    mse = np.mean((clean - images) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / mse), 100.0)


def image_quality(clean: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Mean MAE, PSNR (dB) and SSIM of `images` against `clean`; NHWC floats in [0, 1]."""
    if clean.shape != images.shape:
        raise ValueError(f"shape mismatch: clean {clean.shape} vs images {images.shape}")
    clean = clean.astype(np.float64)
    images = np.clip(images.astype(np.float64), 0.0, 1.0)
    starts = range(0, len(clean), BLOCK)

    def block(i: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = clean[i : i + BLOCK], images[i : i + BLOCK]
        return psnr_per_image(x, y), ssim_per_image(x, y)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(len(starts), cpus or 1, 16))
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(block, starts))
    return {
        "mae": float(np.mean(np.abs(images - clean))),
        "psnr_db": float(np.mean(np.concatenate([p for p, _ in parts]))),
        "ssim": float(np.mean(np.concatenate([s for _, s in parts]))),
    }
