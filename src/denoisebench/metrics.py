"""Image quality on the test split: MAE, PSNR and SSIM, computed the same way for both frameworks.

Both trainers hand their test outputs here as NumPy arrays, so the figures that compare the
frameworks come from one implementation (scikit-image's), not from two. PSNR and SSIM are
computed per image and averaged; SSIM uses the Gaussian-weighted form of Wang et al. (2004)
(11x11 window, sigma 1.5, population covariance), the same as `tf.image.ssim`.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def image_quality(clean: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Mean MAE, PSNR (dB) and SSIM of `images` against `clean`; NHWC floats in [0, 1]."""
    if clean.shape != images.shape:
        raise ValueError(f"shape mismatch: clean {clean.shape} vs images {images.shape}")
    clean = clean.astype(np.float64)
    images = np.clip(images.astype(np.float64), 0.0, 1.0)
    psnr, ssim = [], []
    for ref, img in zip(clean, images, strict=True):
        # identical images have infinite PSNR; cap at 100 dB so a mean stays finite
        psnr.append(min(peak_signal_noise_ratio(ref, img, data_range=1.0), 100.0))
        ssim.append(
            structural_similarity(
                ref,
                img,
                data_range=1.0,
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )
    return {
        "mae": float(np.mean(np.abs(images - clean))),
        "psnr_db": float(np.mean(psnr)),
        "ssim": float(np.mean(ssim)),
    }
