"""Image quality against scikit-image, image by image: the host's blocked, threaded SSIM and PSNR
(measure.quality), and each framework's own on its device (the trainers' evaluation), must be
the same numbers as skimage's per-image functions with tf.image.ssim's settings."""

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


def images() -> tuple[np.ndarray, np.ndarray]:
    """70 clean images (one block of 64 and a part) and outputs: noisy ones, some outside
    [0, 1], flat ones (variance near 0, where float32 rounding shows most), one identical."""
    rng = np.random.default_rng(3)
    clean = rng.random((70, 64, 64, 3)).astype(np.float32)
    clean[60:] = np.repeat(np.repeat(rng.random((10, 8, 8, 3)), 8, 1), 8, 2)  # flat patches
    noisy = (clean + rng.normal(0, 0.15, clean.shape)).astype(np.float32)
    noisy[60:] = clean[60:] + rng.normal(0, 0.01, clean[60:].shape)
    noisy[5] = clean[5]  # identical: PSNR capped at 100 dB, SSIM exactly 1
    return clean, noisy


# SSIM in float32 (the host's maps, and the devices'): within this of skimage's float64 figure
SSIM_ATOL = 2e-6


def test_per_image_psnr_and_ssim_equal_skimage():
    clean, noisy = images()
    psnr, ssim = skimage_quality(clean, noisy)
    x, y = clean.astype(np.float64), np.clip(noisy.astype(np.float64), 0, 1)
    np.testing.assert_allclose(metrics.psnr_per_image(x, y), psnr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(metrics.ssim_per_image(x, y), ssim, rtol=0, atol=SSIM_ATOL)
    q = metrics.image_quality(clean, noisy)
    assert q["psnr_db"] == pytest.approx(np.mean(psnr), abs=1e-10)
    assert q["ssim"] == pytest.approx(np.mean(ssim), abs=SSIM_ATOL)
    assert q["mae"] == pytest.approx(float(np.mean(np.abs(np.clip(noisy, 0, 1) - clean))))
    assert metrics.ssim_per_image(x[5:6], x[5:6])[0] == pytest.approx(1.0)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_each_frameworks_device_metrics_equal_skimage(framework):
    """The trainers compute each epoch's PSNR and SSIM with their own framework, on the device
    the model is on; the figures must be the host's (and skimage's) to float32 rounding."""
    clean, noisy = images()
    psnr, ssim = skimage_quality(clean, noisy)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        pytest.importorskip("pytorch_msssim")
        from denoisebench.torch_backend.model import image_metrics

        nchw = [torch.from_numpy(a).permute(0, 3, 1, 2) for a in (noisy, clean)]
        got = [t.numpy() for t in image_metrics(*nchw)]
    else:
        pytest.importorskip("tensorflow")
        from denoisebench.tf_backend.model import image_metrics

        got = [t.numpy() for t in image_metrics(noisy, clean)]
    got_psnr, got_ssim, abs_sum = got
    np.testing.assert_allclose(got_psnr, psnr, rtol=0, atol=1e-4)  # dB
    np.testing.assert_allclose(got_ssim, ssim, rtol=0, atol=SSIM_ATOL)
    q = metrics.summarize(got_psnr, got_ssim, float(abs_sum), clean.size)
    host = metrics.image_quality(clean, noisy)
    assert q == pytest.approx(host, abs=SSIM_ATOL, rel=1e-5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.image_quality(np.zeros((2, 64, 64, 3)), np.zeros((3, 64, 64, 3)))
