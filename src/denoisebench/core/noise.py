"""Noise models: the one definition both frameworks implement.

Every model maps a clean image x in [0, 1] to a noisy one, clipped to [0, 1]:

- gaussian:        y = x + sigma * n,                 n ~ N(0, 1)        (the paper: sigma = 0.2)
- salt_and_pepper: y = 0 where u < amount/2, 1 where amount/2 <= u < amount, else x; u ~ U[0, 1)
- poisson:         y = Poisson(peak * x) / peak       (shot noise; lower peak = noisier)
- speckle:         y = x + x * sigma * n,             n ~ N(0, 1)

Noise is drawn per element (per pixel and channel). This module holds the NumPy reference,
used for the test set, whose noisy images are generated once from a seed and so are identical
for both frameworks. Training noise is drawn fresh every batch on the device by each framework's
own random ops (`model_torch.add_noise`, `model_tf.add_noise`), following the same formulas;
tests check that all three have the same statistics.
"""

from __future__ import annotations

import numpy as np

from denoisebench.core.config import NoiseConfig


def add_noise(x: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of float images `x` in [0, 1] (any shape), as float32."""
    x = np.asarray(x, dtype=np.float32)
    if cfg.kind == "gaussian":
        y = x + cfg.sigma * rng.standard_normal(x.shape, dtype=np.float32)
    elif cfg.kind == "salt_and_pepper":
        u = rng.random(x.shape, dtype=np.float32)
        y = np.where(u < cfg.amount / 2, 0.0, np.where(u < cfg.amount, 1.0, x))
    elif cfg.kind == "poisson":
        y = rng.poisson(cfg.peak * x).astype(np.float32) / cfg.peak
    elif cfg.kind == "speckle":
        y = x + x * cfg.sigma * rng.standard_normal(x.shape, dtype=np.float32)
    else:
        raise ValueError(f"noise.kind={cfg.kind!r} is not a known noise model")
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def noisy_test_set(clean_u8: np.ndarray, cfg: NoiseConfig) -> np.ndarray:
    """The test split's noisy inputs, float32 in [0, 1], the same for every framework."""
    rng = np.random.default_rng(cfg.test_seed)
    return add_noise(clean_u8.astype(np.float32) / 255.0, cfg, rng)
