"""The GPU check's steps as data: how big each one is, and the commands it runs.

A `Step` names its commands (a pure function of the sizes and the frameworks: the tests build
them without running them), the `Sizes` fields they read, the seconds it needs and what it
reports (gpu_reports.py). The list of steps, in priority order, is `gpu_check.STEPS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from denoisebench.bench.gpu_runner import Runner, StepResult

# Test files holding the tests marked `gpu` (tests/test_gpu_check.py checks this list): the
# GPU-path checks first (what a first GPU run would hit), then the fast paths and the profiler.
GPU_TEST_FILES = ("tests/test_gpu_paths.py", "tests/test_fastpaths.py", "tests/test_profiler.py")
# The paper's workload: 25,000 training images (27,000 with the 2,000 test images), 100 epochs,
# batch 128; synthetic images, since EuroSAT cannot be fetched on an offline node.
PAPER_IMAGES = 27_000
PAPER_MODES = ("faithful", "tuned")


@dataclass(frozen=True)
class Sizes:
    """How big each step is: one set for a GPU, one tiny set for the CPU rehearsal."""

    device: str
    """train.device for every run: gpu, or cpu for the rehearsal."""
    throughput_profile: str
    """profile of the throughput runs (bench, profiler, sweep, trace)."""
    synthetic_images: int
    """synthetic images of the throughput runs (train + test, split 25:2)."""
    bench_batch: int
    bench_steps: int
    bench_warmup: int
    bench_repeats: int
    paths_profile: str
    """profile of the fast-paths runs: real (built-in) images, so the PSNR check means something."""
    paths_batch: int
    paths_steps: int
    paths_warmup: int
    paths_skip: tuple[str, ...]
    """fast paths left out (their code paths are the trainers' and tested elsewhere)."""
    profiler_epochs: int
    profiler_batch: int
    profiler_repeats: int
    sweep_batches: tuple[int, ...]
    sweep_steps: int
    trace_batch: int
    trace_steps: int
    paper_images: int
    paper_epochs: int


GPU_SIZES = Sizes(
    device="gpu",
    throughput_profile="default",
    synthetic_images=16_384,
    bench_batch=128,
    bench_steps=300,
    bench_warmup=30,
    bench_repeats=2,
    paths_profile="default",
    paths_batch=64,
    paths_steps=300,
    paths_warmup=26,
    paths_skip=(),
    profiler_epochs=3,
    profiler_batch=128,
    profiler_repeats=2,
    sweep_batches=(1024, 4096),
    sweep_steps=100,
    trace_batch=256,
    trace_steps=10,
    paper_images=PAPER_IMAGES,
    paper_epochs=100,
)
REHEARSAL_SIZES = Sizes(
    device="cpu",
    throughput_profile="smoke",
    synthetic_images=270,
    bench_batch=16,
    bench_steps=6,
    bench_warmup=2,
    bench_repeats=1,
    paths_profile="smoke",
    paths_batch=16,
    paths_steps=6,
    paths_warmup=2,
    paths_skip=("float16 autocast", "torch.compile", "channels_last", "bfloat16 autocast"),
    profiler_epochs=1,
    profiler_batch=16,
    profiler_repeats=1,
    sweep_batches=(16,),
    sweep_steps=6,
    trace_batch=16,
    trace_steps=2,
    paper_images=270,
    paper_epochs=1,
)
THROUGHPUT = ("device", "throughput_profile", "synthetic_images")
"""The sizes every throughput run reads (Context.data_sets)."""


@dataclass
class Context:
    """What every step sees: sizes, frameworks present, a scratch folder and the output."""

    sizes: Sizes
    frameworks: list[str]
    work: Path
    out: Path
    python: str = sys.executable

    def data_sets(self, images: int | None = None) -> list[str]:
        """--set pairs of the throughput runs: synthetic images (`images`, else the sizes')
        on the chosen device, and a small test split: every epoch's evaluation (SSIM on the
        CPU, about 1.5 ms an image) would otherwise take longer than its training on a GPU."""
        return [
            "--set",
            "data.source=synthetic",
            "--set",
            f"data.synthetic_images={self.sizes.synthetic_images if images is None else images}",
            "--set",
            "data.n_train=26900",
            "--set",
            "data.n_test=100",
            "--set",
            f"train.device={self.sizes.device}",
        ]

    def framework_arg(self) -> list[str]:
        return ["--framework", "both" if len(self.frameworks) > 1 else self.frameworks[0]]


Commands = Callable[[Context], list[list[str]]]
Report = Callable[[Runner, Context, StepResult, list[list[str]]], None]


@dataclass(frozen=True)
class Step:
    """One step of the check: what it runs, the time it needs, what it reports."""

    name: str
    """its name in --only, in gpu_check.json and in the summary's table."""
    title: str
    """its heading in gpu_check.md."""
    need_s: float
    """seconds it needs at GPU_SIZES on one H200: its share of the budget (gpu_check.STEPS)."""
    sizes: tuple[str, ...]
    """the Sizes fields its commands read."""
    commands: Commands
    """the command(s) it runs, in order."""
    report: Report
    """runs those commands through the runner and fills the step's figures and table;
    StepFailed ends the step (failed, or timeout)."""
    whole: bool = False
    """its figure means something only when it runs to the end (the paper's run: no
    projection from a cut run): it is given its whole need, with a margin, before the other
    steps share what is left (gpu_check.step_limits)."""


def probe_commands(ctx: Context) -> list[list[str]]:
    return [[ctx.python, "-m", "denoisebench.bench.gpu_check", "--probe"]]


def gpu_test_commands(ctx: Context) -> list[list[str]]:
    # -o addopts=: in one process, without the project's parallel workers (pytest-xdist is a
    # development extra, absent on a GPU node, and these tests share one GPU)
    return [
        [ctx.python, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
         "-o", "addopts=", *GPU_TEST_FILES]
    ]  # fmt: skip


def bench_commands(ctx: Context) -> list[list[str]]:
    s = ctx.sizes
    return [
        [
            ctx.python, "-m", "launch", "bench", *ctx.framework_arg(),
            "--profile", s.throughput_profile, "--mode", "faithful",
            "--batch-size", str(s.bench_batch), "--steps", str(s.bench_steps),
            "--warmup", str(s.bench_warmup), "--repeats", str(s.bench_repeats),
            *ctx.data_sets(), "--json", str(ctx.work / "bench.json"),
        ]
    ]  # fmt: skip


def fast_path_commands(ctx: Context) -> list[list[str]]:
    s = ctx.sizes
    skip = [x for name in s.paths_skip for x in ("--skip-path", name)]
    return [
        [
            ctx.python, "-m", "launch", "bench", "--paths", *ctx.framework_arg(),
            "--profile", s.paths_profile, "--batch-size", str(s.paths_batch),
            "--steps", str(s.paths_steps), "--warmup", str(s.paths_warmup), "--repeats", "1",
            "--set", f"train.device={s.device}", *skip, "--json", str(ctx.work / "paths.json"),
        ]
    ]  # fmt: skip


def profiler_commands(ctx: Context) -> list[list[str]]:
    s = ctx.sizes
    return [
        [
            ctx.python, "-m", "denoisebench.bench.profiler_cost", *ctx.framework_arg(),
            "--profile", s.throughput_profile, "--epochs", str(s.profiler_epochs),
            "--batch-size", str(s.profiler_batch), "--repeats", str(s.profiler_repeats),
            *ctx.data_sets(), "--json", str(ctx.work / "profiler.json"),
        ]
    ]  # fmt: skip


def sweep_commands(ctx: Context) -> list[list[str]]:
    """One bench run per batch size of `sweep_batches`, in that order."""
    s = ctx.sizes
    # enough images for several steps per epoch at the largest batch
    return [
        [
            ctx.python, "-m", "launch", "bench", "--framework", "torch",
            "--profile", s.throughput_profile, "--mode", "tuned",
            "--batch-size", str(batch), "--steps", str(s.sweep_steps),
            "--warmup", str(max(s.bench_warmup, 2)), "--repeats", "1",
            *ctx.data_sets(max(s.synthetic_images, 8 * batch)),
            "--json", str(ctx.work / f"sweep-b{batch}.json"),
        ]
        for batch in s.sweep_batches
    ]  # fmt: skip


def trace_commands(ctx: Context) -> list[list[str]]:
    s = ctx.sizes
    return [
        [
            ctx.python, "-m", "launch", "--framework", "torch",
            "--profile", s.throughput_profile, "--mode", "tuned", "--epochs", "2",
            "--batch-size", str(s.trace_batch), *ctx.data_sets(),
            "--set", f"profiler.trace_steps={s.trace_steps}",
            "--results", str(ctx.work / "runs"), "--run-id", "trace",
        ]
    ]  # fmt: skip


def paper_commands(ctx: Context) -> list[list[str]]:
    """One run of the paper's workload per mode of PAPER_MODES, in that order."""
    s = ctx.sizes
    return [
        [
            ctx.python, "-m", "launch", "--framework", "torch", "--profile", "paper",
            "--mode", mode, "--data", "synthetic",
            "--set", f"data.synthetic_images={s.paper_images}",
            "--set", f"train.epochs={s.paper_epochs}", "--set", f"train.device={s.device}",
            "--results", str(ctx.work / "runs"), "--run-id", f"paper-{mode}",
        ]
        for mode in PAPER_MODES
    ]  # fmt: skip


def option(argv: list[str], name: str) -> str:
    """The value given to option `name` in `argv`."""
    return argv[argv.index(name) + 1]


def run_folder(argv: list[str], framework: str = "torch") -> Path:
    """Where a `python -m launch` command writes `framework`'s run."""
    return Path(option(argv, "--results")) / option(argv, "--run-id") / framework
