"""GPU check: every GPU-only figure of the suite, measured in one budgeted command.

    python -m launch gpu-check [--out DIR] [--budget-s 480]     # on a GPU node
    python -m launch gpu-check --cpu-rehearsal --out DIR        # every step, tiny, on CPU

A GPU allocation is often short and offline. This runs, in priority order, each step as its
own subprocess with its own timeout (never past what is left of `--budget-s`), and rewrites
`gpu_check.json` and `gpu_check.md` in `--out` after every step, so a run cut off by its
allocation still returns every step that finished:

 1. environment   GPU, driver, CUDA, torch, clocks; the NVML energy counter read twice
 2. gpu-tests     the tests marked `gpu` (real NVML, CUDA graphs against eager, bf16 MFU)
 3. bench         the suite's trainer against the hand-written loop, faithful float32
 4. fast-paths    each fast path alone and the tuned mode, with the 0.1 dB PSNR check
 5. profiler      throughput with the profiler on and off (its overhead)
 6. batch-sweep   tuned mode over per-device batch sizes, with the roofline bound beside it
 7. trace         a torch.profiler trace of a few tuned steps: top operations by GPU time
 8. paper         the paper's workload (25,000 images x 100 epochs, synthetic images),
                  faithful and tuned, timed end to end

What comes back is at most 5 files in one folder: gpu_check.md (the summary: each figure with
its command, spread and machine), gpu_check.json (every step's raw figures), log.txt (every
step's output), top_ops.txt (the trace's operator table) and environment.json.

TensorFlow is measured beside PyTorch where it is installed; where it is not, its parts are
skipped and the summary says so. `--cpu-rehearsal` runs the same steps' code at tiny sizes on
the CPU (about two minutes on two cores), so that GPU time is never spent on an import error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoisebench.core.records import (
    REPO_ROOT,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    utc_now,
)
from denoisebench.measure.environment import cpu_model, gpu_info

# Test files holding the tests marked `gpu` (tests/test_gpu_check.py checks this list): the
# GPU-path checks first (what a first GPU run would hit), then the fast paths and the profiler.
GPU_TEST_FILES = ("tests/test_gpu_paths.py", "tests/test_fastpaths.py", "tests/test_profiler.py")
# Packages a site's GPU environment may lack; each is used by one feature only.
OPTIONAL_PACKAGES = ("tensorflow", "tensorflow_datasets", "submitit", "pytorch_msssim", "bm3d")
# The paper's workload: 25,000 training images (27,000 with the 2,000 test images), 100 epochs,
# batch 128; synthetic images, since EuroSAT cannot be fetched on an offline node.
PAPER_IMAGES = 27_000
LOG_TAIL_CHARS = 4000


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


@dataclass
class Context:
    """What every step sees: sizes, frameworks present, a scratch folder and the output."""

    sizes: Sizes
    frameworks: list[str]
    work: Path
    out: Path
    python: str = sys.executable

    def data_sets(self) -> list[str]:
        """--set pairs of the throughput runs: synthetic images on the chosen device, and a
        small test split: every epoch's evaluation (SSIM on the CPU, about 1.5 ms an image)
        would otherwise take longer than its training on a GPU."""
        return [
            "--set",
            "data.source=synthetic",
            "--set",
            f"data.synthetic_images={self.sizes.synthetic_images}",
            "--set",
            "data.n_train=26900",
            "--set",
            "data.n_test=100",
            "--set",
            f"train.device={self.sizes.device}",
        ]

    def framework_arg(self) -> list[str]:
        return ["--framework", "both" if len(self.frameworks) > 1 else self.frameworks[0]]


@dataclass
class Run:
    """One subprocess of a step: its command, and what it left in the log."""

    argv: list[str]
    returncode: int | None
    wall_s: float
    timed_out: bool
    output: str


@dataclass
class StepResult:
    name: str
    title: str
    status: str = "not run"
    """ok, failed, timeout (cut at its limit), skipped (with the reason), not run."""
    reason: str | None = None
    wall_s: float = 0.0
    commands: list[str] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    table: str = ""
    """the step's own printed table (bench output), shown as is in the summary."""


class Runner:
    """Runs a step's subprocesses against a deadline and keeps their output in log.txt."""

    def __init__(self, ctx: Context, log: Path, deadline: float) -> None:
        self.ctx, self.log, self.deadline = ctx, log, deadline
        self.step_deadline = deadline
        self.result: StepResult | None = None

    def left_s(self) -> float:
        return min(self.deadline, self.step_deadline) - time.monotonic()

    def run(self, argv: list[str], check: bool = True) -> Run:
        """Run `argv` from the repository root; stop its whole process group at the deadline.
        With `check`, a non-zero exit or a timeout ends the step (StepFailed)."""
        shown = shlex.join(["python" if a == self.ctx.python else a for a in argv])
        assert self.result is not None
        self.result.commands.append(shown)
        limit = self.left_s()
        if limit <= 1:
            raise StepFailed("timeout", f"no time left for: {shown}")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        # the project need not be installed: run from the repository as `python -m launch` does
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT / "src"), str(REPO_ROOT), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        t0 = time.monotonic()
        with open(self.log, "a") as log:
            log.write(f"\n$ {shown}\n")
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: a timeout stops its children
            )
            timed_out = False
            try:
                output, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    output, _ = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    output, _ = proc.communicate()
            wall_s = time.monotonic() - t0
            log.write(output)
            log.write(
                f"[exit {proc.returncode}{', cut at its time limit' if timed_out else ''}, "
                f"{wall_s:.1f} s]\n"
            )
        run = Run(argv, proc.returncode, wall_s, timed_out, output)
        if check and timed_out:
            raise StepFailed("timeout", f"cut after {wall_s:.0f} s: {shown}", run)
        if check and proc.returncode != 0:
            raise StepFailed("failed", f"exit {proc.returncode}: {last_lines(output)}", run)
        return run


class StepFailed(Exception):
    def __init__(self, status: str, reason: str, run: Run | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.run = status, reason, run


def last_lines(text: str, n: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-n:] if line.strip())


def printed_table(output: str) -> str:
    """A bench command's table: what it printed after its progress lines (first blank line)."""
    _, _, table = output.partition("\n\n")
    return table.strip()


# --- the steps ----------------------------------------------------------------------------


def probe() -> dict[str, Any]:
    """This machine as the GPU runs see it (run in a subprocess: `gpu_check --probe`)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {},
        "missing": [],
    }
    for name in ("torch", "numpy", "pandas", *OPTIONAL_PACKAGES):
        if importlib.util.find_spec(name) is None:
            info["missing"].append(name)
    from importlib import metadata

    for dist in ("torch", "numpy", "pandas", "matplotlib", "scikit-image", "nvidia-ml-py"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info["packages"][dist] = metadata.version(dist)
    import torch

    info["torch"] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["torch"].update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            nccl=".".join(map(str, torch.cuda.nccl.version())),
        )
    info["nvml"] = probe_nvml()
    return info


def probe_nvml() -> dict[str, Any]:
    """Driver, clocks, power limit and whether the energy counter moves (read 1 s apart)."""
    from denoisebench.measure.profiler import load_nvml

    nvml, reason = load_nvml()
    if nvml is None:
        return {"reason": reason}
    out: dict[str, Any] = {"driver": nvml.nvmlSystemGetDriverVersion(), "gpus": []}
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        gpu: dict[str, Any] = {"index": i, "name": nvml.nvmlDeviceGetName(h)}
        reads: list[tuple[str, Callable[[], Any]]] = [
            ("sm_clock_mhz", lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("sm_clock_max_mhz", lambda h=h: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            ("power_limit_w", lambda h=h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
            ("power_w", lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000),
            ("temperature_c", lambda h=h: nvml.nvmlDeviceGetTemperature(h, 0)),
        ]
        for key, read in reads:
            try:
                gpu[key] = read()
            except nvml.NVMLError as e:
                gpu[key] = None
                gpu[f"{key}_reason"] = str(e)
        try:
            e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            time.sleep(1.0)
            e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            gpu["energy_counter_mj"] = [e0, e1]
            gpu["energy_counter_readable"] = e1 > e0
            gpu["idle_power_from_counter_w"] = (e1 - e0) / 1000
        except nvml.NVMLError as e:
            gpu["energy_counter_readable"] = False
            gpu["energy_counter_reason"] = str(e)
        out["gpus"].append(gpu)
    return out


def step_environment(r: Runner, ctx: Context, res: StepResult) -> None:
    run = r.run([ctx.python, "-m", "denoisebench.bench.gpu_check", "--probe"])
    info = json.loads(run.output.strip().splitlines()[-1])
    atomic_write_json(ctx.out / "environment.json", info)
    res.figures = info
    t = info["torch"]
    gpus = info["nvml"].get("gpus", [])
    lines = [
        f"Python {info['python']}, torch {t['version']} (CUDA {t['cuda']}, cuDNN {t['cudnn']}), "
        f"{info['cpu_count']} CPU cores",
        f"GPU: {t.get('device', 'none visible to torch')}"
        + (f", {t['memory_gib']} GiB, capability {t['capability']}" if "device" in t else ""),
        f"driver: {info['nvml'].get('driver', info['nvml'].get('reason'))}",
    ]
    for g in gpus:
        lines.append(
            f"GPU {g['index']}: SM clock {g.get('sm_clock_mhz')} of {g.get('sm_clock_max_mhz')} "
            f"MHz, memory clock {g.get('mem_clock_mhz')} MHz, power {g.get('power_w')} W of "
            f"{g.get('power_limit_w')} W; energy counter readable: "
            f"{g.get('energy_counter_readable')}"
        )
    lines.append(f"not installed: {', '.join(info['missing']) or 'nothing'}")
    res.table = "\n".join(lines)


def step_gpu_tests(r: Runner, ctx: Context, res: StepResult) -> None:
    # -o addopts=: in one process, without the project's parallel workers (pytest-xdist is a
    # development extra, absent on a GPU node, and these tests share one GPU)
    run = r.run(
        [ctx.python, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
         "-o", "addopts=", *GPU_TEST_FILES],
        check=False,
    )  # fmt: skip
    summary = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    res.figures = {"pytest": summary, "returncode": run.returncode}
    reasons = [
        line for line in run.output.splitlines() if line.startswith(("SKIPPED", "FAILED", "ERROR"))
    ]
    res.table = "\n".join([*reasons, summary]).strip()
    if run.timed_out:
        raise StepFailed("timeout", f"cut after {run.wall_s:.0f} s", run)
    if run.returncode not in (0, 5):  # 5: nothing collected (no gpu test selected)
        raise StepFailed("failed", summary, run)


def bench_json(r: Runner, ctx: Context, argv: list[str], name: str) -> tuple[dict[str, Any], str]:
    """Run a bench command with `--json` into the scratch folder: (its JSON, its table)."""
    path = ctx.work / f"{name}.json"
    run = r.run([*argv, "--json", str(path)])
    return json.loads(path.read_text()), printed_table(run.output)


def step_bench(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    argv = [
        ctx.python, "-m", "launch", "bench", *ctx.framework_arg(),
        "--profile", s.throughput_profile, "--mode", "faithful",
        "--batch-size", str(s.bench_batch), "--steps", str(s.bench_steps),
        "--warmup", str(s.bench_warmup), "--repeats", str(s.bench_repeats), *ctx.data_sets(),
    ]  # fmt: skip
    res.figures, res.table = bench_json(r, ctx, argv, "bench")


def step_fast_paths(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    skip = [x for name in s.paths_skip for x in ("--skip-path", name)]
    argv = [
        ctx.python, "-m", "launch", "bench", "--paths", *ctx.framework_arg(),
        "--profile", s.paths_profile, "--batch-size", str(s.paths_batch),
        "--steps", str(s.paths_steps), "--warmup", str(s.paths_warmup), "--repeats", "1",
        "--set", f"train.device={s.device}", *skip,
    ]  # fmt: skip
    # an option that fails leaves the others measured: keep the table, then say what failed.
    # The JSON is rewritten after every run, so a step cut at its limit keeps those too.
    path = ctx.work / "paths.json"
    run = r.run([*argv, "--json", str(path)], check=False)
    if path.exists():
        res.figures = json.loads(path.read_text())
        res.table = (
            printed_table(run.output)
            if res.figures.get("finished")
            else "\n".join(line for line in run.output.splitlines() if line.startswith("repeat "))
        )
    if run.timed_out:
        done = len(res.figures.get("table", []))
        raise StepFailed("timeout", f"cut after {run.wall_s:.0f} s ({done} options measured)", run)
    if run.returncode != 0:
        failed = res.figures.get("failed") or [last_lines(run.output)]
        raise StepFailed("failed", "; ".join(map(str, failed)), run)


def step_profiler(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    argv = [
        ctx.python, "-m", "denoisebench.bench.profiler_cost", *ctx.framework_arg(),
        "--profile", s.throughput_profile, "--epochs", str(s.profiler_epochs),
        "--batch-size", str(s.profiler_batch), "--repeats", str(s.profiler_repeats),
        *ctx.data_sets(),
    ]  # fmt: skip
    res.figures, res.table = bench_json(r, ctx, argv, "profiler")


def step_batch_sweep(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    tables = []
    for batch in s.sweep_batches:
        # enough images for several steps per epoch at the largest batch
        images = max(s.synthetic_images, 8 * batch)
        sets = ctx.data_sets()
        sets[sets.index(f"data.synthetic_images={s.synthetic_images}")] = (
            f"data.synthetic_images={images}"
        )
        argv = [
            ctx.python, "-m", "launch", "bench", "--framework", "torch",
            "--profile", s.throughput_profile, "--mode", "tuned",
            "--batch-size", str(batch), "--steps", str(s.sweep_steps),
            "--warmup", str(max(s.bench_warmup, 2)), "--repeats", "1", *sets,
        ]  # fmt: skip
        try:
            fig, table = bench_json(r, ctx, argv, f"sweep-b{batch}")
        except StepFailed as e:
            tables.append(f"batch {batch}: {e.status}: {e.reason}")
            res.table = "\n\n".join(tables)
            raise
        res.figures[str(batch)] = fig
        tables.append(f"batch {batch}:\n{table}")
        res.table = "\n\n".join(tables)


def step_trace(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    results = ctx.work / "runs"
    argv = [
        ctx.python, "-m", "launch", "--framework", "torch",
        "--profile", s.throughput_profile, "--mode", "tuned", "--epochs", "2",
        "--batch-size", str(s.trace_batch), *ctx.data_sets(),
        "--set", f"profiler.trace_steps={s.trace_steps}",
        "--results", str(results), "--run-id", "trace",
    ]  # fmt: skip
    r.run(argv)
    top = results / "trace" / "torch" / "trace" / "top_ops.txt"
    if not top.exists():
        raise StepFailed("failed", f"the run wrote no {top.name}: see log.txt")
    shutil.copyfile(top, ctx.out / "top_ops.txt")
    text = top.read_text()
    res.figures = {"top_ops_file": "top_ops.txt"}
    res.table = "\n".join(text.splitlines()[:16])


def step_paper(r: Runner, ctx: Context, res: StepResult) -> None:
    s = ctx.sizes
    results = ctx.work / "runs"
    failures = []
    for mode in ("faithful", "tuned"):
        run_id = f"paper-{mode}"
        argv = [
            ctx.python, "-m", "launch", "--framework", "torch", "--profile", "paper",
            "--mode", mode, "--data", "synthetic",
            "--set", f"data.synthetic_images={s.paper_images}",
            "--set", f"train.epochs={s.paper_epochs}", "--set", f"train.device={s.device}",
            "--results", str(results), "--run-id", run_id,
        ]  # fmt: skip
        step_deadline = r.step_deadline
        if mode == "faithful":  # leave the tuned run at least as much time
            r.step_deadline = time.monotonic() + 0.55 * r.left_s()
        run = r.run(argv, check=False)
        r.step_deadline = step_deadline
        folder = results / run_id / "torch"
        epochs = read_jsonl(folder / "epochs.jsonl") if (folder / "epochs.jsonl").exists() else []
        fig: dict[str, Any] = {
            "wall_s": run.wall_s,
            "epochs_done": len(epochs),
            "epochs": s.paper_epochs,
            "returncode": run.returncode,
            "cut": run.timed_out,
        }
        if epochs:
            last = epochs[-1]
            fig.update(
                train_time_s=sum(e["train_time_s"] for e in epochs),
                eval_time_s=sum(e["eval_time_s"] for e in epochs),
                throughput_steady_img_s=last.get("throughput_steady_img_s"),
                gpu_energy_j=sum(e["gpu_energy_j"] or 0 for e in epochs)
                if all(e.get("gpu_energy_j") is not None for e in epochs)
                else None,
                gpu_energy_reason=last.get("gpu_energy_reason"),
                test_psnr_db=last["test_psnr_db"],
            )
            if len(epochs) < s.paper_epochs:
                # the pace so far, start-up included: every epoch also scores the test split
                # and writes its records and checkpoint, which train and eval times leave out
                fig["projected_wall_s"] = run.wall_s / len(epochs) * s.paper_epochs
        res.figures[mode] = fig
        if run.timed_out or run.returncode != 0:
            failures.append(
                f"{mode}: {'cut at its time limit' if run.timed_out else 'exit ' + str(run.returncode)}"
                f" after {len(epochs)} of {s.paper_epochs} epochs"
            )
    res.table = "\n".join(paper_lines(res.figures, s))
    if failures:
        cut = all("cut" in f for f in failures)
        raise StepFailed("timeout" if cut else "failed", "; ".join(failures))


def paper_lines(figures: dict[str, Any], s: Sizes) -> list[str]:
    lines = []
    train_images = round(s.paper_images * 25_000 / PAPER_IMAGES)
    for mode, f in figures.items():
        if f["epochs_done"] == f["epochs"] and f["returncode"] == 0:
            lines.append(
                f"{mode}: the paper's run ({train_images:,} images x {f['epochs']} epochs, "
                f"batch 128) takes {f['wall_s']:.0f} s on this machine, end to end (training "
                f"{f['train_time_s']:.0f} s, evaluation {f['eval_time_s']:.0f} s; steady "
                f"{f['throughput_steady_img_s'] or float('nan'):,.0f} img/s; GPU energy "
                + (f"{f['gpu_energy_j'] / 1000:.1f} kJ" if f.get("gpu_energy_j") else
                   f"missing ({f.get('gpu_energy_reason')})")
                + f"; final test PSNR {f['test_psnr_db']:.2f} dB)"
            )  # fmt: skip
        else:
            projected = f.get("projected_wall_s")
            lines.append(
                f"{mode}: stopped after {f['epochs_done']} of {f['epochs']} epochs in "
                f"{f['wall_s']:.0f} s"
                + (
                    f"; at that pace (start-up included) the whole run takes about "
                    f"{projected:.0f} s"
                    if projected
                    else ""
                )
            )
    return lines


STEPS: list[tuple[str, str, float, Callable[[Runner, Context, StepResult], None]]] = [
    # name, title, the seconds it needs at GPU_SIZES on one H200, function. Measured there
    # (results/benchmarks/gpu_check_h200_2026-11-26_full, commit 397c1ce) except where marked:
    # fast-paths ran 7 of its 8 runs in 158 s; batch-sweep, its first batch's suite and
    # tight loops in 42 s (of 2 batches x 3 loops); trace, a guess from a 2-epoch run; paper,
    # 100 epochs x (0.5 s training + 0.1 s forward pass + the figures, now on the GPU) each,
    # faithful and tuned, plus start-up: projected, not yet measured.
    ("environment", "Environment", 8.0, step_environment),
    ("gpu-tests", "Tests marked gpu", 86.0, step_gpu_tests),
    ("bench", "Suite vs hand-written loop, faithful float32", 91.0, step_bench),
    (
        "fast-paths",
        "Each fast path alone and the tuned mode (0.1 dB check)",
        180.0,
        step_fast_paths,
    ),
    ("profiler", "Profiler overhead (profiler on vs off)", 65.0, step_profiler),
    ("batch-sweep", "Tuned mode over batch sizes, with the roofline", 115.0, step_batch_sweep),
    ("trace", "What holds a tuned step back (torch.profiler)", 25.0, step_trace),
    ("paper", "The paper's workload, end to end", 130.0, step_paper),
]
MIN_STEP_S = 30.0
"""No step is given less than this (never more than what is left of the budget)."""


def step_limit_s(left_s: float, need_s: float, needs_after_s: float) -> float:
    """A step's time limit: its need's share of what is left, against the needs of the steps
    still to run (itself included, `needs_after_s`). A budget that covers every need gives each
    step more than it needs; a shorter one cuts every step in the same proportion instead of
    starving the last ones, and a step that ends early leaves its time to the rest."""
    return min(left_s, max(MIN_STEP_S, left_s * need_s / needs_after_s))


# --- the summary ----------------------------------------------------------------------------


def write_summary(
    out: Path, results: list[StepResult], header: dict[str, Any], final: bool
) -> None:
    """gpu_check.json and gpu_check.md, rewritten whole (atomically) after every step."""
    atomic_write_json(
        out / "gpu_check.json",
        {**header, "finished": final, "steps": [dataclasses.asdict(r) for r in results]},
    )
    md = [
        "# GPU check",
        "",
        f"- command: `{header['command']}`",
        f"- machine: {header['machine']}",
        f"- started {header['started']}, budget {header['budget_s']:.0f} s"
        + ("" if final else " (still running, or cut off: this file is rewritten after each step)"),
        f"- frameworks: {', '.join(header['frameworks'])}"
        + (f"; {header['frameworks_note']}" if header.get("frameworks_note") else ""),
        "",
        "| step | status | wall s | reason |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        md.append(
            f"| {r.name} | {r.status} | {r.wall_s:.0f} | {(r.reason or '').replace('|', '/')} |"
        )
    for r in results:
        if r.status == "not run":
            continue
        md += ["", f"## {r.title} ({r.name}: {r.status})", ""]
        md += [f"    {c}" for c in r.commands]
        if r.table:
            md += ["", "```", r.table, "```"]
    atomic_write_text(out / "gpu_check.md", "\n".join(md) + "\n")


def installed_frameworks() -> tuple[list[str], str | None]:
    if importlib.util.find_spec("tensorflow") is None:
        return ["torch"], "TensorFlow is not installed here: every TensorFlow part is skipped"
    return ["torch", "tf"], None


def run_check(args: argparse.Namespace) -> int:
    sizes = REHEARSAL_SIZES if args.cpu_rehearsal else GPU_SIZES
    frameworks, note = installed_frameworks()
    if args.framework != "auto":
        if args.framework != "torch" and "tf" not in frameworks:
            print(f"error: --framework {args.framework}: TensorFlow is not installed",
                  file=sys.stderr)  # fmt: skip
            return 2
        frameworks = ["torch", "tf"] if args.framework == "both" else [args.framework]
        note = None
    unknown = set(args.only or []) - {name for name, *_ in STEPS}
    if unknown:
        print(f"error: --only {', '.join(sorted(unknown))}: not a step "
              f"({', '.join(n for n, *_ in STEPS)})", file=sys.stderr)  # fmt: skip
        return 2
    gpus = gpu_info()
    if not args.cpu_rehearsal and not gpus.get("gpus"):
        print(
            f"error: no NVIDIA GPU found (NVML: {gpus.get('reason', 'no devices')}); on a CPU, "
            "--cpu-rehearsal runs every step at tiny sizes",
            file=sys.stderr,
        )
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_check.json", "gpu_check.md", "log.txt", "top_ops.txt", "environment.json"):
        (out / name).unlink(missing_ok=True)  # a file from an earlier check would mislead
    machine = f"{cpu_model()}, {os.cpu_count()} cores; " + (
        ", ".join(f"{g['name']} (driver {gpus.get('driver')})" for g in gpus["gpus"])
        if gpus.get("gpus")
        else f"no GPU ({gpus.get('reason', 'NVML found none')})"
    )
    header = {
        "command": shlex.join(["python", "-m", "launch", "gpu-check", *args.argv]),
        "machine": machine,
        "started": utc_now(),
        "budget_s": args.budget_s,
        "frameworks": frameworks,
        "frameworks_note": note,
        "sizes": dataclasses.asdict(sizes),
        "rehearsal": args.cpu_rehearsal,
    }
    results = [StepResult(name, title) for name, title, *_ in STEPS]
    deadline = time.monotonic() + args.budget_s
    write_summary(out, results, header, final=False)
    print(
        f"gpu-check: {len(STEPS)} steps within {args.budget_s:.0f} s; output in {out}", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="denoisebench-gpucheck-") as tmp:
        ctx = Context(sizes, frameworks, Path(tmp), out)
        runner = Runner(ctx, out / "log.txt", deadline)
        chosen = [not args.only or name in args.only for name, *_ in STEPS]
        for i, (res, (name, _title, need_s, fn)) in enumerate(zip(results, STEPS, strict=True)):
            if not chosen[i]:
                res.status, res.reason = "skipped", "not in --only"
                continue
            left = deadline - time.monotonic()
            if left < 5:
                res.status, res.reason = "not run", "the budget was spent"
                continue
            runner.result = res
            needs_after = sum(step[2] for step, c in zip(STEPS[i:], chosen[i:], strict=True) if c)
            limit = step_limit_s(left, need_s, needs_after)
            runner.step_deadline = time.monotonic() + limit
            t0 = time.monotonic()
            print(f"[{name}] {res.title} (up to {limit:.0f} s)", flush=True)
            try:
                fn(runner, ctx, res)
                res.status = "ok"
            except StepFailed as e:
                res.status, res.reason = e.status, e.reason
            except Exception as e:  # a bug in this check must not lose the other steps
                res.status, res.reason = "failed", f"{type(e).__name__}: {e}"
            res.wall_s = time.monotonic() - t0
            print(f"[{name}] {res.status} in {res.wall_s:.0f} s"
                  + (f": {res.reason}" if res.reason else ""), flush=True)  # fmt: skip
            write_summary(out, results, header, final=False)
    write_summary(out, results, header, final=True)
    bad = [r for r in results if r.status in ("failed", "timeout")]
    print(f"summary: {out / 'gpu_check.md'}; {len(bad)} of {len(results)} steps not ok", flush=True)
    return 1 if bad else 0


def main(
    argv: list[str] | None = None, prog: str = "python -m denoisebench.bench.gpu_check"
) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--probe"]:
        print(json.dumps(probe()), flush=True)
        return 0
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/gpu-check"),
        help="folder for gpu_check.md, gpu_check.json, log.txt, top_ops.txt, environment.json "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--budget-s", type=float, default=480.0,
        help="seconds for the whole check; each step may take its need's share of what is "
        "left (the needs, measured on an H200, add up to about 700 s: a shorter budget cuts "
        "every step in proportion, and a step that ends early leaves its time to the rest) "
        "(default: %(default)s, fits 8 minutes on one H100)",
    )  # fmt: skip
    parser.add_argument(
        "--cpu-rehearsal", action="store_true",
        help="run every step's code at tiny sizes on the CPU (no GPU needed, ~2 minutes)",
    )  # fmt: skip
    parser.add_argument(
        "--framework", choices=["auto", "torch", "tf", "both"], default="auto",
        help="auto: PyTorch, and TensorFlow where it is installed (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", metavar="STEP",
        help=f"run only this step (repeatable): {', '.join(n for n, *_ in STEPS)}",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.argv = argv
    if args.budget_s <= 0:
        parser.error(f"--budget-s {args.budget_s}: must be > 0")
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
