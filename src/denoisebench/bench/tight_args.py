"""The command line both tight loops (tight_torch.py, tight_tf.py) share: the images file, the
run's size and the experiment's hyperparameters, as flags. Plain argparse, no framework and none
of the suite's model or settings code: each loop adds its framework's own speed flags."""

from __future__ import annotations

import argparse
from pathlib import Path


def tight_parser(description: str) -> argparse.ArgumentParser:
    """The shared flags; the caller adds --device and its framework's speed flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--images", type=Path, required=True, help="uint8 NHWC training images (.npy)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=60, help="timed steps (default: 60)")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps (default: 10)")
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-7)
    p.add_argument("--sigma", type=float, default=0.2, help="Gaussian noise std")
    p.add_argument("--loss", choices=["mae", "mse"], default="mae")
    p.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls and convolutions")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args
