"""The words of the report's tables and the launcher's closing table, each said once, where it
appears: the report explains a column under the first table that shows it (`table_keys`), the
console table under itself (report/compare.py). docs/results.md ("Words in the report") lists
the same words; tests/test_report_screen.py holds the two together.

A link to the reference is written `[words](docs:<page>.md#<anchor>)`; report/render.py makes
it a link to docs/ (or plain text outside a source checkout).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

VERDICTS_DOC = "docs:results.md#verdicts"
RUN_CONDITIONS_DOC = "docs:measurements.md#run-conditions"
STEADY_DOC = "docs:measurements.md#steady-state"
TARGET_DOC = "docs:results.md#time-to-target"


def warmup(steps: int | None = None) -> str:
    """What "steady" leaves out (core/epochs.py: step_stats, is_warmup), with the number of
    steps where the runs' configs agree on one."""
    if steps is None:
        return "each training process's first profiler.warmup_steps steps"
    return f"each training process's first {steps} steps, profiler.warmup_steps"


WARMUP = warmup()
STEADY = f"training images per second without warm-up ({WARMUP}), median over epochs"
DISTURBED = "other load on the machine crossed a threshold while the run trained"
SETUP = (
    "the profile, then a hash of the config apart from batch size and seed: repeats and seeds "
    "of one experiment share it; its config is under Configs"
)
GROUP = "the runs of one framework with one setup, engine, device count and batch per device"

TERMS: dict[str, str] = {
    "repeats": "completed runs (k of m: m runs, k completed); each figure is their median, "
    "[min, max] when they differ; "
    f"(k disturbed): in k of them {DISTURBED} ([run conditions]({RUN_CONDITIONS_DOC}))",
    "engine": "native (torchrun, tf.distribute) or horovod",
    "batch/device": "training batch per device (global batch = batch x devices)",
    "setup": SETUP,
    "throughput img/s": f"steady state: {STEADY} ([steady state]({STEADY_DOC}))",
    "per device img/s": "throughput / devices",
    "scaling efficiency": "throughput(N) / (N x throughput(1)) against the 1-device group",
    "step p50 ms": "median training step time after warm-up",
    "step p95 ms": "95th percentile of it",
    "data wait %": "share of step time spent waiting for the next batch",
    "MFU %": "model FLOP utilisation: achieved training FLOP/s / the devices' peak",
    "GPU mem peak GiB (allocator)": "the framework allocator's peak",
    "GPU mem peak GiB (NVML)": "the GPU's used memory at its peak, every process (NVML)",
    "host RSS peak GiB": "peak resident host memory of a training process and its children",
    "GPU J/img": "GPU energy of the training windows / training images",
    "GPU J/epoch": "the same energy / epochs",
    "energy method": "how GPU energy was read: NVML's energy counter or power x time",
    "CPU J/img (RAPL)": "CPU package energy (RAPL) / training images",
    "epoch train s": "median training time of an epoch (evaluation excluded)",
    "target PSNR dB": "the test PSNR to reach: each run's noisy-input PSNR + 3 dB unless "
    f"--target-psnr sets it ([time to target]({TARGET_DOC}))",
    "epochs to target": "epochs up to the first whose test PSNR reaches the target",
    "time to target s": "training time summed over those epochs (evaluation excluded)",
    "GPU J to target": "GPU energy summed over the same epochs",
    "test MAE": "mean |output - clean| over the test images after the last epoch",
    "PSNR dB": "final test PSNR of the outputs against the clean images",
    "SSIM": "final test structural similarity (1 = identical)",
    "noisy PSNR dB": "PSNR of the noisy inputs themselves: where denoising starts",
    "disturbed": f"yes when {DISTURBED}, with why ([thresholds]({RUN_CONDITIONS_DOC}))",
    "run conditions": "what else the machine did while the run trained",
}
"""Column label (groups.METRIC's labels and the runs and environment tables') -> its meaning."""


def steady_term(warmup_steps: set[int]) -> str:
    """TERMS' throughput words with the warm-up steps of these runs' configs, when they share
    one number."""
    if len(warmup_steps) != 1:
        return TERMS["throughput img/s"]
    n = next(iter(warmup_steps))
    return TERMS["throughput img/s"].replace(WARMUP, warmup(n))


def table_keys(
    tables: Iterable[tuple[str, pd.DataFrame]], override: dict[str, str] | None = None
) -> dict[str, str]:
    """Table title -> one line explaining the columns it shows that no table before it
    explained, in report order, each column's name in bold (**name**); `override`: column ->
    the words to use instead of TERMS'."""
    words = TERMS | (override or {})
    seen: set[str] = set()
    keys: dict[str, str] = {}
    for title, frame in tables:
        new = [c for c in frame.columns if c in words and c not in seen]
        seen.update(new)
        if new:
            keys[title] = "; ".join(f"**{c}**: {words[c]}" for c in new) + "."
    return keys
