"""The four noise models against their formulas (noise.py), in NumPy, PyTorch and TensorFlow.

Every statistical check draws about a million noise values and compares a statistic with its
analytic value within 6 standard errors, the error estimated from the same sample. A correct
implementation fails such a check with probability about 2e-9; a wrong sigma, amount or peak
(or noise that ignores x) is off by tens of standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations

import numpy as np
import pytest
import tensorflow as tf
import torch

from denoisebench.core import noise
from denoisebench.core.config import NoiseConfig
from denoisebench.tf_backend import model as model_tf
from denoisebench.torch_backend import model as model_torch

IMPLS = ["numpy", "torch", "tf"]
KINDS = ["gaussian", "salt_and_pepper", "poisson", "speckle"]
SHAPE = (80, 64, 64, 3)  # NHWC, 983,040 values
Z = 6.0  # tolerance in standard errors


def constant(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float32)


def gradient(lo: float, hi: float) -> np.ndarray:
    """Every image a ramp from lo (top left) to hi (bottom right), the same in each channel."""
    ramp = np.linspace(lo, hi, SHAPE[1] * SHAPE[2], dtype=np.float32)
    return np.broadcast_to(ramp.reshape(1, SHAPE[1], SHAPE[2], 1), SHAPE).copy()


def native(impl: str, x: np.ndarray, cfg: NoiseConfig, seed: int = 0):
    """Noisy x from one implementation, in that framework's own type and layout."""
    if impl == "numpy":
        return noise.add_noise(x, cfg, np.random.default_rng(seed))
    if impl == "torch":
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2)  # the layout the trainer feeds
        return model_torch.add_noise(nchw, cfg, torch.Generator().manual_seed(seed))
    return model_tf.add_noise(tf.constant(x), cfg, tf.constant([seed, 0], dtype=tf.int64))


def draw(impl: str, x: np.ndarray, cfg: NoiseConfig, seed: int = 0) -> np.ndarray:
    """Noisy x from one implementation, as an NHWC NumPy array."""
    y = native(impl, x, cfg, seed)
    if impl == "torch":
        return y.permute(0, 2, 3, 1).numpy()
    if impl == "tf":
        return y.numpy()
    return y


def mean_se(v: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error."""
    v = np.asarray(v, dtype=np.float64).ravel()
    return float(v.mean()), float(v.std() / math.sqrt(v.size))


def std_se(v: np.ndarray) -> tuple[float, float]:
    """Sample standard deviation and its standard error (delta method, any distribution)."""
    v = np.asarray(v, dtype=np.float64).ravel()
    d = v - v.mean()
    m2, m4 = float(np.mean(d**2)), float(np.mean(d**4))
    if m2 == 0.0:
        return 0.0, 0.0
    return math.sqrt(m2), math.sqrt((m4 - m2**2) / v.size) / (2 * math.sqrt(m2))


def assert_near(measured: tuple[float, float], expected: float, what: str) -> None:
    value, se = measured
    assert abs(value - expected) <= Z * se, (
        f"{what}: {value:.6f}, expected {expected:.6f} within {Z * se:.2g} ({Z:g} standard errors)"
    )


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_normal_std(sigma: float, c: float) -> float:
    """Std of clip(sigma * Z, -c * sigma, c * sigma): E[min(Z^2, c^2)] = E[Z^2; |Z| < c] + tails."""
    inside = (2.0 * normal_cdf(c) - 1.0) - 2.0 * c * normal_pdf(c)
    tails = 2.0 * c * c * (1.0 - normal_cdf(c))
    return sigma * math.sqrt(inside + tails)


# --- shape, dtype, range ------------------------------------------------------------------------

# Strong noise on a ramp over the whole of [0, 1], so that every model clips at both ends.
STRONG = {
    "gaussian": NoiseConfig(kind="gaussian", sigma=0.5),
    "salt_and_pepper": NoiseConfig(kind="salt_and_pepper", amount=0.5),
    "poisson": NoiseConfig(kind="poisson", peak=5.0),
    "speckle": NoiseConfig(kind="speckle", sigma=0.5),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", IMPLS)
def test_output_is_float32_same_shape_and_clipped_to_unit_range(impl, kind):
    x = gradient(0.0, 1.0)
    y = native(impl, x, STRONG[kind])
    if impl == "numpy":
        assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    elif impl == "torch":
        n, h, w, c = x.shape
        assert y.dtype == torch.float32 and tuple(y.shape) == (n, c, h, w)  # NCHW in, NCHW out
    else:
        assert y.dtype == tf.float32 and tuple(y.shape) == x.shape
    y = draw(impl, x, STRONG[kind])
    assert np.isfinite(y).all()
    # both bounds are reached: the clip was needed, and applied
    assert y.min() == 0.0 and y.max() == 1.0
    assert not np.array_equal(y, x)


# --- gaussian: y = clip(x + sigma * n) -----------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_gaussian_on_half_grey(impl):
    sigma = 0.2  # the paper's; 0.5 +- 1 is only 2.5 sigma, so the clip shrinks the std a little
    x = constant(0.5)
    y = draw(impl, x, NoiseConfig(kind="gaussian", sigma=sigma))
    d = y.astype(np.float64) - x
    expected_std = clipped_normal_std(sigma, 0.5 / sigma)  # 0.19775, not 0.2
    assert_near(mean_se(d), 0.0, "mean of y - x")
    assert_near(std_se(d), expected_std, "std of y - x")
    tail = normal_cdf(-0.5 / sigma)  # P(n < -2.5 sigma) = 0.0062
    assert_near(mean_se(y == 0.0), tail, "fraction clipped to 0")
    assert_near(mean_se(y == 1.0), tail, "fraction clipped to 1")


@pytest.mark.parametrize("impl", IMPLS)
def test_gaussian_on_black_is_half_zeros(impl):
    sigma = 0.2
    y = draw(impl, constant(0.0), NoiseConfig(kind="gaussian", sigma=sigma))
    assert y.min() == 0.0
    assert_near(mean_se(y == 0.0), 0.5, "fraction exactly 0")
    # y = max(sigma * n, 0) (the clip at 1 is 5 sigma away): a half-normal with an atom at 0
    assert_near(mean_se(y), sigma / math.sqrt(2 * math.pi), "mean of y")
    assert_near(std_se(y), sigma * math.sqrt(0.5 - 1 / (2 * math.pi)), "std of y")


@pytest.mark.parametrize("impl", IMPLS)
def test_gaussian_on_gradient_is_additive(impl):
    sigma = 0.05  # x in [0.3, 0.7]: the clip is 6 sigma away, so y - x is N(0, sigma)
    x = gradient(0.3, 0.7)
    y = draw(impl, x, NoiseConfig(kind="gaussian", sigma=sigma))
    d = y.astype(np.float64) - x
    for name, band in (("dark", x < 0.4), ("bright", x > 0.6)):
        assert_near(mean_se(d[band]), 0.0, f"mean of y - x ({name})")
        assert_near(std_se(d[band]), sigma, f"std of y - x ({name})")


# --- salt and pepper -----------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["half_grey", "gradient"])
@pytest.mark.parametrize("impl", IMPLS)
def test_salt_and_pepper(impl, image):
    amount = 0.1
    x = constant(0.5) if image == "half_grey" else gradient(0.05, 0.95)  # never 0 or 1 itself
    y = draw(impl, x, NoiseConfig(kind="salt_and_pepper", amount=amount))
    assert np.all((y == x) | (y == 0.0) | (y == 1.0)), "a pixel was changed to something else"
    assert_near(mean_se(y == 0.0), amount / 2, "fraction of pepper (0)")
    assert_near(mean_se(y == 1.0), amount / 2, "fraction of salt (1)")
    assert_near(mean_se(y == x), 1 - amount, "fraction unchanged")


# --- poisson: y = Poisson(peak * x) / peak -------------------------------------------------------


def assert_multiples_of(y: np.ndarray, step: float) -> None:
    counts = y.astype(np.float64) / step
    assert np.abs(counts - np.round(counts)).max() < 1e-3, f"values are not multiples of {step}"


@pytest.mark.parametrize("impl", IMPLS)
def test_poisson_on_constant(impl):
    value, peak = 0.3, 30.0  # lambda = 9; P(count > 30), the clip at 1, is ~1e-8
    y = draw(impl, constant(value), NoiseConfig(kind="poisson", peak=peak))
    assert_multiples_of(y, 1 / peak)
    assert_near(mean_se(y), value, "mean of y")
    assert_near(std_se(y), math.sqrt(value / peak), "std of y")


@pytest.mark.parametrize("impl", IMPLS)
def test_poisson_on_gradient_has_variance_x_over_peak(impl):
    peak = 30.0
    x = gradient(0.05, 0.4)  # lambda from 1.5 to 12: the clip at 1 is negligible
    y = draw(impl, x, NoiseConfig(kind="poisson", peak=peak))
    assert_multiples_of(y, 1 / peak)
    # standardised: (y - x) / sqrt(x / peak) has mean 0 and std 1 at every x
    r = (y.astype(np.float64) - x) / np.sqrt(x.astype(np.float64) / peak)
    for name, band in (("dark", x < 0.15), ("bright", x > 0.3)):
        assert_near(mean_se(r[band]), 0.0, f"mean of standardised y - x ({name})")
        assert_near(std_se(r[band]), 1.0, f"std of standardised y - x ({name})")


# --- speckle: y = clip(x + x * sigma * n) --------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_speckle_on_half_grey(impl):
    sigma = 0.2
    x = constant(0.5)
    d = draw(impl, x, NoiseConfig(kind="speckle", sigma=sigma)).astype(np.float64) - x
    assert_near(mean_se(d), 0.0, "mean of y - x")
    assert_near(std_se(d), 0.5 * sigma, "std of y - x")


@pytest.mark.parametrize("impl", IMPLS)
def test_speckle_on_gradient_scales_with_x(impl):
    sigma = 0.2
    x = gradient(0.05, 0.5)  # the clip is 5 sigma away everywhere
    y = draw(impl, x, NoiseConfig(kind="speckle", sigma=sigma))
    d = y.astype(np.float64) - x
    for name, band in (("dark", x < 0.15), ("bright", x > 0.4)):
        assert_near(mean_se(d[band] / x[band]), 0.0, f"mean of (y - x) / x ({name})")
        assert_near(std_se(d[band] / x[band]), sigma, f"std of (y - x) / x ({name})")
    # the raw spread differs by ~4x between the bands: additive noise would fail here
    assert std_se(d[x > 0.4])[0] > 3 * std_se(d[x < 0.15])[0]


# --- the three implementations against each other ------------------------------------------------

PAPERLIKE = {
    "gaussian": NoiseConfig(kind="gaussian", sigma=0.2),
    "salt_and_pepper": NoiseConfig(kind="salt_and_pepper", amount=0.1),
    "poisson": NoiseConfig(kind="poisson", peak=30.0),
    "speckle": NoiseConfig(kind="speckle", sigma=0.2),
}


@pytest.mark.parametrize("kind", KINDS)
def test_implementations_agree(kind):
    x = gradient(0.0, 1.0)  # every value in [0, 1], both clips included
    summaries = {}
    for impl in IMPLS:
        y = draw(impl, x, PAPERLIKE[kind]).astype(np.float64)
        summaries[impl] = {
            "mean of y": mean_se(y),
            "std of y": std_se(y),
            "mean of y - x": mean_se(y - x),
            "std of y - x": std_se(y - x),
            "fraction 0": mean_se(y == 0.0),
            "fraction 1": mean_se(y == 1.0),
        }
    for a, b in combinations(IMPLS, 2):
        for stat, (va, sa) in summaries[a].items():
            vb, sb = summaries[b][stat]
            tol = Z * math.hypot(sa, sb)
            assert abs(va - vb) <= tol, f"{stat}: {a} {va:.6f} vs {b} {vb:.6f} (tol {tol:.2g})"


# --- seeds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_noisy_test_set_is_a_function_of_its_seed(kind):
    clean = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    cfg = PAPERLIKE[kind]
    a = noise.noisy_test_set(clean, cfg)
    b = noise.noisy_test_set(clean, cfg)
    other = noise.noisy_test_set(clean, dataclasses.replace(cfg, test_seed=cfg.test_seed + 1))
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    # it is noise on the clean images scaled to [0, 1], not on raw 0..255 values
    d = a.astype(np.float64) - clean / 255.0
    assert 0.01 < np.abs(d).mean() < 0.2


@pytest.mark.parametrize("kind", KINDS)
def test_torch_noise_follows_the_generator(kind):
    x = torch.from_numpy(gradient(0.0, 1.0)[:4]).permute(0, 3, 1, 2)
    cfg = PAPERLIKE[kind]
    a = model_torch.add_noise(x, cfg, torch.Generator().manual_seed(7))
    b = model_torch.add_noise(x, cfg, torch.Generator().manual_seed(7))
    c = model_torch.add_noise(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


@pytest.mark.parametrize("kind", KINDS)
def test_tf_noise_is_a_function_of_the_seed(kind):
    x = tf.constant(gradient(0.0, 1.0)[:4])
    cfg = PAPERLIKE[kind]
    a = model_tf.add_noise(x, cfg, tf.constant([7, 0], dtype=tf.int64)).numpy()
    b = model_tf.add_noise(x, cfg, tf.constant([7, 0], dtype=tf.int64)).numpy()
    c = model_tf.add_noise(x, cfg, tf.constant([8, 0], dtype=tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x.numpy())


# --- unknown kind --------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_kind_raises(impl):
    # NoiseConfig has no __post_init__: the Literal annotation is checked only when a config
    # is loaded (config._coerce), so a bad kind can be constructed directly.
    cfg = NoiseConfig(kind="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="laplace"):
        native(impl, constant(0.5)[:2], cfg)
