"""The autoencoder, its noise and its losses in TensorFlow / Keras 3, built from a ModelSpec.

Keras stores kernels as (kh, kw, in, out) for Conv2D and (kh, kw, out, in) for
Conv2DTranspose; the canonical layout (PyTorch's) maps to both with `transpose(2, 3, 1, 0)`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from denoisebench.core.config import NoiseConfig, TrainConfig
from denoisebench.core.spec import ModelSpec
from denoisebench.measure.quality import PSNR_CAP_DB, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW


def build_model(
    spec: ModelSpec, dtype: str = "float32", precision: str = "float32"
) -> keras.Sequential:
    """NHWC model: (N, H, W, C) in [0, 1] -> (N, H, W, C).

    precision bfloat16 / float16 (runtime.precision) gives the layers Keras' `mixed_<precision>`
    policy: float32 weights, computation in the low precision, and a final float32 cast (Keras'
    advice for mixed-precision outputs), so losses and metrics see float32 as they would.
    precision float64 builds the whole model in float64 (input, weights, output)."""
    if precision == "float64":
        dtype, precision = "float64", "float32"
    policy = dtype if precision == "float32" else f"mixed_{precision}"
    layers: list[keras.layers.Layer] = [
        keras.Input((spec.image_size, spec.image_size, spec.in_channels), dtype=dtype)
    ]
    for layer in spec.layers():
        conv = keras.layers.Conv2D if layer.kind == "conv" else keras.layers.Conv2DTranspose
        layers.append(
            conv(
                layer.out_channels,
                spec.kernel_size,
                strides=spec.stride,
                padding=spec.padding,
                activation=layer.activation,
                dtype=policy,
            )
        )
    if precision != "float32":
        layers.append(keras.layers.Activation("linear", dtype="float32", name="to_float32"))
    return keras.Sequential(layers, name="denoising_autoencoder")


def input_dtype(precision: str) -> tf.DType:
    """The dtype of the images a training step feeds the model: float64 for
    runtime.precision=float64, else float32 (mixed precision casts inside the layers)."""
    return tf.float64 if precision == "float64" else tf.float32


def adam(train: TrainConfig, lr: float, precision: str) -> keras.optimizers.Optimizer:
    """Adam with the run's hyperparameters; float16 wraps it in dynamic loss scaling (the
    training step scales its loss with `optimizer.scale_loss`, a no-op without scaling)."""
    optimizer = keras.optimizers.Adam(
        learning_rate=lr, beta_1=train.beta1, beta_2=train.beta2, epsilon=train.eps
    )
    if precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [
        m for m in model.layers if isinstance(m, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
    ]


def get_weights(model: keras.Model) -> list[np.ndarray]:
    """[W0, b0, ...] in the canonical (PyTorch) layout."""
    out = []
    for layer in _weighted_layers(model):
        kernel, bias = layer.get_weights()
        out += [np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias]
    return out


def set_weights(model: keras.Model, weights: list[np.ndarray]) -> None:
    """Load canonical-layout weights, checking every shape."""
    layers = _weighted_layers(model)
    if 2 * len(layers) != len(weights):
        raise ValueError(f"model has {2 * len(layers)} weight tensors, got {len(weights)}")
    for i, layer in enumerate(layers):
        kernel = np.asarray(weights[2 * i]).transpose(2, 3, 1, 0)
        bias = np.asarray(weights[2 * i + 1])
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [kernel.shape, bias.shape] != expected:
            raise ValueError(
                f"layer {i}: model shapes {expected}, given {[kernel.shape, bias.shape]} "
                "(after canonical -> Keras transpose)"
            )
        layer.set_weights([kernel, bias])


def add_noise(x: tf.Tensor, cfg: NoiseConfig, seed: tf.Tensor) -> tf.Tensor:
    """noise.add_noise with stateless random ops; `seed` is a shape-[2] integer tensor."""
    if cfg.kind == "gaussian":
        y = x + cfg.sigma * tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
    elif cfg.kind == "salt_and_pepper":
        u = tf.random.stateless_uniform(tf.shape(x), seed, dtype=x.dtype)
        y = tf.where(u < cfg.amount / 2, 0.0, tf.where(u < cfg.amount, 1.0, x))
    elif cfg.kind == "poisson":
        y = (
            tf.random.stateless_poisson(tf.shape(x), seed, lam=cfg.peak * x, dtype=x.dtype)
            / cfg.peak
        )
    elif cfg.kind == "speckle":
        n = tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
        y = x + x * cfg.sigma * n
    else:
        raise ValueError(f"noise.kind={cfg.kind!r} is not a known noise model")
    return tf.clip_by_value(y, 0.0, 1.0)


def loss_fn(name: str):
    """Mean loss over every element of the batch, the same definition as model_torch.loss_fn."""
    if name == "mae":
        return lambda target, out: tf.reduce_mean(tf.abs(out - target))
    if name == "mse":
        return lambda target, out: tf.reduce_mean(tf.square(out - target))
    if name == "ssim":
        return lambda target, out: (
            1.0
            - tf.reduce_mean(
                tf.image.ssim(
                    out, target, max_val=1.0, filter_size=SSIM_WINDOW, filter_sigma=SSIM_SIGMA
                )
            )
        )
    raise ValueError(f"train.loss={name!r} is not one of mae, mse, ssim")


def image_metrics(out: tf.Tensor, clean: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-image PSNR (dB, capped) and SSIM and the sum of |out - clean| of NHWC images, on
    their device in float32: measure.quality's definitions (the output clipped to [0, 1];
    tf.image.ssim averages over the border-free interior with population covariance, as
    skimage does), where the host's NumPy version of them cost more than a GPU's epoch."""
    out = tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 1.0)
    clean = tf.cast(clean, tf.float32)
    diff = out - clean
    mse = tf.reduce_mean(tf.square(diff), axis=[1, 2, 3])
    psnr = tf.minimum(10.0 * tf.math.log(1.0 / mse) / tf.math.log(10.0), PSNR_CAP_DB)
    ssim = tf.image.ssim(
        out, clean, max_val=1.0, filter_size=SSIM_WINDOW, filter_sigma=SSIM_SIGMA,
        k1=SSIM_K1, k2=SSIM_K2,
    )  # fmt: skip
    return psnr, ssim, tf.reduce_sum(tf.abs(diff))


def pick_device(choice: str) -> str:
    """The device to train on. Call before any other TensorFlow work: it sets memory growth."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # otherwise TensorFlow reserves the whole GPU at start-up and memory figures mean nothing
        tf.config.experimental.set_memory_growth(gpu, True)
    if choice == "gpu" and not gpus:
        raise RuntimeError("train.device=gpu, but TensorFlow sees no GPU")
    return "/GPU:0" if gpus and choice != "cpu" else "/CPU:0"
