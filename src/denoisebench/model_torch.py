"""The autoencoder, its noise and its losses in PyTorch, built from a ModelSpec.

TensorFlow's 'same' padding is asymmetric for stride 2 (bottom/right only), so the convolutions
here pad explicitly with `nn.ZeroPad2d` and the transposed convolutions crop their output;
with that, and weights in the layout below, the model is the same function as
`model_tf.build_model(spec)` (tests/test_parity.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from denoisebench.config import NoiseConfig
from denoisebench.spec import ModelSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


class Crop2d(nn.Module):
    """Trim a transposed convolution's output to input * stride, as 'same' padding does."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.before : h - self.after, self.before : w - self.after]


def build_model(spec: ModelSpec) -> nn.Sequential:
    """NCHW float model: (N, C, H, W) in [0, 1] -> (N, C, H, W)."""
    before, after = spec.pad
    k, s = spec.kernel_size, spec.stride
    layers: list[nn.Module] = []
    for layer in spec.layers():
        if layer.kind == "conv":
            layers += [
                nn.ZeroPad2d((before, after, before, after)),
                nn.Conv2d(layer.in_channels, layer.out_channels, k, stride=s),
            ]
        else:
            layers += [
                nn.ConvTranspose2d(layer.in_channels, layer.out_channels, k, stride=s),
                Crop2d(before, after),
            ]
        layers.append(ACTIVATIONS[layer.activation]())
    return nn.Sequential(*layers)


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] in the canonical layout (PyTorch's own; see spec.shared_weights)."""
    out = []
    for m in _weighted_layers(model):
        out += [m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy()]
    return out


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load canonical-layout weights, checking every shape."""
    params = [p for m in _weighted_layers(model) for p in (m.weight, m.bias)]
    if len(params) != len(weights):
        raise ValueError(f"model has {len(params)} weight tensors, got {len(weights)}")
    with torch.no_grad():
        for i, (p, w) in enumerate(zip(params, weights, strict=True)):
            if tuple(p.shape) != tuple(w.shape):
                raise ValueError(f"weight {i}: model shape {tuple(p.shape)}, given {w.shape}")
            p.copy_(torch.as_tensor(w, dtype=p.dtype))


def add_noise(x: torch.Tensor, cfg: NoiseConfig, generator: torch.Generator) -> torch.Tensor:
    """noise.add_noise on the device, drawn from `generator` (see noise.py for the formulas)."""
    if cfg.kind == "gaussian":
        y = x + cfg.sigma * torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
    elif cfg.kind == "salt_and_pepper":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y = torch.where(u < cfg.amount / 2, 0.0, torch.where(u < cfg.amount, 1.0, x))
    elif cfg.kind == "poisson":
        y = torch.poisson(cfg.peak * x, generator=generator) / cfg.peak
    elif cfg.kind == "speckle":
        n = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y = x + x * cfg.sigma * n
    else:
        raise ValueError(f"noise.kind={cfg.kind!r} is not a known noise model")
    return y.clamp(0.0, 1.0)


def loss_fn(name: str) -> nn.Module | object:
    """Mean loss over every element of the batch, the same definition as model_tf.loss_fn."""
    if name == "mae":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "ssim":
        try:
            from pytorch_msssim import ssim  # only this loss needs it
        except ImportError as e:
            raise ImportError(
                "train.loss=ssim needs the package pytorch-msssim (pip install pytorch-msssim)"
            ) from e

        # 1 - SSIM with the 11x11, sigma 1.5 Gaussian window of tf.image.ssim
        return lambda out, target: (
            1.0 - ssim(out, target, data_range=1.0, win_size=11, win_sigma=1.5, size_average=True)
        )
    raise ValueError(f"train.loss={name!r} is not one of mae, mse, ssim")


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, precision: str, cache: bool = True) -> torch.autocast:
    """The mixed-precision context of runtime.precision (a no-op for float32). `cache=False`
    for a step captured in a CUDA graph, as PyTorch requires of autocast there."""
    return torch.autocast(
        device.type,
        dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
        enabled=precision in AUTOCAST_DTYPES,
        cache_enabled=cache,
    )


def memory_format(channels_last: bool) -> torch.memory_format:
    """runtime.channels_last as a memory format. Inputs are made to match it explicitly: a
    batch cut from NHWC images is already channels_last in memory, and a convolution given
    one channels_last operand runs channels_last, so leaving it to chance changes the kernels."""
    return torch.channels_last if channels_last else torch.contiguous_format


def pick_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "gpu":
        raise RuntimeError("train.device=gpu, but PyTorch sees no CUDA device")
    return torch.device("cpu")
