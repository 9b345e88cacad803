"""Fast-paths benchmark: every speed option of each framework alone, against faithful float32.

    python -m launch bench --paths [--framework torch|tf|both] [--steps 60] [--warmup 10]
        [--batch-size 64] [--profile default] [--repeats 3] [--set SECTION.KEY=VALUE]
        [--json FILE] [--skip-path OPTION]

For each framework this trains the suite's trainer (a real `python -m launch` run, timed as
bench/suite.py times it: wall time of the training loops of the epochs after the warm-up) once per
option in PATHS that applies to this machine, and once in the `tuned` mode
(profiles/modes/tuned.toml, its table for this machine's device kind). Options and frameworks
are interleaved over the repeats, each run a fresh process. The table gives, per option:
img/s (median, min-max), the speed-up over faithful float32, and the final test PSNR minus
faithful's. The tuned mode's promise is a PSNR within 0.1 dB of float32: the `within 0.1 dB`
column checks it, for the length of training run here (a few epochs: pass more `--steps` for a
longer check; every option starts from the same seed, data and noise).

This is how the choices in profiles/modes/tuned.toml are made: the fastest options that keep
the PSNR, per device kind. CUDA graphs and TF32 apply to GPUs only and are skipped elsewhere
(the table says so).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denoisebench.bench.suite import machine_line, measure_suite
from denoisebench.core.config import PSNR_TOLERANCE_DB, Config
from denoisebench.core.records import FRAMEWORKS, atomic_write_json
from denoisebench.measure.environment import local_device_kind

FAITHFUL = "float32 (faithful)"
TUNED = "tuned mode"


# framework -> [(option, config overrides, needs a GPU)]; the first is the reference
PATHS: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "torch": [
        (FAITHFUL, (), False),
        ("bfloat16 autocast", ("runtime.precision=bfloat16",), False),
        ("float16 autocast", ("runtime.precision=float16",), False),
        ("channels_last", ("runtime.channels_last=true",), False),
        ("torch.compile", ("runtime.torch_compile=true",), False),
        ("CUDA graphs", ("runtime.cuda_graphs=true",), True),
        ("TF32", ("runtime.tf32=true",), True),
    ],
    "tf": [
        (FAITHFUL, (), False),
        ("XLA (jit_compile)", ("runtime.xla=true",), False),
        ("mixed_bfloat16", ("runtime.precision=bfloat16",), False),
        ("mixed_float16", ("runtime.precision=float16",), False),
        ("TF32", ("runtime.tf32=true",), True),
    ],
}


def plan(
    frameworks: list[str], kind: str, skip: tuple[str, ...] = ()
) -> tuple[list[tuple[str, str, tuple[str, ...]]], list]:
    """(framework, option, overrides) to run on a device of `kind`, with the tuned mode last
    (overrides None), and the options skipped here with the reason (`skip`: options named
    by --skip-path)."""
    runs, skipped = [], []
    for framework in frameworks:
        for name, overrides, gpu_only in PATHS[framework]:
            if name in skip and name != FAITHFUL:
                skipped.append((framework, name, "--skip-path"))
            elif gpu_only and kind != "gpu":
                skipped.append((framework, name, "needs a GPU"))
            else:
                runs.append((framework, name, overrides))
        runs.append((framework, TUNED, None))
    return runs, skipped


def paths_frame(raw: dict[tuple[str, str], list[dict[str, Any]]]) -> pd.DataFrame:
    """One row per (framework, option): median img/s, spread, speed-up and PSNR difference
    against the same framework's faithful float32 runs."""
    rows = []
    for (framework, option), runs in raw.items():
        ref = raw[(framework, FAITHFUL)]
        img_s = float(np.median([r["img_s"] for r in runs]))
        psnr = float(np.median([r["psnr_db"] for r in runs]))
        delta = psnr - float(np.median([r["psnr_db"] for r in ref]))
        rows.append(
            {
                "framework": framework,
                "option": option,
                "repeats": len(runs),
                "img/s": img_s,
                "min-max": f"{min(r['img_s'] for r in runs):.0f}-{max(r['img_s'] for r in runs):.0f}",
                "speed-up": img_s / float(np.median([r["img_s"] for r in ref])),
                "PSNR dB": psnr,
                "PSNR diff dB": delta,
                "within 0.1 dB": abs(delta) <= PSNR_TOLERANCE_DB,
                "data wait": float(np.median([r["data_wait_fraction"] for r in runs])),
            }
        )
    return pd.DataFrame(rows)


def format_paths(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    shown["img/s"] = shown["img/s"].round().astype(int)
    shown["speed-up"] = shown["speed-up"].round(2)
    shown["PSNR dB"] = shown["PSNR dB"].round(2)
    shown["PSNR diff dB"] = shown["PSNR diff dB"].round(3)
    shown["data wait"] = shown["data wait"].round(4)
    return shown.to_string(index=False)


def run_paths(
    args: argparse.Namespace, cfg: Config, epochs: int, first_steady: int, header: str
) -> int:
    """The --paths benchmark (bench.main has checked the arguments and sized the runs)."""
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    kind = local_device_kind(cfg.train.device)
    runs, skipped = plan(frameworks, kind, tuple(args.skip_path))
    print(f"{header}; options on {kind}: {len(runs)} runs per repeat", flush=True)
    raw: dict[tuple[str, str], list[dict[str, Any]]] = {(f, o): [] for f, o, _ in runs}
    failed: dict[tuple[str, str], str] = {}  # (framework, option) -> its first error
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="denoisebench-paths-") as tmp:
        root = Path(tmp)
        for k in range(args.repeats):
            for i, (framework, option, overrides) in enumerate(runs if k % 2 == 0 else runs[::-1]):
                variant = copy.copy(args)
                # the tuned mode; faithful; or one option alone, with no mode to name it
                variant.mode = "tuned" if overrides is None else None if overrides else "faithful"
                variant.set = [*args.set, *(overrides or ())]
                tag = f"{k}-{i}"
                try:
                    fig = measure_suite(framework, variant, root, tag, epochs, first_steady)
                except SystemExit as e:  # one option failing must not lose the others
                    error = str(e).strip().splitlines()[-1] if str(e).strip() else "failed"
                    failed.setdefault((framework, option), error)
                    print(f"repeat {k + 1}/{args.repeats} {framework:5} {option:20}: "
                          f"FAILED: {e}", flush=True)  # fmt: skip
                    continue
                raw[(framework, option)].append(fig)
                print(
                    f"repeat {k + 1}/{args.repeats} {framework:5} {option:20}: "
                    f"{fig['img_s']:.0f} img/s, PSNR {fig['psnr_db']:.2f} dB",
                    flush=True,
                )
                if args.json:  # after every run: a benchmark cut short keeps what it measured
                    write_json(args, kind, epochs, first_steady, t_start, skipped, failed, raw)
    elapsed_s = time.perf_counter() - t_start
    frame = measured_frame(raw)
    print()
    print(machine_line([]))
    print(
        f"profile {cfg.profile}, batch {args.batch_size}, {epochs} epochs "
        f"(first {first_steady} warm-up), {args.repeats} repeats; medians, spread min-max; "
        f"PSNR diff: final test PSNR minus faithful float32's"
    )
    print(format_paths(frame) if len(frame) else "no option was measured")
    for framework, option, reason in skipped:
        print(f"skipped: {framework} {option} ({reason})")
    for (framework, option), error in failed.items():
        print(f"FAILED: {framework} {option}: {error}")
    print(f"\nbenchmark took {elapsed_s:.0f} s", flush=True)
    if args.json:
        write_json(args, kind, epochs, first_steady, t_start, skipped, failed, raw, finished=True)
    return 1 if failed else 0


def measured_frame(raw: dict[tuple[str, str], list[dict[str, Any]]]) -> pd.DataFrame:
    """The table of what was measured so far (frameworks whose faithful run is among it)."""
    measured = {key: runs for key, runs in raw.items() if runs}
    frameworks_ok = {f for f, o in measured if o == FAITHFUL}
    return paths_frame({(f, o): v for (f, o), v in measured.items() if f in frameworks_ok})


def write_json(
    args: argparse.Namespace,
    kind: str,
    epochs: int,
    first_steady: int,
    t_start: float,
    skipped: list[tuple[str, str, str]],
    failed: dict[tuple[str, str], str],
    raw: dict[tuple[str, str], list[dict[str, Any]]],
    finished: bool = False,
) -> None:
    """--json FILE, rewritten whole (atomically); `finished` false while runs remain."""
    result = {
        "machine": machine_line([]),
        "device_kind": kind,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "finished": finished,
        "suite_epochs": epochs,
        "suite_first_steady_epoch": first_steady,
        "elapsed_s": time.perf_counter() - t_start,
        "skipped": skipped,
        "failed": [[f, o, error] for (f, o), error in failed.items()],
        "raw": {f"{f}/{o}": v for (f, o), v in raw.items()},
        "table": json.loads(measured_frame(raw).to_json(orient="records")),
    }
    atomic_write_json(args.json, result)
