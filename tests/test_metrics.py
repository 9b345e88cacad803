"""metrics.image_quality against scikit-image, image by image: the blocked, threaded SSIM and
PSNR must be the same numbers as skimage's per-image functions with tf.image.ssim's settings."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from denoisebench.measure import quality as metrics


def skimage_quality(clean: np.ndarray, images: np.ndarray) -> tuple[list[float], list[float]]:
    psnr, ssim = [], []
    for ref, img in zip(clean.astype(np.float64), images.astype(np.float64), strict=True):
        img = np.clip(img, 0.0, 1.0)
        psnr.append(min(peak_signal_noise_ratio(ref, img, data_range=1.0), 100.0))
        ssim.append(
            structural_similarity(
                ref, img, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False,
            )
        )  # fmt: skip
    return psnr, ssim


def test_per_image_psnr_and_ssim_equal_skimage():
    rng = np.random.default_rng(3)
    clean = rng.random((70, 64, 64, 3)).astype(np.float32)  # 70: one full block and a part
    noisy = (clean + rng.normal(0, 0.15, clean.shape)).astype(np.float32)  # out of [0, 1] too
    noisy[5] = clean[5]  # identical: PSNR capped at 100 dB, SSIM exactly 1
    psnr, ssim = skimage_quality(clean, noisy)
    x, y = clean.astype(np.float64), np.clip(noisy.astype(np.float64), 0, 1)
    np.testing.assert_allclose(metrics.psnr_per_image(x, y), psnr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(metrics.ssim_per_image(x, y), ssim, rtol=0, atol=1e-12)
    q = metrics.image_quality(clean, noisy)
    assert q["psnr_db"] == pytest.approx(np.mean(psnr), abs=1e-10)
    assert q["ssim"] == pytest.approx(np.mean(ssim), abs=1e-12)
    assert q["mae"] == pytest.approx(float(np.mean(np.abs(np.clip(noisy, 0, 1) - clean))))
    assert metrics.ssim_per_image(x[5:6], x[5:6])[0] == pytest.approx(1.0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.image_quality(np.zeros((2, 64, 64, 3)), np.zeros((3, 64, 64, 3)))
