"""Benchmark: the suite's trainers against the plain training loop a user would write by hand.

    python -m denoisebench.bench [--framework torch|tf|both] [--steps 60] [--warmup 10]
        [--batch-size 64] [--profile default] [--mode faithful|tuned] [--repeats 3]
        [--set SECTION.KEY=VALUE] [--json FILE] [--paths]

A benchmarking suite whose trainers are slow measures its own overhead, not the frameworks.
For each framework this times, in one run: (a) the suite's trainer, a real `python -m launch`
run (torch_backend/train.py / tf_backend/train.py), and (b) the shortest idiomatic hand-written loop of the
same framework (handwritten_torch.py: a DataLoader; handwritten_tf.py: a tf.data pipeline and
one tf.function step), on the same model, optimizer, loss, data (the profile's training split),
noise and batch, and (c) the strict baseline: the tightest loop of the same framework
(tight_torch.py, tight_tf.py), written without any of the suite's code, with the framework's
natural model, float images already on the device, a batch gathered by index, no DataLoader
and no per-step host work; it gets the training split as a .npy file and the run's settings as
its own flags. The targets: suite / hand-written >= 1.0, and suite / tight >= 0.97, for both
frameworks. The tight loops cover the paper's model family (stride 2, odd kernel, ReLU and
sigmoid, Gaussian noise, MAE or MSE) without deterministic kernels or torch.compile; for other
configs the table leaves them out and says why.

Every measurement is a fresh subprocess, so one framework never imports the other and each
starts clean; suite and hand-written runs and the two frameworks are interleaved across
repeats (the order reverses every other repeat), so drift of a shared machine hits all alike.
The table gives medians over the repeats and their spread (min-max).

What is compared, and why it is fair:
- Hand-written and tight: wall time of `--steps` steps after `--warmup` steps, the clock read after the
  device has finished (CUDA synchronize; TensorFlow: the last loss fetched to the host).
- Suite: the trainer evaluates the test split, writes records and a checkpoint after every
  epoch; the hand-written loop does none of that, so only the training loops are compared. Its
  figure is the wall time of the training loop of every epoch after the warm-up (the epoch
  record's `train_time_s`: first batch to last step, with everything the trainer does per
  step: progress bar, step timing; the devices are waited for once, after the epoch's last
  step). Warm-up is whole epochs, at least `--warmup` steps, and the run has as many epochs as
  needed for at least `--steps` steady steps. The suite's own `throughput_steady_img_s` (images
  over summed step times, warm-up steps left out) is kept in the JSON (`reported_img_s`) but
  not used for the ratio.
- Data wait: time spent getting the next batch (the suite: its `data_wait_s` per step; the
  hand-written loop: inside `next()` on the pipeline), as a fraction of the same wall time.
- FLOP/s: 3 x ModelSpec.forward_flops_per_image() x img/s, against the device's peak from
  hardware.py (at the run's precision); on a CPU, or a GPU not in the table, the peak is
  missing and the reason printed. On a GPU in hardware.py's tables a last line sets the suite's
  img/s against the roofline bounds (denoisebench.measure.roofline).
- Speed settings (`--mode`, `--set runtime.*`): both loops apply precision, channels_last,
  torch.compile, XLA and TF32 alike. CUDA graphs exist only in the suite's trainer (a plain
  loop has none), so with `runtime.cuda_graphs` the ratio includes their gain.

`--paths` runs a different benchmark: each fast path of the suite's trainers alone, and the
tuned mode, against faithful float32 (denoisebench.bench.paths).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denoisebench.core.config import Config, ConfigError, load_config, parse_overrides
from denoisebench.core.records import read_jsonl
from denoisebench.measure.environment import cpu_model, gpu_info, local_device_kind
from denoisebench.trainer.session import peak_precision

HANDWRITTEN_MODULES = {
    "torch": "denoisebench.bench.handwritten_torch",
    "tf": "denoisebench.bench.handwritten_tf",
}
TIGHT_MODULES = {"torch": "denoisebench.bench.tight_torch", "tf": "denoisebench.bench.tight_tf"}


def suite_epochs(n_train: int, batch_size: int, steps: int, warmup: int) -> tuple[int, int]:
    """(epochs to run, first steady epoch): whole warm-up epochs covering at least `warmup`
    steps, then enough epochs for at least `steps` steady steps."""
    per_epoch = n_train // batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"batch size {batch_size} is larger than the training split ({n_train} images)"
        )
    first_steady = math.ceil(warmup / per_epoch)
    return first_steady + math.ceil(steps / per_epoch), first_steady


def common_args(args: argparse.Namespace) -> list[str]:
    """Options both kinds of run get: the same profile, speed mode, batch and overrides."""
    sets = [x for pair in args.set for x in ("--set", pair)]
    mode = ["--mode", args.mode] if args.mode else []
    return ["--profile", args.profile, *mode, "--batch-size", str(args.batch_size), *sets]


def suite_cmd(
    framework: str, args: argparse.Namespace, root: Path, run_id: str, epochs: int
) -> list[str]:
    """The launcher run that trains the suite's trainer (no per-step options: it is the
    ordinary `python -m launch` a user runs)."""
    return [
        sys.executable,
        "-m",
        "launch",
        "--framework",
        framework,
        *common_args(args),
        "--epochs",
        str(epochs),
        "--results",
        str(root),
        "--run-id",
        run_id,
        # the suite's own steady-state figure (kept in the JSON) leaves the same steps out
        "--set",
        f"profiler.warmup_steps={args.warmup}",
    ]


def hand_cmd(framework: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        HANDWRITTEN_MODULES[framework],
        *common_args(args),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]


def tight_reason(cfg: Config) -> str | None:
    """Why the tight loops (tight_torch / tight_tf) cannot run this config, or None: they are
    written for the paper's model family only, with their own code."""
    m, t = cfg.model, cfg.train
    problems = [
        (m.stride == 2, f"model.stride={m.stride}"),
        (m.kernel_size % 2 == 1, f"model.kernel_size={m.kernel_size} (even)"),
        (m.activation == "relu", f"model.activation={m.activation}"),
        (m.output_activation == "sigmoid", f"model.output_activation={m.output_activation}"),
        (m.in_channels == 3, f"model.in_channels={m.in_channels}"),
        (cfg.noise.kind == "gaussian", f"noise.kind={cfg.noise.kind}"),
        (t.loss in ("mae", "mse"), f"train.loss={t.loss}"),
        (not t.deterministic, "train.deterministic=true"),
        (not cfg.runtime.torch_compile, "runtime.torch_compile=true"),
    ]
    bad = [what for ok, what in problems if not ok]
    return f"the tight loops cover the paper's model only, not {', '.join(bad)}" if bad else None


def tight_cmd(framework: str, cfg: Config, images: Path, args: argparse.Namespace) -> list[str]:
    """The tight loop's command line: the run's settings passed as data (its own flags)."""
    rt, t = cfg.runtime, cfg.train
    gpu = local_device_kind(t.device) == "gpu"
    cmd = [
        sys.executable, "-m", TIGHT_MODULES[framework], "--images", str(images),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--widths", ",".join(map(str, cfg.model.encoder_widths)),
        "--kernel", str(cfg.model.kernel_size), "--lr", str(t.lr), "--beta1", str(t.beta1),
        "--beta2", str(t.beta2), "--eps", str(t.eps), "--sigma", str(cfg.noise.sigma),
        "--loss", t.loss, "--precision", rt.precision, "--seed", str(t.seed),
        "--threads", str(rt.intra_op_threads),
    ]  # fmt: skip
    if rt.tf32:
        cmd.append("--tf32")
    if framework == "torch":
        cmd += ["--device", "cuda" if gpu else "cpu"]
        cmd += ["--channels-last"] if rt.channels_last else []
        cmd += ["--cudnn-benchmark"] if rt.cudnn_autotune else []
    else:
        cmd += ["--device", "gpu" if gpu else "cpu", "--inter-threads", str(rt.inter_op_threads)]
        cmd += ["--xla"] if rt.xla else []
        cmd += [] if rt.cudnn_autotune else ["--no-autotune"]
    return cmd


def suite_figures(
    epochs: list[dict[str, Any]], steps: list[dict[str, Any]], first_steady_epoch: int
) -> dict[str, Any]:
    """img/s and data-wait fraction of a suite run from its EPOCH and STEP records, over the
    epochs from `first_steady_epoch` on, by wall time of their training loops."""
    steady_epochs = [e for e in epochs if e["epoch"] >= first_steady_epoch]
    steady_steps = [s for s in steps if s["epoch"] >= first_steady_epoch]
    if not steady_epochs or not steady_steps:
        raise ValueError(f"no epoch from {first_steady_epoch} on in the suite's records")
    wall_s = sum(e["train_time_s"] for e in steady_epochs)
    images = sum(s["batch_size"] for s in steady_steps)
    clocked_s = sum(s["step_time_s"] for s in steady_steps)
    return {
        "img_s": images / wall_s,
        "data_wait_fraction": sum(s["data_wait_s"] for s in steady_steps) / wall_s,
        "window_s": wall_s,
        "steps": len({s["step"] for s in steady_steps}),
        # the suite's own figure: images over summed per-step clocks (misses between-step work)
        "reported_img_s": images / clocked_s,
        "unclocked_fraction": 1.0 - clocked_s / wall_s,
    }


def run_checked(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a benchmark's subprocess, output captured; its failure ends the benchmark."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def measure_suite(
    framework: str,
    args: argparse.Namespace,
    root: Path,
    k: int | str,
    epochs: int,
    first_steady: int,
) -> dict[str, Any]:
    """A suite run's figures (suite_figures) and its final test PSNR (`psnr_db`)."""
    run_id = f"{framework}-suite-{k}"
    run_checked(suite_cmd(framework, args, root, run_id, epochs))
    folder = root / run_id / framework
    records = read_jsonl(folder / "epochs.jsonl")
    return {
        "framework": framework,
        **suite_figures(records, read_jsonl(folder / "steps.jsonl"), first_steady),
        "psnr_db": float(records[-1]["test_psnr_db"]),
    }


def measure_loop(cmd: list[str]) -> dict[str, Any]:
    """Run a hand-written or tight loop: its figures are the one JSON line it prints last."""
    return json.loads(run_checked(cmd).stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def bench_frame(
    raw: dict[str, dict[str, list[dict[str, Any]]]],
    flops_per_image: float,
    peak: float | None,
) -> pd.DataFrame:
    """One row per framework from every repeat's figures: medians, ratio, spread, FLOP/s.

    `raw[framework]["suite" | "hand" | "tight"]` is a list of runs, each with `img_s` and
    `data_wait_fraction` ("tight" may be empty: the tight loop did not apply). The ratios are
    median suite img/s over median hand-written (and tight-loop) img/s. A missing peak or tight
    loop leaves its columns missing (NaN), never 0.
    """
    rows = []
    for framework, runs in raw.items():
        suite = [r["img_s"] for r in runs["suite"]]
        hand = [r["img_s"] for r in runs["hand"]]
        tight = [r["img_s"] for r in runs.get("tight", [])]
        suite_med, hand_med = float(np.median(suite)), float(np.median(hand))
        tight_med = float(np.median(tight)) if tight else math.nan
        suite_flops, hand_flops = suite_med * flops_per_image, hand_med * flops_per_image
        rows.append(
            {
                "framework": framework,
                "repeats": len(suite),
                "suite img/s": suite_med,
                "tight img/s": tight_med,
                "suite/tight": suite_med / tight_med,
                "tight min-max": _spread(tight) if tight else "n/a",
                "hand img/s": hand_med,
                "suite/hand": suite_med / hand_med,
                "suite min-max": _spread(suite),
                "hand min-max": _spread(hand),
                "suite GFLOP/s": suite_flops / 1e9,
                "hand GFLOP/s": hand_flops / 1e9,
                "suite % peak": 100.0 * suite_flops / peak if peak else math.nan,
                "hand % peak": 100.0 * hand_flops / peak if peak else math.nan,
                "suite data wait": float(
                    np.median([r["data_wait_fraction"] for r in runs["suite"]])
                ),
                "hand data wait": float(np.median([r["data_wait_fraction"] for r in runs["hand"]])),
            }
        )
    return pd.DataFrame(rows)


def format_table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    for col in ("suite img/s", "hand img/s"):
        shown[col] = shown[col].round().astype(int)
    shown["tight img/s"] = shown["tight img/s"].round()
    for col in ("suite/hand", "suite/tight"):
        shown[col] = shown[col].round(3)
    for col in ("suite GFLOP/s", "hand GFLOP/s", "suite % peak", "hand % peak"):
        shown[col] = shown[col].round(2)
    for col in ("suite data wait", "hand data wait"):
        shown[col] = shown[col].round(4)
    return shown.to_string(index=False, na_rep="n/a")


def machine_line(hand_runs: list[dict[str, Any]]) -> str:
    """CPU, GPUs and framework versions, for the header above the table."""
    gpus = gpu_info()
    gpu = (
        ", ".join(g["name"] for g in gpus["gpus"])
        if gpus.get("gpus")
        else f"no GPU ({gpus.get('reason', 'NVML found none')})"
    )
    frameworks = [
        f"{r['framework']} {r['version']} on {r['device']}"
        for r in {r["framework"]: r for r in hand_runs}.values()
    ]
    return "; ".join([f"machine: {cpu_model()}, {os.cpu_count()} cores", gpu, *frameworks])


def roofline_line(cfg: Config, gpu_name: str, frame: pd.DataFrame) -> str:
    """The measured figures against the device's bounds (denoisebench.measure.roofline)."""
    from denoisebench.measure.roofline import bounds

    precision = peak_precision(cfg)
    row = bounds(cfg.model, gpu_name).set_index("precision").loc[precision]
    bound = row["bound img/s"]
    if bound != bound:
        return f"roofline: n/a ({gpu_name} is not in hardware.py's tables)"
    reached = ", ".join(
        f"{r['framework']} suite {100 * r['suite img/s'] / bound:.1f}%" for _, r in frame.iterrows()
    )
    return (
        f"roofline at {precision} on {gpu_name}: compute bound "
        f"{row['compute bound img/s']:,.0f} img/s, memory bound {row['memory bound img/s']:,.0f}"
        f" img/s; reached: {reached} of the lower"
    )


def load_config_with_mode(profile: str, mode: str | None, pairs: list[str]) -> Config:
    """The config a bench run trains: profile < mode (this machine's table of it) < pairs."""
    overrides = parse_overrides(pairs)
    device = overrides.get("train", {}).get("device", "auto")
    kind = local_device_kind(device) if mode else "cpu"
    return load_config(profile, overrides, mode or "", kind)


def load_bench_config(args: argparse.Namespace) -> Config:
    return load_config_with_mode(
        args.profile, args.mode, [f"train.batch_size={args.batch_size}", *args.set]
    )


def hand_figures(
    framework: str,
    steps: int,
    warmup: int,
    batch_size: int,
    window_s: float,
    data_wait_s: float,
    losses: list[float],
    **machine: Any,
) -> dict[str, Any]:
    """The JSON line a hand-written loop prints (measure_hand reads it): img/s and data-wait
    fraction over the timed window, with `machine` (device, gpu_name, version, threads)."""
    return {
        "framework": framework,
        "img_s": steps * batch_size / window_s,
        "data_wait_fraction": data_wait_s / window_s,
        "window_s": window_s,
        "steps": steps,
        "warmup": warmup,
        "batch_size": batch_size,
        "losses": losses,
        **machine,
    }


def handwritten_main(
    run: Callable[[Config, int, int], dict[str, Any]], description: str, argv: list[str] | None
) -> None:
    """The command line of handwritten_torch / handwritten_tf: one JSON line of figures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default="default", help="profiles/<name>.toml")
    parser.add_argument("--mode", help="speed mode, profiles/modes/<MODE>.toml")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the profile's)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default: 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (default: 10)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    pairs = [*([f"train.batch_size={args.batch_size}"] if args.batch_size else []), *args.set]
    cfg = load_config_with_mode(args.profile, args.mode, pairs)
    print(json.dumps(run(cfg, args.steps, args.warmup)), flush=True)
