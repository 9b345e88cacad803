"""Train the denoising autoencoder in PyTorch and TensorFlow and compare them.

    python -m launch                                # default profile, both frameworks
    python -m launch --framework torch --epochs 20
    python -m launch --profile paper --data /data/EuroSAT.zip
    python -m launch --set noise.kind=poisson --set noise.peak=10
    python -m launch --resume results/<run-id>      # continue an interrupted run

Configuration precedence: CLI flags and --set > profile file (profiles/<name>.toml) > defaults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from denoisebench.compare import comparison_table
from denoisebench.config import Config, ConfigError, load_config, load_resolved, parse_overrides
from denoisebench.results import FRAMEWORKS, atomic_write_text, new_run_id, read_json
from launch.commands import build_train_cmd

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile",
        default="default",
        help="profiles/<name>.toml or a path to a TOML file: paper (the paper's setup), "
        "default (short embedded run), smoke (tests) (default: %(default)s)",
    )
    p.add_argument(
        "--framework",
        choices=["torch", "tf", "both"],
        default="both",
        help="which framework(s) to train, one after the other (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="builtin (photographs shipped with scikit-image, cut into 64x64 patches; "
        "not EuroSAT), synthetic (random images), tfds (tensorflow-datasets "
        "eurosat/rgb, see --tfds-dir), or a path to EuroSAT.zip or its folder",
    )
    p.add_argument("--tfds-dir", metavar="DIR", help="TFDS data dir (with --data tfds)")
    p.add_argument(
        "--manual-dir",
        metavar="DIR",
        help="folder holding EuroSAT.zip, to build the TFDS dataset offline",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let tensorflow-datasets download EuroSAT (needs internet)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="images per optimizer step")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--loss", choices=["mae", "mse", "ssim"], help="training loss")
    p.add_argument(
        "--noise",
        choices=["gaussian", "salt_and_pepper", "poisson", "speckle"],
        help="noise model (its level: --set noise.sigma=, noise.amount=, noise.peak=)",
    )
    p.add_argument(
        "--init",
        choices=["native", "shared"],
        help="native: each framework's own initialisers; shared: the same seeded weights in both",
    )
    p.add_argument("--seed", type=int, help="seed of initialisation, shuffling and noise")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], help="where to train")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set model.encoder_widths=32,64,128,256 "
        "(repeatable; sections: model, data, noise, train)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=REPO_ROOT / "results",
        help="folder that receives results/<run-id>/ (default: %(default)s)",
    )
    p.add_argument("--run-id", help="name of the run folder (default: <UTC time>-<profile>)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )
    return p


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The dedicated flags, as section.key=value overrides (applied before --set)."""
    out = []
    if args.tfds_dir is not None and args.data != "tfds":
        raise ConfigError("--tfds-dir goes with --data tfds (it sets data.path)")
    if args.data is not None:
        if args.data in ("builtin", "synthetic", "tfds"):
            out.append(f"data.source={args.data}")
        else:
            out += ["data.source=eurosat", f"data.path={args.data}"]
    flags = {
        "tfds_dir": "data.path",
        "manual_dir": "data.manual_dir",
        "limit": "data.limit",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "loss": "train.loss",
        "noise": "noise.kind",
        "init": "train.init",
        "seed": "train.seed",
        "device": "train.device",
    }
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={value}")
    if args.download:
        out.append("data.download=true")
    return out


def resolve(args: argparse.Namespace) -> tuple[Config, Path]:
    """The config and run folder: a new one, or the one being resumed."""
    if args.resume is not None:
        config_path = args.resume / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.json there (not a run folder)")
        if flag_overrides(args) or args.set:
            raise ConfigError("--resume uses the run's saved config; drop the other options")
        return load_resolved(config_path), args.resume
    overrides = parse_overrides([*flag_overrides(args), *args.set])
    cfg = load_config(args.profile, overrides)
    run_dir = args.results / (args.run_id or new_run_id(cfg.profile))
    return cfg, run_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, run_dir = resolve(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_json())
        return 0
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    if args.resume is None:
        if run_dir.exists():
            print(f"error: {run_dir} exists; pick another --run-id or --resume it", file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True)
        atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
    print(f"run folder: {run_dir}", flush=True)

    failed = []
    for framework in frameworks:
        summary = run_dir / framework / "summary.json"
        if args.resume and summary.exists() and read_json(summary).get("status") == "completed":
            print(f"[{framework}] already completed, skipping", flush=True)
            continue
        argv_, env = build_train_cmd(framework, run_dir, resume=args.resume is not None)
        print(f"[{framework}] {' '.join(argv_)}", flush=True)
        rc = subprocess.run(argv_, env=env).returncode
        if rc != 0:
            failed.append(framework)
            print(f"[{framework}] failed with exit code {rc}", file=sys.stderr, flush=True)
            if rc == 2:
                break  # bad input (config or data): the next framework would fail the same way

    print()
    print(comparison_table(run_dir))
    print(f"\nresults: {run_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
