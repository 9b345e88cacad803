"""The tightest PyTorch training loop for this model: the benchmark's strict baseline.

    python -m denoisebench.bench.tight_torch --images train_u8.npy [--batch-size 64] [--steps 60]
        [--warmup 10] [--widths 32,64,128] [--kernel 3] [--lr 1e-3] [--beta1 0.9]
        [--beta2 0.999] [--eps 1e-7] [--sigma 0.2] [--loss mae] [--device cpu|cuda]
        [--precision float32|bfloat16|float16] [--channels-last] [--tf32] [--cudnn-benchmark]
        [--threads N] [--seed 0]

The fastest code a PyTorch user would plausibly write for this experiment, written without any
of the suite's code (no model, helpers or settings from denoisebench; only the command line
the two tight loops share, tight_args.py), so that it can judge the
suite's trainer: the natural PyTorch model (`Conv2d(padding=k//2)`,
`ConvTranspose2d(padding=k//2, output_padding=1)`), every training image converted to float
and moved to the device once, one random permutation per epoch drawn on the device, Gaussian
noise, the loss, Adam, and nothing else per step: no DataLoader, no host synchronisation, no
per-step logging. The images come as data (a uint8 NHWC .npy file, written by the benchmark
from the suite's training split); the settings come as flags (the benchmark passes the run's).

Prints one JSON line: img/s over `--steps` steps after `--warmup` steps (clock read after the
device has finished), and the losses.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from denoisebench.bench.tight_args import parse, tight_parser


def natural_model(widths: list[int], kernel: int, channels: int = 3) -> nn.Sequential:
    """3 stride-2 convolutions and 3 stride-2 transposed convolutions, as PyTorch users write
    them (symmetric padding; output_padding 1 to double the size back)."""
    pad = kernel // 2
    layers: list[nn.Module] = []
    sizes = [channels, *widths]
    for cin, cout in itertools.pairwise(sizes):
        layers += [nn.Conv2d(cin, cout, kernel, stride=2, padding=pad), nn.ReLU()]
    back = sizes[::-1]
    for i, (cin, cout) in enumerate(itertools.pairwise(back)):
        layers.append(
            nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=pad, output_padding=1)
        )
        layers.append(nn.Sigmoid() if i == len(back) - 2 else nn.ReLU())
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> None:
    p = tight_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true")
    args = parse(p, argv)

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    u8 = np.load(args.images)
    images = torch.from_numpy(u8).to(device).permute(0, 3, 1, 2).float().div_(255)
    images = images.contiguous(memory_format=fmt)
    n, b = len(images), args.batch_size
    if b > n:
        p.error(f"--batch-size {b} is larger than the {n} images in {args.images}")
    model = natural_model([int(w) for w in args.widths.split(",")], args.kernel)
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.Adam(
        model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps
    )
    criterion = nn.L1Loss() if args.loss == "mae" else nn.MSELoss()
    half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=half is torch.float16)

    per_epoch = n // b
    losses: list[torch.Tensor] = []
    perm = torch.randperm(n, device=device)
    t_start = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_start = time.perf_counter()
        j = i % per_epoch
        if j == 0 and i > 0:
            perm = torch.randperm(n, device=device)
        clean = images[perm[j * b : (j + 1) * b]]
        noisy = (clean + args.sigma * torch.randn_like(clean)).clamp_(0.0, 1.0)
        with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None):
            out = model(noisy)
        loss = criterion(out.float(), clean)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    window_s = time.perf_counter() - t_start
    print(
        json.dumps(
            {
                "framework": "torch",
                "img_s": args.steps * b / window_s,
                "data_wait_fraction": 0.0,  # the batch is an index into device memory
                "window_s": window_s,
                "steps": args.steps,
                "warmup": args.warmup,
                "batch_size": b,
                "losses": torch.stack(losses).tolist(),
                "device": str(device),
                "version": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
