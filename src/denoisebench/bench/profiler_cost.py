"""Benchmark: training throughput with the profiler on and off, both frameworks.

    python -m denoisebench.bench.profiler_cost [--repeats 5] [--epochs 3] [--gpus N]
        [--profile default] [--set SECTION.KEY=VALUE] [--json FILE]

Each measurement is a fresh `python -m launch` run (the profile's images: by default the
built-in ones; `--set data.source=synthetic` for a larger throughput run) with
`profiler.enabled` true or false; on and off alternate, and the frameworks are interleaved, so
drift of a shared machine hits both settings alike. The table gives the median steady-state
throughput (warm-up steps excluded) of each setting, the overhead of profiling, and the spread.
With the profiler off, steady-state throughput still comes from the same step records, so the
two settings are measured identically.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from denoisebench.bench.suite import machine_line, run_checked
from denoisebench.core.records import FrameworkRecords


def measure(framework: str, enabled: bool, args: argparse.Namespace, root: Path, k: int) -> float:
    run_id = f"{framework}-{'on' if enabled else 'off'}-{k}"
    cmd = [
        sys.executable,
        "-m",
        "launch",
        "--profile",
        args.profile,
        *[x for pair in args.set for x in ("--set", pair)],
        "--framework",
        framework,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--results",
        str(root),
        "--run-id",
        run_id,
        "--set",
        f"profiler.enabled={str(enabled).lower()}",
    ]
    if args.gpus:
        cmd += ["--gpus", str(args.gpus)]
    run_checked(cmd)
    records = FrameworkRecords.read(root / run_id, framework)
    if records is None:
        raise RuntimeError(f"{root / run_id / framework}: the run wrote no summary.json")
    return float(records.summary["throughput_steady_img_s"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting (default: 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="per device (default: 32)")
    parser.add_argument("--gpus", type=int, default=0, help="devices (default: one, no DDP)")
    parser.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    parser.add_argument("--profile", default="default", help="(default: %(default)s)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for every run (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    frameworks = ["torch", "tf"] if args.framework == "both" else [args.framework]

    raw: dict[str, dict[str, list[float]]] = {f: {"on": [], "off": []} for f in frameworks}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for framework in frameworks:
                order = (True, False) if k % 2 == 0 else (False, True)
                for enabled in order:
                    value = measure(framework, enabled, args, Path(tmp), k)
                    raw[framework]["on" if enabled else "off"].append(value)
                    print(
                        f"repeat {k + 1}/{args.repeats} {framework} profiler "
                        f"{'on ' if enabled else 'off'}: {value:.0f} img/s",
                        flush=True,
                    )

    rows = []
    for framework, values in raw.items():
        on, off = np.median(values["on"]), np.median(values["off"])
        rows.append(
            {
                "framework": framework,
                "runs per setting": args.repeats,
                "off img/s (median)": round(off),
                "on img/s (median)": round(on),
                "overhead %": round(100.0 * (off - on) / off, 2),
                "off spread %": round(100.0 * (max(values["off"]) - min(values["off"])) / off, 1),
                "on spread %": round(100.0 * (max(values["on"]) - min(values["on"])) / on, 1),
            }
        )
    table = pd.DataFrame(rows)
    print()
    print(machine_line([]))
    print(f"profile {args.profile}, {args.epochs} epochs of batch {args.batch_size}; medians")
    print(table.to_string(index=False))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine_line([]),
                    "args": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                    "raw": raw,
                    "table": json.loads(table.to_json(orient="records")),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
