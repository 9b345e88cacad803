"""The GPU check's shared-GPU step: PyTorch's multi-GPU code path checked on the one GPU a
check node has, as a correctness check with no speed figure.

    python -m launch gpu-check --only shared-gpu        # once gpu_check.STEPS lists the step

Two runs of the suite's launcher on the smoke profile's built-in images, in the exact mode
(float64, deterministic kernels): one device with the global batch, then torchrun with 2 DDP
ranks of half that batch that share the device (runtime.share_gpus: both on CUDA ordinal 0,
over gloo, as NCCL refuses two ranks on one GPU; core/placement.py says where). The batch rule
(core/distributed.py) gives both the same images and noise, so their per-epoch losses and final
weights agree to rounding, or the multi-GPU path is wrong. Two ranks on one GPU wait for each
other's kernels and all-reduce through host memory: no speed figure is taken from the step, and
the shared run's summary.json says so (runtime.speed_reason). On the CPU rehearsal the same
commands run 2 gloo CPU workers, each its own device (share_gpus does nothing there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.bench.gpu_runner import Run, Runner, StepFailed, StepResult, last_lines
from denoisebench.bench.gpu_steps import Context, run_folder
from denoisebench.core.records import read_json, read_jsonl

SIZES = ("device",)
"""The Sizes fields `commands` reads."""
RANKS = 2
GLOBAL_BATCH = 16
"""Images per step over all ranks: the one-device run's batch, RANKS x the shared run's."""
EPOCHS = {"gpu": 3, "cpu": 2}
"""Epochs of each run (the smoke profile's 148 training images: 9 steps an epoch)."""
EXACT = ("--set", "runtime.precision=float64", "--set", "train.deterministic=true")
"""The equivalence tests' exact mode (tests/helpers.py), which exists on a GPU as on a CPU:
float64 weights, Adam state, images, noise and loss, and deterministic cuDNN kernels."""
WEIGHT_ATOL = 1e-9
"""Largest |difference| of a final weight: tests/helpers.py's EXACT_ATOL. Its derivation holds on
a GPU: the gradient of the global batch summed as two halves and an all-reduce (gloo, float64,
on the host) instead of at once rounds differently by about float64's unit roundoff of the terms,
and cuDNN's float64 kernels sum a batch of 8 and of 16 in other orders by as little; Adam's
amplification leaves that near 1e-13 after these steps, while a real fault (gradients not
averaged, a slice skipped, other noise on one rank) moves weights by 3e-3 or more."""
LOSS_ATOL = 1e-6
"""Largest |difference| of an epoch's train or test loss. Looser than the weights': in the exact
mode too the trainer keeps each step's loss in a float32 buffer (torch_backend.train.run_epoch)
and scores the test split's outputs as float32 (evaluation.TestSet), so either loss rounds at
about 6e-8 relative (measured on CPU: 3e-8 apart at losses of 0.23, weights 9e-17 apart)."""
NOTE = "2 ranks sharing one GPU: correctness check, no speed figure"
REHEARSAL_NOTE = "CPU rehearsal: 2 gloo CPU workers, each its own device (no GPU to share)"


def commands(ctx: Context) -> list[list[str]]:
    """One device with the global batch, then RANKS DDP ranks sharing it: same epochs, data,
    seed and exact mode; run folders <work>/shared-gpu/{one-device,shared}."""
    device = ctx.sizes.device
    common = [
        ctx.python, "-m", "launch", "--framework", "torch", "--profile", "smoke",
        "--epochs", str(EPOCHS[device]), *EXACT, "--set", f"train.device={device}",
        "--no-report", "--results", str(ctx.work / "shared-gpu"),
    ]  # fmt: skip
    return [
        [*common, "--batch-size", str(GLOBAL_BATCH), "--run-id", "one-device"],
        [
            *common, "--gpus", str(RANKS), "--batch-size", str(GLOBAL_BATCH // RANKS),
            "--set", "runtime.share_gpus=true", "--run-id", "shared",
        ],
    ]  # fmt: skip


def report(r: Runner, ctx: Context, res: StepResult, argvs: list[list[str]]) -> None:
    """Run both, then compare their per-epoch losses and final weights (compare_runs); a run
    that fails, a shared run not labelled as one, or a difference past the tolerances ends the
    step as failed, with what was compared kept in its figures and table."""
    on_gpu = ctx.sizes.device == "gpu"
    for i, argv in enumerate(argvs):
        run = r.run(argv, check=False, share=0.4 if i == 0 else 1.0)
        if run.timed_out or run.returncode != 0:
            raise StepFailed(*_failure(run, "one device" if i == 0 else f"{RANKS} ranks"), run)
    res.figures = compare_runs(run_folder(argvs[0]), run_folder(argvs[1]), on_gpu)
    res.table = "\n".join(table_lines(res.figures))
    if res.figures["problems"]:
        raise StepFailed("failed", "; ".join(res.figures["problems"]))


def _failure(run: Run, which: str) -> tuple[str, str]:
    if run.timed_out:
        return "timeout", f"the {which} run was cut after {run.wall_s:.0f} s"
    return "failed", f"the {which} run: exit {run.returncode}: {last_lines(run.output)}"


def compare_runs(one: Path, shared: Path, on_gpu: bool) -> dict[str, Any]:
    """The figures of the step from two framework folders (<run>/torch): each epoch's losses
    side by side, the largest differences against their tolerances, what the shared run
    recorded of itself, and `problems` (empty when the runs agree and the label is there)."""
    one_epochs, two_epochs = read_jsonl(one / "epochs.jsonl"), read_jsonl(shared / "epochs.jsonl")
    summary = read_json(shared / "summary.json")
    runtime = summary.get("runtime") or {}
    epochs = [
        {
            "epoch": a["epoch"] + 1,
            **{f"{key}_one_device": a[key] for key in ("train_loss", "test_loss")},
            **{f"{key}_{RANKS}_ranks": b[key] for key in ("train_loss", "test_loss")},
            "max_loss_diff": max(abs(a[k] - b[k]) for k in ("train_loss", "test_loss")),
        }
        for a, b in zip(one_epochs, two_epochs, strict=False)
    ]
    weight_diff = max_weight_diff(one / "weights.npz", shared / "weights.npz")
    figures: dict[str, Any] = {
        "note": NOTE if on_gpu else REHEARSAL_NOTE,
        "epochs": epochs,
        "max_loss_diff": max((e["max_loss_diff"] for e in epochs), default=None),
        "loss_atol": LOSS_ATOL,
        "max_weight_diff": weight_diff,
        "weight_atol": WEIGHT_ATOL,
        "shared_run": {
            "strategy": summary.get("strategy"),
            "world_size": summary.get("world_size"),
            "global_batch": summary.get("global_batch"),
            "device": summary.get("device"),
            **{k: runtime.get(k) for k in ("ranks_per_gpu", "backend", "speed_reason")},
        },
    }
    figures["problems"] = problems(figures, len(one_epochs), len(two_epochs), on_gpu)
    return figures


def max_weight_diff(a: Path, b: Path) -> float | None:
    """The largest |difference| between two runs' final weights; None when their layouts
    differ (another model: nothing to compare)."""
    with np.load(a) as fa, np.load(b) as fb:
        if sorted(fa.files) != sorted(fb.files):
            return None
        if any(fa[k].shape != fb[k].shape for k in fa.files):
            return None
        return float(max(np.max(np.abs(fa[k] - fb[k])) for k in fa.files))


def problems(figures: dict[str, Any], n_one: int, n_two: int, on_gpu: bool) -> list[str]:
    """What makes the step fail, one phrase each."""
    found = []
    run = figures["shared_run"]
    if (run["strategy"], run["world_size"], run["global_batch"]) != ("ddp", RANKS, GLOBAL_BATCH):
        found.append(
            f"the shared run was not {RANKS} DDP ranks with global batch {GLOBAL_BATCH}: "
            f"strategy {run['strategy']}, {run['world_size']} device(s), batch {run['global_batch']}"
        )
    if on_gpu and (run["ranks_per_gpu"] != RANKS or run["backend"] != "gloo"):
        found.append(
            f"the shared run's ranks did not share the GPU over gloo (summary.json runtime: "
            f"ranks_per_gpu {run['ranks_per_gpu']}, backend {run['backend']})"
        )
    if on_gpu and not run["speed_reason"]:
        found.append("the shared run's summary.json carries no runtime.speed_reason")
    if n_one != n_two or not n_one:
        found.append(f"epochs recorded: {n_one} on one device, {n_two} with {RANKS} ranks")
    loss, weights = figures["max_loss_diff"], figures["max_weight_diff"]
    if loss is not None and loss > LOSS_ATOL:
        found.append(f"an epoch's loss differs by {loss:.3g} (tolerance {LOSS_ATOL:g})")
    if weights is None:
        found.append("the two runs' weights.npz hold different layouts")
    elif weights > WEIGHT_ATOL:
        found.append(f"final weights differ by up to {weights:.3g} (tolerance {WEIGHT_ATOL:g})")
    return found


def table_lines(figures: dict[str, Any]) -> list[str]:
    """The step's table in gpu_check.md: the note first, then each epoch's losses side by side."""
    run = figures["shared_run"]
    lines = [
        figures["note"],
        f"one device (batch {GLOBAL_BATCH}) against {run['world_size']} DDP ranks "
        f"(batch {GLOBAL_BATCH // RANKS} each) on {run['device']}"
        + (f", {run['backend']}" if run.get("backend") else "")
        + "; float64, deterministic kernels",
        f"{'epoch':>5}  {'train loss, 1 device':>22}  {f'{RANKS} ranks':>22}  "
        f"{'test loss, 1 device':>22}  {f'{RANKS} ranks':>22}  {'max |diff|':>10}",
    ]
    for e in figures["epochs"]:
        lines.append(
            f"{e['epoch']:>5}  {e['train_loss_one_device']:>22.15f}  "
            f"{e[f'train_loss_{RANKS}_ranks']:>22.15f}  {e['test_loss_one_device']:>22.15f}  "
            f"{e[f'test_loss_{RANKS}_ranks']:>22.15f}  {e['max_loss_diff']:>10.2e}"
        )
    weights = figures["max_weight_diff"]
    lines.append(
        "final weights: max |difference| "
        + (f"{weights:.2e}" if weights is not None else "not comparable")
        + f" (tolerance {WEIGHT_ATOL:g}); losses: tolerance {LOSS_ATOL:g}"
    )
    lines += [f"FAILED: {p}" for p in figures["problems"]]
    return lines
