"""The suite's whole run against a plain script written apart from it, for the same job.

    python -m launch bench whole-run [--framework torch|tf|both] [--epochs 3] [--images 2700]
        [--batch-size 128] [--repeats 3] [--json FILE]

The job is the paper's, made small: --images 64x64 RGB JPEGs in EuroSAT's layout (class
folders), split into train and test in the paper's proportion (25,000 : 2,000), Gaussian noise
of sigma 0.2, the paper's model, Adam, MAE, batch --batch-size, --epochs epochs, and after each
epoch the test loss, PSNR and SSIM. The images are generated once (seeded textures at a few
scales, written as JPEGs of about EuroSAT's size) into a temporary folder that both sides read.

Each repeat runs, per framework, (a) the suite: a real `python -m launch --framework F --data
FOLDER --profile paper --no-report ...` process, with everything a run does (the launcher, the
run folder, records, checkpoints, TensorBoard, the profiler), and (b) the plain script of that
framework (plain_torch.py, plain_tf.py: they import nothing of the suite and are run as files,
not as modules of the package), each timed from spawn to exit. The order reverses every other
repeat, so a drift of the machine hits both alike; before the first repeat each framework is
imported once, untimed, so that neither side pays for reading the libraries from a cold disk,
and the suite's modules are compiled to bytecode, as a first run leaves them. The suite runs in
the plain script's memory layout (channels-last for PyTorch: SAME_LAYOUT).
The figure is the ratio suite / plain of the medians, with its spread (the extremes of the
per-repeat ratios); above 1 the suite's whole run is slower than the plain script's.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from denoisebench.bench.suite import machine_line, run_checked
from denoisebench.core.config import ConfigError
from denoisebench.core.records import FRAMEWORKS, REPO_ROOT, read_jsonl
from denoisebench.data.images import EUROSAT_CLASSES

PLAIN_SCRIPTS = {
    "torch": Path(__file__).with_name("plain_torch.py"),
    "tf": Path(__file__).with_name("plain_tf.py"),
}
"""Run as files (`python plain_torch.py`): `-m denoisebench.bench.plain_torch` would import
the package first."""

WEIGHTS_SUFFIX = {"torch": ".pt", "tf": ".keras"}
PAPER_TRAIN, PAPER_TEST = 25_000, 2_000
KINDS = ("suite", "plain")
IMPORTS = {"torch": "torch", "tf": "tensorflow"}
SAME_LAYOUT = {"torch": ["--set", "runtime.channels_last=true"], "tf": []}
"""The suite's option for the layout the plain script's convolutions run in. plain_torch.py
feeds its model a permuted view of its (N, H, W, C) images, so PyTorch runs it channels-last
(its faster CPU convolutions: 1.06x a step at batch 64 on this project's 2-core EPYC,
results/benchmarks/fast_paths_cpu.json), where the paper profile's faithful mode pins NCHW; TensorFlow is NHWC on both sides. Timed in
the same layout, the ratio is the whole run's cost around the same steps, not a layout choice
(the layout's own speed-up is a fast path: `bench --paths`)."""
SOURCES = ("src/denoisebench", "launch")
"""The suite's modules, compiled once before the timed runs (compile_suite)."""


def split_sizes(images: int) -> tuple[int, int]:
    """(train, test) images: the paper's proportion, at least one test image."""
    n_test = max(1, round(images * PAPER_TEST / (PAPER_TRAIN + PAPER_TEST)))
    return images - n_test, n_test


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One uint8 RGB image with structure at two scales and a fine grain: random 4x4 and 16x16
    fields upsampled (bicubic), plus Gaussian grain; it compresses like a photograph (about
    2.5 KB as a JPEG at quality 90; EuroSAT's are 2-4 KB), where uniform noise would not."""
    image = np.full((size, size, 3), 0.1 * 128.0)
    for cells, weight in ((4, 0.6), (16, 0.3)):
        field = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        image += weight * np.asarray(field.resize((size, size), Image.BICUBIC), dtype=np.float64)
    image += rng.normal(0.0, 10.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    """`n` seeded 64x64 JPEGs in EuroSAT's layout: folder/<class>/<class>_<k>.jpg, image i in
    class i mod 10 (only the classes that get an image have a folder)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = EUROSAT_CLASSES[i % len(EUROSAT_CLASSES)]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng)).save(folder / cls / f"{cls}_{i // 10 + 1}.jpg", quality=90)
    return folder


def plan(frameworks: list[str], repeat: int) -> list[tuple[str, str]]:
    """One repeat's runs, (framework, kind): the reverse order every other repeat."""
    order = [(f, kind) for f in frameworks for kind in KINDS]
    return order[::-1] if repeat % 2 else order


def suite_argv(
    framework: str, args: argparse.Namespace, data: Path, results: Path, run_id: str
) -> list[str]:
    """The ordinary launcher run a user makes, on the paper's profile sized to --images, in the
    plain script's memory layout (SAME_LAYOUT)."""
    n_train, n_test = split_sizes(args.images)
    return [
        sys.executable, "-m", "launch", "--framework", framework, "--profile", "paper",
        "--data", str(data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--set", f"data.n_train={n_train}", "--set", f"data.n_test={n_test}",
        *SAME_LAYOUT[framework], "--results", str(results), "--run-id", run_id, "--no-report",
    ]  # fmt: skip


def plain_argv(framework: str, args: argparse.Namespace, data: Path, weights: Path) -> list[str]:
    return [
        sys.executable, str(PLAIN_SCRIPTS[framework]), str(data), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--test-images", str(split_sizes(args.images)[1]),
        "--weights", str(weights),
    ]  # fmt: skip


def timed(argv: list[str]) -> tuple[float, str]:
    """Wall seconds from spawn to exit, and the standard output (a failure ends the bench)."""
    t0 = time.perf_counter()
    proc = run_checked(argv)
    return time.perf_counter() - t0, proc.stdout


_PLAIN_EPOCH = re.compile(r"^epoch (\d+)/\d+: .*PSNR ([\d.]+) dB", re.M)
_PLAIN_HEAD = re.compile(r"^(torch|tf) (\S+) on (\S+):", re.M)


def run_one(
    framework: str, kind: str, args: argparse.Namespace, data: Path, root: Path, k: int
) -> dict[str, Any]:
    """One timed run; its final test PSNR (the two sides did the same job: it should agree)
    and, for the plain script, the framework's version and device."""
    run = {"framework": framework, "kind": kind, "repeat": k}
    if kind == "suite":
        run_id = f"suite-{framework}-{k}"
        run["wall_s"], _ = timed(suite_argv(framework, args, data, root, run_id))
        epochs = read_jsonl(root / run_id / framework / "epochs.jsonl")
        done, psnr = len(epochs), epochs[-1]["test_psnr_db"] if epochs else None
    else:
        weights = root / f"plain-{framework}-{k}{WEIGHTS_SUFFIX[framework]}"
        run["wall_s"], out = timed(plain_argv(framework, args, data, weights))
        lines = _PLAIN_EPOCH.findall(out)
        done, psnr = len(lines), float(lines[-1][1]) if lines else None
        if head := _PLAIN_HEAD.search(out):
            run.update(version=head[2], device=head[3])
        if not weights.is_file():
            raise SystemExit(f"plain {framework}: no weights written to {weights}")
    if done != args.epochs:
        raise SystemExit(f"{kind} {framework}: {done} epochs recorded, not {args.epochs}")
    return {**run, "psnr_db": psnr}


def warm_imports(frameworks: list[str]) -> None:
    """Import each framework once, untimed: its libraries then come from the page cache for
    every timed run, the first one too. And compile the suite's modules to bytecode in
    Python's own cache (__pycache__, ignored by git), as any first run does, except where
    PYTHONDONTWRITEBYTECODE is set (as on this project's build machines): every suite process
    would otherwise compile its modules again (about 0.1 s each), which no user's second run
    does. The plain scripts are run as files, compiled on every run either way."""
    for f in frameworks:
        subprocess.run([sys.executable, "-c", f"import {IMPORTS[f]}"], capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *SOURCES], cwd=REPO_ROOT, capture_output=True
    )


def run_all(
    args: argparse.Namespace, frameworks: list[str], data: Path, root: Path
) -> list[dict[str, Any]]:
    """Every repeat of both kinds of every framework, one process at a time."""
    warm_imports(frameworks)
    runs = []
    for k in range(args.repeats):
        for framework, kind in plan(frameworks, k):
            run = run_one(framework, kind, args, data, root, k)
            runs.append(run)
            print(
                f"repeat {k + 1}/{args.repeats} {framework:5} {kind:5}: {run['wall_s']:.1f} s, "
                f"test PSNR {run['psnr_db']:.2f} dB",
                flush=True,
            )
    return runs


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per framework: the median whole-run seconds of each kind, the ratio suite / plain of the
    medians, and the extremes of the per-repeat ratios (a repeat's suite over its plain)."""
    rows = []
    for framework in dict.fromkeys(r["framework"] for r in runs):
        mine = [r for r in runs if r["framework"] == framework]
        by_kind = {kind: {r["repeat"]: r for r in mine if r["kind"] == kind} for kind in KINDS}
        suite, plain = by_kind["suite"], by_kind["plain"]
        pairs = [suite[k]["wall_s"] / plain[k]["wall_s"] for k in sorted(suite) if k in plain]
        medians = {
            f"{kind}_s": statistics.median(r["wall_s"] for r in by_kind[kind].values())
            for kind in KINDS
        }
        rows.append(
            {
                "framework": framework,
                "repeats": len(pairs),
                **medians,
                "ratio": medians["suite_s"] / medians["plain_s"],
                "ratio_min": min(pairs),
                "ratio_max": max(pairs),
                "suite_psnr_db": statistics.median(r["psnr_db"] for r in suite.values()),
                "plain_psnr_db": statistics.median(r["psnr_db"] for r in plain.values()),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'framework':9} {'repeats':>7} {'suite s':>8} {'plain s':>8} "
        f"{'suite / plain (min-max)':>24} {'suite PSNR':>10} {'plain PSNR':>10}"
    )
    lines = [head]
    for r in rows:
        ratio = f"{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
        lines.append(
            f"{r['framework']:9} {r['repeats']:>7} {r['suite_s']:8.1f} {r['plain_s']:8.1f} "
            f"{ratio:>24} {r['suite_psnr_db']:10.2f} {r['plain_psnr_db']:10.2f}"
        )
    return "\n".join(lines)


def machine(runs: list[dict[str, Any]]) -> str:
    """suite.machine_line: CPU model and cores, GPUs, each framework's version and device (as
    its plain script reported them)."""
    seen = [r for r in runs if r["kind"] == "plain" and "version" in r]
    return machine_line(seen)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{prog} whole-run",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each run (default: 3)")
    p.add_argument(
        "--images", type=int, default=2700, help="JPEGs written, train and test (default: 2700)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="(default: 128, the paper's)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each kind (default: 3)")
    p.add_argument("--json", type=Path, help="also write every run and the table here")
    return p


def check(args: argparse.Namespace) -> None:
    """The options refused before anything is written or run (ConfigError)."""
    if args.epochs < 1 or args.repeats < 1 or args.batch_size < 1 or args.images < 2:
        raise ConfigError("--epochs, --repeats and --batch-size must be >= 1, --images >= 2")
    n_train, _ = split_sizes(args.images)
    if args.batch_size > n_train:
        raise ConfigError(
            f"--batch-size {args.batch_size}: more than the {n_train} training images of "
            f"--images {args.images}"
        )
    # checked before the benchmark runs: its figures would be lost at the end
    if args.json is not None and args.json.is_dir():
        raise ConfigError(f"--json {args.json}: a folder, not a file")
    if args.json is not None and not args.json.parent.is_dir():
        raise ConfigError(f"--json {args.json}: the folder {args.json.parent} does not exist")


def main(argv: list[str] | None = None, prog: str = "python -m denoisebench.bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        check(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    n_train, n_test = split_sizes(args.images)
    described = (
        f"{args.images} generated 64x64 JPEGs in EuroSAT's layout (not EuroSAT), {n_train} "
        f"train / {n_test} test; profile paper, {args.epochs} epochs, batch {args.batch_size}"
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whole-run-") as tmp:
        data = write_images(Path(tmp) / "data", args.images)
        print(f"data: {described}", flush=True)
        runs = run_all(args, frameworks, data, Path(tmp))
    elapsed_s = time.perf_counter() - t_start
    rows = table(runs)
    print()
    print(machine(runs))
    print(
        f"{described}; {args.repeats} repeats; whole-process wall time, spawn to exit, medians; "
        "suite / plain: ratio of the medians (min-max of the per-repeat ratios)"
    )
    print(format_rows(rows))
    print(f"\nbenchmark took {elapsed_s:.0f} s", flush=True)
    if args.json:
        given = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        figures = {
            "command": " ".join([prog, "whole-run", *argv]),
            "machine": machine(runs),
            "data": described,
            "args": given,
            "elapsed_s": elapsed_s,
            "runs": runs,
            "table": rows,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
