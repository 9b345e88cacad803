"""A plain PyTorch script for the denoising job, written apart from the suite (it imports
nothing of denoisebench and is run as a file, not as a module of the package):

    python src/denoisebench/bench/plain_torch.py DATA [--epochs 3] [--batch-size 128]
        [--test-images 200] [--seed 0] [--weights denoiser.pt]

The job: the 64x64 RGB JPEGs in DATA's class folders (DATA/<class>/*.jpg), a seeded split
into train and --test-images test images, Gaussian noise of sigma 0.2 clipped to [0, 1], a
convolutional autoencoder (three stride-2 3x3 convolutions of 32, 64 and 128 channels with
ReLU, three stride-2 transposed convolutions back to 3 channels, sigmoid out), Adam (lr 1e-3,
betas 0.9/0.999, eps 1e-7) on the mean absolute error, --epochs passes of shuffled full
batches; after each epoch the test loss, PSNR and SSIM on one fixed noisy copy of the test
images, one line; at the end the weights saved to --weights. `bench whole-run` times it
against the suite's whole run of the same job (whole_run.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

SIGMA = 0.2
EVAL_BATCH = 256


def load_images(folder: Path) -> np.ndarray:
    """Every DATA/<class>/*.jpg, sorted by path, as uint8 (N, 64, 64, 3)."""
    files = sorted(folder.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"{folder}: no <class>/*.jpg files")
    images = []
    for file in files:
        with Image.open(file) as img:
            images.append(np.asarray(img.convert("RGB")))
    return np.stack(images)


def build_model() -> nn.Sequential:
    """64x64 -> 8x8 -> 64x64: padding 1 halves an even size exactly, and output_padding 1
    doubles it back."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
    )  # fmt: skip


def add_noise(clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    return (clean + SIGMA * noise).clamp(0.0, 1.0)


def gaussian_window(device: torch.device, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of NCHW images in [0, 1] (Wang et al. 2004: an 11x11 Gaussian window of
    sigma 1.5, K1 0.01, K2 0.03), averaged over the pixels whose window fits in the image."""
    c = a.shape[1]
    rows = window.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    cols = window.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, rows, groups=c), cols, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3))


@torch.no_grad()
def test_scores(
    model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, window: torch.Tensor
) -> tuple[float, float, float]:
    """Test loss (MAE), mean PSNR (dB) and mean SSIM over the test images."""
    model.eval()
    sums = torch.zeros(3, device=clean.device)  # |error|, PSNR, SSIM: summed on the device
    for i in range(0, len(noisy), EVAL_BATCH):
        out, ref = model(noisy[i : i + EVAL_BATCH]), clean[i : i + EVAL_BATCH]
        mse = (out - ref).square().mean(dim=(1, 2, 3))
        sums += torch.stack(
            [
                (out - ref).abs().sum(),
                (10 * torch.log10(1 / mse)).sum(),
                ssim(out, ref, window).sum(),
            ]
        )
    model.train()
    abs_sum, psnr_sum, ssim_sum = sums.tolist()
    return abs_sum / clean.numel(), psnr_sum / len(clean), ssim_sum / len(clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder of class folders of 64x64 JPEGs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=Path("denoiser.pt"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions, not TF32
    torch.backends.cuda.matmul.allow_tf32 = False

    # (N, H, W, C) as decoded; the layers see (N, C, H, W) views of it, no copy: PyTorch then
    # runs them channels-last, its faster convolutions on CPUs
    images = torch.from_numpy(load_images(args.data))
    order = torch.randperm(len(images))
    train = images[order[args.test_images :]].to(device)  # uint8 on the device, once
    test_clean = images[order[: args.test_images]].to(device).permute(0, 3, 1, 2).float() / 255
    test_noisy = add_noise(test_clean)  # one fixed noisy copy, scored every epoch
    window = gaussian_window(device)
    print(f"torch {torch.__version__} on {device}: {len(train)} train / {len(test_clean)} test")

    model = build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    steps = len(train) // args.batch_size  # full batches only
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), device=device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            batch = train[perm[i * args.batch_size : (i + 1) * args.batch_size]]
            clean = batch.permute(0, 3, 1, 2).float() / 255
            loss = F.l1_loss(model(add_noise(clean)), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        test_loss, psnr, ssim_mean = test_scores(model, test_noisy, test_clean, window)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum.item() / steps:.4f}, "
            f"test loss {test_loss:.4f}, PSNR {psnr:.2f} dB, SSIM {ssim_mean:.4f} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    torch.save(model.state_dict(), args.weights)
    print(f"weights: {args.weights}")


if __name__ == "__main__":
    main()
