"""The one architecture description both frameworks build from.

`ModelSpec` is plain data: no framework is imported here. `model_torch.build_model(spec)` and
`model_tf.build_model(spec)` each read it and build the same network the way that framework is
normally written. Padding follows TensorFlow's "same" rule, which for stride 2 on an even input
pads only bottom and right; the PyTorch build reproduces it with explicit zero padding (and a
crop after each transposed convolution), so the two models are the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np

Activation = Literal["relu", "tanh", "elu", "silu", "sigmoid", "linear"]
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "elu", "silu", "sigmoid", "linear")


@dataclass(frozen=True)
class ConvLayer:
    """One layer of the network, derived from a ModelSpec."""

    kind: Literal["conv", "conv_transpose"]
    in_channels: int
    out_channels: int
    activation: str


@dataclass(frozen=True)
class ModelSpec:
    """Convolutional denoising autoencoder. The defaults are the paper's model."""

    in_channels: int = 3
    """Image channels (3 for RGB)."""
    image_size: int = 64
    """Height and width of the square input; must be divisible by stride**depth."""
    encoder_widths: tuple[int, ...] = (32, 64, 128)
    """Output channels of each stride-2 Conv2D; the decoder mirrors them back to in_channels."""
    kernel_size: int = 3
    """Square kernel of every layer."""
    stride: int = 2
    """Stride of every layer (downsampling in the encoder, upsampling in the decoder)."""
    padding: Literal["same"] = "same"
    """TensorFlow's 'same' rule: output = ceil(input / stride), extra pad at bottom/right."""
    activation: Activation = "relu"
    """Activation after every layer but the last."""
    output_activation: Activation = "sigmoid"
    """Activation of the last layer (sigmoid keeps outputs in [0, 1])."""

    def __post_init__(self) -> None:
        problems = []
        if self.in_channels < 1:
            problems.append(f"in_channels={self.in_channels} must be >= 1")
        if not self.encoder_widths or any(w < 1 for w in self.encoder_widths):
            problems.append(f"encoder_widths={self.encoder_widths} must be positive integers")
        if self.stride < 1:
            problems.append(f"stride={self.stride} must be >= 1")
        if self.kernel_size < self.stride:
            problems.append(
                f"kernel_size={self.kernel_size} must be >= stride={self.stride} "
                "(a smaller kernel leaves holes in the transposed convolution)"
            )
        if self.padding != "same":
            problems.append(f"padding={self.padding!r}: only 'same' is supported")
        for name in ("activation", "output_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {ACTIVATIONS}")
        scale = self.stride ** len(self.encoder_widths or ())
        if self.image_size < 1 or self.image_size % max(scale, 1):
            problems.append(
                f"image_size={self.image_size} must be divisible by stride**depth={scale}"
            )
        if problems:
            raise ValueError("invalid model spec: " + "; ".join(problems))

    @property
    def depth(self) -> int:
        return len(self.encoder_widths)

    @property
    def pad(self) -> tuple[int, int]:
        """(before, after) zero padding of a 'same' strided convolution on a divisible input.

        TensorFlow pads max(k - s, 0) in total and puts the odd pixel after.
        """
        total = max(self.kernel_size - self.stride, 0)
        return total // 2, total - total // 2

    def layers(self) -> list[ConvLayer]:
        """Every layer in order: depth convolutions, then depth transposed convolutions."""
        widths = (self.in_channels, *self.encoder_widths)
        out: list[ConvLayer] = []
        for c_in, c_out in pairwise(widths):
            out.append(ConvLayer("conv", c_in, c_out, self.activation))
        back = widths[::-1]
        for i, (c_in, c_out) in enumerate(pairwise(back)):
            last = i == self.depth - 1
            act = self.output_activation if last else self.activation
            out.append(ConvLayer("conv_transpose", c_in, c_out, act))
        return out

    def num_parameters(self) -> int:
        k2 = self.kernel_size**2
        return sum(
            k2 * layer.in_channels * layer.out_channels + layer.out_channels
            for layer in self.layers()
        )

    def forward_flops_per_image(self) -> int:
        """Multiply-adds x 2 of one forward pass on one image (bias and activations ignored)."""
        k2 = self.kernel_size**2
        size = self.image_size
        flops = 0
        for layer in self.layers():
            if layer.kind == "conv":
                size //= self.stride
                # each output pixel: k*k*c_in MACs per output channel
                flops += 2 * size * size * k2 * layer.in_channels * layer.out_channels
            else:
                # each input pixel scatters k*k*c_out MACs per input channel
                flops += 2 * size * size * k2 * layer.in_channels * layer.out_channels
                size *= self.stride
        return flops

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input elements, output elements) of each layer, for one image."""
        size, out = self.image_size, []
        for layer in self.layers():
            new = size // self.stride if layer.kind == "conv" else size * self.stride
            out.append((size * size * layer.in_channels, new * new * layer.out_channels))
            size = new
        return out


def shared_weights(spec: ModelSpec, seed: int) -> list[np.ndarray]:
    """One seeded set of weights for `init = "shared"`, in the canonical (PyTorch) layout.

    The canonical layout is [W0, b0, W1, b1, ...] in layer order, with Conv2d kernels as
    (out, in, kh, kw) and ConvTranspose2d kernels as (in, out, kh, kw), as PyTorch stores them.
    Kernels are Glorot-uniform over fan_in + fan_out = k*k*(in + out), biases zero.
    """
    rng = np.random.default_rng(seed)
    k = spec.kernel_size
    weights: list[np.ndarray] = []
    for layer in spec.layers():
        limit = np.sqrt(6.0 / (k * k * (layer.in_channels + layer.out_channels)))
        if layer.kind == "conv":
            shape = (layer.out_channels, layer.in_channels, k, k)
        else:
            shape = (layer.in_channels, layer.out_channels, k, k)
        weights.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        weights.append(np.zeros(layer.out_channels, dtype=np.float32))
    return weights
