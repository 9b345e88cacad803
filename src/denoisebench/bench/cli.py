"""The bench command line (`python -m launch bench`, `python -m denoisebench.bench`): the suite's
trainers against the hand-written and tight loops (suite.py), or each fast path alone (paths.py).
Above both, so neither imports the other.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.bench.suite import (
    bench_frame,
    format_table,
    hand_cmd,
    load_bench_config,
    machine_line,
    measure_loop,
    measure_suite,
    roofline_line,
    suite_epochs,
    tight_cmd,
    tight_reason,
)
from denoisebench.core.config import Config, ConfigError
from denoisebench.core.records import FRAMEWORKS
from denoisebench.data.images import load_images, make_split
from denoisebench.measure.hardware import peak_flops
from denoisebench.trainer.session import peak_precision

DESCRIPTION = """Throughput of the suite's trainers against the same model trained by plain loops: a
hand-written one per framework (DataLoader, tf.data: what a user would write) and, for the
paper's model, the tightest loop (nothing of the suite, images already on the device). Each
kind runs --repeats times, interleaved; the table gives medians and min-max, images per second,
the suite's share of the plain loops' speed, and MFU where the GPU's peak is known.

With --paths: each fast path of the suite's trainers alone (mixed precision, channels_last,
torch.compile, XLA; on GPUs also TF32 and CUDA graphs) against faithful float32, then the tuned
mode, each with its speed-up and its final test PSNR minus faithful's (the tuned mode takes
only options that keep within 0.1 dB).

Other benchmarks, each with its own --help:
  crossing-nodes   the same workers on one node and on several, through SLURM (crossing.py)
  whole-run        the suite's whole run against a plain script for the same job, spawn to
                   exit (whole_run.py)"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default: 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (default: 10)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per step, one device (default: 64)"
    )
    parser.add_argument(
        "--profile", default="default", help="the profile both kinds of run use (default: default)"
    )
    parser.add_argument(
        "--mode",
        help="speed mode for both kinds of run (profiles/modes/<MODE>.toml: faithful, tuned)",
    )
    parser.add_argument(
        "--paths",
        action="store_true",
        help="instead: time every fast path of the suite's trainers alone against faithful "
        "float32, and the tuned mode, with their test PSNR",
    )
    parser.add_argument(
        "--skip-path",
        action="append",
        default=[],
        metavar="OPTION",
        help="with --paths: leave this option out, by its name in the table, e.g. "
        "'torch.compile' (repeatable)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each kind, interleaved (default: 3)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for both kinds of run (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures and table here")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The option combinations refused before anything runs (ConfigError)."""
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise ConfigError("--steps and --repeats must be >= 1, --warmup >= 0")
    if args.skip_path and not args.paths:
        raise ConfigError("--skip-path goes with --paths")
    from denoisebench.bench.paths import PATHS

    names = {name for options in PATHS.values() for name, _, _ in options}
    for name in args.skip_path:
        if name not in names:
            raise ConfigError(f"--skip-path {name!r}: not an option ({', '.join(sorted(names))})")
    if args.paths and args.mode:
        raise ConfigError("--paths runs faithful, each option and tuned itself: drop --mode")
    # checked before the benchmark runs: its figures would be lost at the end
    if args.json is not None and args.json.is_dir():
        raise ConfigError(f"--json {args.json}: a folder, not a file")
    if args.json is not None and not args.json.parent.is_dir():
        raise ConfigError(f"--json {args.json}: the folder {args.json.parent} does not exist")


MODES = {
    "crossing-nodes": "denoisebench.bench.crossing",
    "whole-run": "denoisebench.bench.whole_run",
}
"""`bench MODE ...`: benchmarks with options of their own, each in its module."""


def main(argv: list[str] | None = None, prog: str = "python -m denoisebench.bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODES:
        import importlib

        return importlib.import_module(MODES[argv[0]]).main(argv[1:], prog)
    args = build_parser(prog).parse_args(argv)
    try:
        check_args(args)
        cfg = load_bench_config(args)
        images = load_images(cfg.data, cfg.model.image_size, seed=cfg.train.seed)
        train_split = make_split(len(images), cfg.data).train
        n_train = len(train_split)
        epochs, first_steady = suite_epochs(n_train, args.batch_size, args.steps, args.warmup)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.paths:
        from denoisebench.bench.paths import run_paths

        header = f"data: {images.description}; {n_train} train; batch {args.batch_size}"
        return run_paths(args, cfg, epochs, first_steady, header)
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    print(
        f"data: {images.description}; {n_train} train; batch {args.batch_size}; hand-written: "
        f"{args.warmup} warm-up + {args.steps} timed steps; suite: {epochs} epochs of "
        f"{n_train // args.batch_size} steps, the first {first_steady} warm-up",
        flush=True,
    )
    no_tight = tight_reason(cfg)
    if no_tight:
        print(f"tight loop: skipped ({no_tight})", flush=True)
    t_start = time.perf_counter()
    train_u8 = images.images[train_split]
    raw = measure_all(args, cfg, frameworks, train_u8, (epochs, first_steady), no_tight is None)
    elapsed_s = time.perf_counter() - t_start
    figures = report(args, cfg, frameworks, raw)
    print(f"\nbenchmark took {elapsed_s:.0f} s", flush=True)
    if args.json:
        figures.update(
            args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            suite_epochs=epochs,
            suite_first_steady_epoch=first_steady,
            elapsed_s=elapsed_s,
            tight_reason=no_tight,
            raw=raw,
        )
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


Runs = dict[str, dict[str, list[dict[str, Any]]]]
"""framework -> kind (suite, tight, hand) -> one figure dict per repeat."""


def measure_all(
    args: argparse.Namespace,
    cfg: Config,
    frameworks: list[str],
    train_u8: np.ndarray,
    suite_plan: tuple[int, int],
    with_tight: bool,
) -> Runs:
    """Each framework's suite, tight and hand-written runs, `args.repeats` times, the order
    reversed every other repeat so that a slow drift of the machine hits every kind alike."""
    epochs, first_steady = suite_plan
    kinds = ("suite", "tight", "hand") if with_tight else ("suite", "hand")
    raw: Runs = {f: {"suite": [], "hand": [], "tight": []} for f in frameworks}
    plan = [(f, kind) for f in frameworks for kind in kinds]
    with tempfile.TemporaryDirectory(prefix="denoisebench-bench-") as tmp:
        # the tight loops get the training split as data, not through the suite's loaders
        train_npy = Path(tmp) / "train_u8.npy"
        np.save(train_npy, train_u8)
        for k in range(args.repeats):
            for framework, kind in plan if k % 2 == 0 else plan[::-1]:
                if kind == "suite":
                    run = measure_suite(framework, args, Path(tmp), k, epochs, first_steady)
                elif kind == "tight":
                    run = measure_loop(tight_cmd(framework, cfg, train_npy, args))
                else:
                    run = measure_loop(hand_cmd(framework, args))
                raw[framework][kind].append(run)
                print(
                    f"repeat {k + 1}/{args.repeats} {framework:5} {kind:5}: "
                    f"{run['img_s']:.0f} img/s, data wait {run['data_wait_fraction']:.4f}",
                    flush=True,
                )
    return raw


def report(
    args: argparse.Namespace, cfg: Config, frameworks: list[str], raw: Runs
) -> dict[str, Any]:
    """Print the machine, the table and the roofline; return the figures behind them."""
    hand_runs = [r for f in frameworks for r in raw[f]["hand"]]
    gpu_name = next((r["gpu_name"] for r in hand_runs if r.get("gpu_name")), None)
    peak, peak_reason = peak_flops(gpu_name, peak_precision(cfg))
    flops_per_image = 3.0 * cfg.model.forward_flops_per_image()
    frame = bench_frame(raw, flops_per_image, peak)
    print()
    print(machine_line(hand_runs))
    print(
        f"profile {cfg.profile}, batch {args.batch_size}, {args.repeats} repeats, "
        f"{flops_per_image / 1e6:.0f} MFLOP per training image; medians, spread min-max",
        flush=True,
    )
    print(format_table(frame))
    if peak_reason:
        print(f"% peak: n/a ({peak_reason})")
    if gpu_name:
        print(roofline_line(cfg, gpu_name, frame))
    return {
        "machine": machine_line(hand_runs),
        "flops_per_image": flops_per_image,
        "peak_flops": peak,
        "peak_reason": peak_reason,
        "table": json.loads(frame.to_json(orient="records")),  # NaN -> null
    }


if __name__ == "__main__":
    sys.exit(main())
