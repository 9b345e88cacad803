"""The autoencoder, its noise and its losses in PyTorch, built from a ModelSpec.

TensorFlow's 'same' padding is asymmetric for stride 2 (on an even input: bottom/right only),
PyTorch's `padding=k` symmetric, so the natural PyTorch layers compute a different function.
Padding explicitly (`nn.ZeroPad2d`) and cropping each transposed convolution makes them equal,
but costs six copies a forward pass (about 30% of a CPU step). Instead this uses an exact
identity: the Keras-'same' network equals the natural symmetric network with every kernel
flipped spatially, applied to the spatially flipped input, its output flipped back. In the
flipped orientation Keras' (before, after) padding becomes (after, before); a convolution with
symmetric padding `after` gives the same output size and uses the extra zeros on the far side
only where Keras has them too, and a transposed convolution with `padding=after,
output_padding=after - before` crops exactly what Keras crops (both need after - before <
stride). Activations are pointwise and the MAE/MSE losses sum over pixels, so neither sees the
flip. So:

- `build_model(spec)` is `KerasSame(net)`: `net` is the natural PyTorch network (padding 1,
  output padding 1 for the default 3x3, stride 2), which the trainer trains directly on images
  it flipped once; `KerasSame.forward` adds the two flips for callers in the canonical
  orientation (evaluation, the parity tests);
- the weight port (`get_weights`, `set_weights`, `get_gradients`) flips kernels, so weights,
  gradients and `weights.npz` stay in the canonical layout, equal to Keras'
  (tests/test_parity.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from denoisebench.core.config import NoiseConfig
from denoisebench.core.spec import ModelSpec
from denoisebench.measure.quality import (
    PSNR_CAP_DB,
    SSIM_CROP,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


def flip_hw(x: torch.Tensor) -> torch.Tensor:
    """Reverse height and width of NCHW images (the orientation `KerasSame.net` works in)."""
    return x.flip(-2, -1)


class Crop2d(nn.Module):
    """Trim a transposed convolution's output, as 'same' padding does (fallback only)."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.before : h - self.after, self.before : w - self.after]


class KerasSame(nn.Module):
    """The Keras-'same' model in the canonical orientation: flip, the natural network, flip."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_hw(self.net(flip_hw(x)))


def build_net(spec: ModelSpec) -> nn.Sequential:
    """The natural PyTorch network, in the flipped orientation (see the module docstring)."""
    before, after = spec.pad
    k, s = spec.kernel_size, spec.stride
    natural = after - before < s  # always for stride >= 2; stride 1 with an odd kernel
    layers: list[nn.Module] = []
    for layer in spec.layers():
        cin, cout = layer.in_channels, layer.out_channels
        if layer.kind == "conv" and natural:
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=after))
        elif layer.kind == "conv":  # Keras' padding, mirrored, made explicit
            layers += [nn.ZeroPad2d((after, before, after, before)), nn.Conv2d(cin, cout, k, s)]
        elif natural:
            layers.append(
                nn.ConvTranspose2d(
                    cin, cout, k, stride=s, padding=after, output_padding=after - before
                )
            )
        else:
            layers += [nn.ConvTranspose2d(cin, cout, k, stride=s), Crop2d(after, before)]
        layers.append(ACTIVATIONS[layer.activation]())
    return nn.Sequential(*layers)


def build_model(spec: ModelSpec) -> KerasSame:
    """NCHW float model: (N, C, H, W) in [0, 1] -> (N, C, H, W), equal to the Keras model."""
    return KerasSame(build_net(spec))


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def _canonical(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """[kernel, bias, ...] of the flipped network -> the canonical layout (kernels flipped)."""
    out = []
    for i, t in enumerate(tensors):
        t = t.detach()
        out.append((t.flip(-2, -1) if i % 2 == 0 else t).cpu().numpy().copy())
    return out


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] in the canonical layout (PyTorch's own; see spec.shared_weights)."""
    return _canonical([p for m in _weighted_layers(model) for p in (m.weight, m.bias)])


def get_gradients(model: nn.Module) -> list[np.ndarray]:
    """The parameters' gradients, in the canonical layout of get_weights."""
    return _canonical([p.grad for m in _weighted_layers(model) for p in (m.weight, m.bias)])


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load canonical-layout weights, checking every shape."""
    params = [p for m in _weighted_layers(model) for p in (m.weight, m.bias)]
    if len(params) != len(weights):
        raise ValueError(f"model has {len(params)} weight tensors, got {len(weights)}")
    with torch.no_grad():
        for i, (p, w) in enumerate(zip(params, weights, strict=True)):
            if tuple(p.shape) != tuple(w.shape):
                raise ValueError(f"weight {i}: model shape {tuple(p.shape)}, given {w.shape}")
            t = torch.as_tensor(np.asarray(w), dtype=p.dtype)
            p.copy_(t.flip(-2, -1) if i % 2 == 0 else t)


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


_WINDOWS: dict[tuple[int, torch.device], torch.Tensor] = {}


def ssim_window(channels: int, device: torch.device) -> torch.Tensor:
    """The SSIM window of measure.quality (11 taps, sigma 1.5; tf.image.ssim's) as
    pytorch-msssim takes it, one (1, 1, 1, 11) kernel per channel, made once per device.

    pytorch-msssim builds its window on the host and copies it to the device on every call
    unless it is given one: a blocking copy that a CUDA graph cannot capture. Built on the
    first call (an eager step before any capture) and passed in, later calls copy nothing."""
    key = (channels, device)
    if key not in _WINDOWS:
        coords = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_CROP
        g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
        window = (g / g.sum()).reshape(1, 1, 1, SSIM_WINDOW).repeat(channels, 1, 1, 1)
        _WINDOWS[key] = window.to(device)
    return _WINDOWS[key]


def _msssim() -> Any:
    try:
        from pytorch_msssim import ssim  # only SSIM needs it
    except ImportError as e:
        raise ImportError("SSIM on the device needs the package pytorch-msssim") from e
    return ssim


class SSIMLoss:
    """1 - SSIM with the 11x11, sigma 1.5 Gaussian window of tf.image.ssim (pytorch-msssim)."""

    def __init__(self) -> None:
        try:
            self.ssim = _msssim()
        except ImportError as e:
            raise ImportError(
                "train.loss=ssim needs the package pytorch-msssim (pip install pytorch-msssim)"
            ) from e

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        win = ssim_window(out.shape[1], out.device).to(out.dtype)  # float32 losses: no copy
        return 1.0 - self.ssim(out, target, data_range=1.0, win=win, size_average=True)


def image_metrics(
    out: torch.Tensor, clean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, capped) and SSIM and the sum of |out - clean| of NCHW images, on
    their device in float32: measure.quality's definitions (the output clipped to [0, 1],
    SSIM over the border-free interior, population covariance), where the host's NumPy
    version of them cost more than a GPU's training epoch. Needs pytorch-msssim (the trainer
    asks `scores_on_device` first)."""
    ssim = _msssim()
    out, clean = out.float().clamp(0.0, 1.0), clean.float()
    diff = out - clean
    psnr = (10.0 * torch.log10(1.0 / diff.square().mean(dim=(1, 2, 3)))).clamp(max=PSNR_CAP_DB)
    win = ssim_window(out.shape[1], out.device)
    s = ssim(out, clean, data_range=1.0, win=win, size_average=False, K=(SSIM_K1, SSIM_K2))
    return psnr, s, diff.abs().sum()


def loss_fn(name: str) -> nn.Module | object:
    """Mean loss over every element of the batch, the same definition as model_tf.loss_fn."""
    if name == "mae":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "ssim":
        return SSIMLoss()
    raise ValueError(f"train.loss={name!r} is not one of mae, mse, ssim")


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights, Adam's state, the images fed to the model and the loss:
    float64 for runtime.precision=float64, else float32 (autocast lowers inside the step)."""
    return torch.float64 if precision == "float64" else torch.float32


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
