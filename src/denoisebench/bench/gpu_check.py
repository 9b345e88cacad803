"""GPU check: every GPU-only figure of the suite, measured in one budgeted command.

    python -m launch gpu-check [--out DIR] [--budget-s 480]     # on a GPU node
    python -m launch gpu-check --cpu-rehearsal --out DIR        # every step, tiny, on CPU

A GPU allocation is often short and offline. This runs, in priority order, each step as its
own subprocess with its own timeout (never past what is left of `--budget-s`), and rewrites
`gpu_check.json` and `gpu_check.md` in `--out` after every step, so a run cut off by its
allocation still returns every step that finished:

 1. environment   GPU, driver, CUDA, torch, clocks; the NVML energy counter read twice
 2. gpu-tests     the tests marked `gpu` (real NVML, CUDA graphs against eager, bf16 MFU)
 3. shared-gpu    PyTorch's multi-GPU path (DDP) with 2 ranks sharing the one GPU, against
                  one device in the exact mode: a correctness check, no speed figure
 4. bench         the suite's trainer against the hand-written loop, faithful float32
 5. paper         the paper's workload (25,000 images x 100 epochs, synthetic images),
                  faithful and tuned, each run to the end and timed end to end
 6. fast-paths    each fast path alone and the tuned mode, with the 0.1 dB PSNR check
 7. profiler      throughput with the profiler on and off (its overhead)
 8. batch-sweep   tuned mode over per-device batch sizes, with the roofline bound beside it
 9. trace         a torch.profiler trace of a few tuned steps: top operations by GPU time

The paper's run is given its whole need first (it has no figure unless it finishes: nothing is
projected from a cut run); the other steps share what is left in proportion to their needs.

What comes back is at most 5 files in one folder: gpu_check.md (the summary: each figure with
its command, spread and machine), gpu_check.json (every step's raw figures), log.txt (every
step's output), top_ops.txt (the trace's operator table) and environment.json.

TensorFlow is measured beside PyTorch where it is installed; where it is not, its parts are
skipped and the summary says so. `--cpu-rehearsal` runs the same steps' code at tiny sizes on
the CPU (about two minutes on two cores), so that GPU time is never spent on an import error;
there each step may take what is left of the budget (it checks code, not time).
"""

# The steps are data (STEPS below); gpu_steps.py holds their sizes and builds their commands,
# gpu_reports.py turns what those print and write into figures, gpu_runner.py runs them against
# the deadline, gpu_summary.py writes gpu_check.json and gpu_check.md, and gpu_probe.py is what
# the environment step runs (`--probe`).

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from denoisebench.bench import gpu_reports as reports
from denoisebench.bench import gpu_shared
from denoisebench.bench import gpu_steps as steps
from denoisebench.bench.gpu_probe import probe
from denoisebench.bench.gpu_runner import Runner, StepFailed, StepResult
from denoisebench.bench.gpu_steps import GPU_SIZES, REHEARSAL_SIZES, THROUGHPUT, Context, Step
from denoisebench.bench.gpu_summary import write_summary
from denoisebench.core.records import utc_now
from denoisebench.measure.environment import cpu_model, gpu_info

STEPS: list[Step] = [
    # name, title, the seconds it needs at GPU_SIZES on one H200, the sizes its commands read,
    # the commands it runs, what it reports. The seconds were measured there
    # (results/benchmarks/gpu_check_h200_2026-11-26_full, commit 397c1ce) except where marked:
    # fast-paths ran 7 of its 8 runs in 158 s; batch-sweep, its first batch's suite and
    # tight loops in 42 s (of 2 batches x 3 loops); trace, a guess from a 2-epoch run; paper,
    # an estimate, not yet measured: faithful 100 epochs x (0.53 s of training steps + the
    # test split's figures, now on the GPU) plus start-up, about 75 s; tuned, 100 x 0.18 s
    # plus start-up and capture, about 40 s (the 2026-11-26 run, with its figures on the CPU,
    # did 64 and 71 epochs in 111 and 89 s); shared-gpu, a guess (two process start-ups with
    # CUDA's, as the environment step's 8 s, and 27 tiny float64 steps; 35 s on 2 CPU cores).
    Step(
        "environment", "Environment", 8.0, (),
        steps.probe_commands, reports.report_environment,
    ),
    Step(
        "gpu-tests", "Tests marked gpu", 86.0, (),
        steps.gpu_test_commands, reports.report_pytest,
    ),
    Step(
        "shared-gpu", "2 DDP ranks sharing one GPU against one device (correctness, no speed "
        "figure)", 45.0, gpu_shared.SIZES, gpu_shared.commands, gpu_shared.report,
    ),
    Step(
        "bench", "Suite vs hand-written loop, faithful float32", 91.0,
        (*THROUGHPUT, "bench_batch", "bench_steps", "bench_warmup", "bench_repeats"),
        steps.bench_commands, reports.report_bench,
    ),
    Step(
        "paper", "The paper's workload, end to end", 130.0,
        ("device", "paper_images", "paper_epochs"),
        steps.paper_commands, reports.report_paper, whole=True,
    ),
    Step(
        "fast-paths", "Each fast path alone and the tuned mode (0.1 dB check)", 180.0,
        ("device", "paths_profile", "paths_batch", "paths_steps", "paths_warmup", "paths_skip"),
        steps.fast_path_commands, reports.report_fast_paths,
    ),
    Step(
        "profiler", "Profiler overhead (profiler on vs off)", 65.0,
        (*THROUGHPUT, "profiler_epochs", "profiler_batch", "profiler_repeats"),
        steps.profiler_commands, reports.report_bench,
    ),
    Step(
        "batch-sweep", "Tuned mode over batch sizes, with the roofline", 115.0,
        (*THROUGHPUT, "sweep_batches", "sweep_steps", "bench_warmup"),
        steps.sweep_commands, reports.report_sweep,
    ),
    Step(
        "trace", "What holds a tuned step back (torch.profiler)", 25.0,
        (*THROUGHPUT, "trace_batch", "trace_steps"),
        steps.trace_commands, reports.report_trace,
    ),
]  # fmt: skip
MIN_STEP_S = 30.0
"""No step is given less than this (never more than what is left of the budget)."""
WHOLE_MARGIN = 1.5
"""A `whole` step (the paper's run) may take this times its need: its need is an estimate."""
OUTPUT_FILES = ("gpu_check.json", "gpu_check.md", "log.txt", "top_ops.txt", "environment.json")


def step_limit_s(left_s: float, need_s: float, needs_after_s: float) -> float:
    """A step's time limit: its need's share of what is left, against the needs of the steps
    still to run (itself included, `needs_after_s`). A budget that covers every need gives each
    step more than it needs; a shorter one cuts every step in the same proportion instead of
    starving the last ones, and a step that ends early leaves its time to the rest."""
    return min(left_s, max(MIN_STEP_S, left_s * need_s / needs_after_s))


def step_limits(left_s: float, todo: list[Step]) -> float:
    """The time limit of `todo[0]`, with `todo` the chosen steps from it on. A `whole` step
    (its figure needs it run to the end) gets WHOLE_MARGIN times its need; the others share
    what is left after the `whole` steps still to come have theirs (step_limit_s)."""
    step = todo[0]
    if step.whole:
        return min(left_s, max(MIN_STEP_S, WHOLE_MARGIN * step.need_s))
    reserved = sum(WHOLE_MARGIN * s.need_s for s in todo[1:] if s.whole)
    shared = sum(s.need_s for s in todo if not s.whole)
    return min(left_s, step_limit_s(max(0.0, left_s - reserved), step.need_s, shared))


def installed_frameworks() -> tuple[list[str], str | None]:
    if importlib.util.find_spec("tensorflow") is None:
        return ["torch"], "TensorFlow is not installed here: every TensorFlow part is skipped"
    return ["torch", "tf"], None


def refused(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_check(args: argparse.Namespace) -> int:
    frameworks, note = installed_frameworks()
    if args.framework != "auto":
        if args.framework != "torch" and "tf" not in frameworks:
            return refused(f"--framework {args.framework}: TensorFlow is not installed")
        frameworks = ["torch", "tf"] if args.framework == "both" else [args.framework]
        note = None
    unknown = set(args.only or []) - {step.name for step in STEPS}
    if unknown:
        return refused(f"--only {', '.join(sorted(unknown))}: not a step "
                       f"({', '.join(step.name for step in STEPS)})")  # fmt: skip
    gpus = gpu_info()
    if not args.cpu_rehearsal and not gpus.get("gpus"):
        return refused(
            f"no NVIDIA GPU found (NVML: {gpus.get('reason', 'no devices')}); on a CPU, "
            "--cpu-rehearsal runs every step at tiny sizes"
        )
    sizes = REHEARSAL_SIZES if args.cpu_rehearsal else GPU_SIZES
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)  # a file from an earlier check would mislead
    header = {
        "command": shlex.join(["python", "-m", "launch", "gpu-check", *args.argv]),
        "machine": machine_line(gpus),
        "started": utc_now(),
        "budget_s": args.budget_s,
        "frameworks": frameworks,
        "frameworks_note": note,
        "sizes": dataclasses.asdict(sizes),
        "rehearsal": args.cpu_rehearsal,
    }
    with tempfile.TemporaryDirectory(prefix="denoisebench-gpucheck-") as tmp:
        ctx = Context(sizes, frameworks, Path(tmp), out)
        results = run_steps(ctx, header, args.budget_s, args.only)
    bad = [r for r in results if r.status in ("failed", "timeout")]
    print(f"summary: {out / 'gpu_check.md'}; {len(bad)} of {len(results)} steps not ok", flush=True)
    return 1 if bad else 0


def machine_line(gpus: dict[str, Any]) -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores; " + (
        ", ".join(f"{g['name']} (driver {gpus.get('driver')})" for g in gpus["gpus"])
        if gpus.get("gpus")
        else f"no GPU ({gpus.get('reason', 'NVML found none')})"
    )


def run_steps(
    ctx: Context, header: dict[str, Any], budget_s: float, only: list[str] | None
) -> list[StepResult]:
    """Every step of STEPS in turn (those in `only`, if given), each within its share of what
    is left of `budget_s`; the summary rewritten after each."""
    results = [StepResult(step.name, step.title) for step in STEPS]
    deadline = time.monotonic() + budget_s
    write_summary(ctx.out, results, header, final=False)
    print(f"gpu-check: {len(STEPS)} steps within {budget_s:.0f} s; output in {ctx.out}", flush=True)
    runner = Runner(ctx.python, ctx.out / "log.txt", deadline)
    chosen = [not only or step.name in only for step in STEPS]
    for i, (step, res) in enumerate(zip(STEPS, results, strict=True)):
        if not chosen[i]:
            res.status, res.reason = "skipped", "not in --only"
            continue
        left = deadline - time.monotonic()
        if left < 5:
            res.status, res.reason = "not run", "the budget was spent"
            continue
        # the rehearsal checks the steps' code, not their time: each may take what is left
        todo = [s for s, c in zip(STEPS[i:], chosen[i:], strict=True) if c]
        limit = left if header["rehearsal"] else step_limits(left, todo)
        runner.start(res, limit)
        print(f"[{step.name}] {step.title} (up to {limit:.0f} s)", flush=True)
        run_step(step, runner, ctx, res)
        print(f"[{step.name}] {res.status} in {res.wall_s:.0f} s"
              + (f": {res.reason}" if res.reason else ""), flush=True)  # fmt: skip
        write_summary(ctx.out, results, header, final=False)
    write_summary(ctx.out, results, header, final=True)
    return results


def run_step(step: Step, runner: Runner, ctx: Context, res: StepResult) -> None:
    """One step: its commands, then what it reports; its status, reason and wall time."""
    t0 = time.monotonic()
    try:
        step.report(runner, ctx, res, step.commands(ctx))
        res.status = "ok"
    except StepFailed as e:
        res.status, res.reason = e.status, e.reason
    except Exception as e:  # a bug in this check must not lose the other steps
        res.status, res.reason = "failed", f"{type(e).__name__}: {e}"
    res.wall_s = time.monotonic() - t0


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
        help="seconds for the whole check: the paper's run first gets 1.5 times its need, "
        "then each other step its need's share of what is left (the needs, measured on an "
        "H200 where a step finished there, estimated otherwise, add up to about 745 s: a "
        "shorter budget cuts those steps in proportion, and a step that ends early leaves its "
        "time to the rest) (default: %(default)s, 8 minutes)",
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
        help=f"run only this step (repeatable): {', '.join(step.name for step in STEPS)}",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.argv = argv
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):  # nan > 0 and nan <= 0 are False
        parser.error(f"--budget-s {args.budget_s}: must be a number of seconds > 0")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: a file, not a folder")
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
