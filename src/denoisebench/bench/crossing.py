"""What crossing nodes costs: the same workers on one node and on two, through SLURM.

    python -m launch bench crossing-nodes [--engine native|horovod|both]
        [--framework torch|tf|both] [--workers 2] [--repeats 3] [--epochs 3]
        [--on-gpus] [--results DIR] [--limit 900] [--json FILE] [-- LAUNCH OPTIONS...]

For each engine and framework, `--workers` CPU workers (GPUs with `--on-gpus`) train the
same job twice over: all on one node (1 x W) and one per node on W nodes (W x 1), each a
real `python -m launch --slurm --wait` job, so the processes, the data, the global batch
and the training are the same and only where the workers sit differs. The figure is the suite's steady throughput (summary.json `throughput_steady_img_s`: images over
the summed step times, warm-up steps left out), so start-up and evaluation are not in it; the
cost of crossing is the ratio one-node / across-nodes of the medians over `--repeats`
interleaved repeats (the two layouts alternate which goes first), with its spread (the
extremes of the per-repeat ratios). Above 1: the workers on several nodes are slower.

Jobs run one at a time (a framework's two jobs never overlap): on a cluster whose "nodes"
share one machine's cores, as the test cluster's network namespaces do, two jobs at once would
measure each other. Each run's conditions (measure.conditions: other load on the cores it
used) are read from its summary: a disturbed run is counted and named in the table.

What it means: every step all-reduces the gradients, 186,371 float32 parameters (745 KB) for
the paper's model; a ring all-reduce over W workers moves 2 (W-1)/W of that per worker and
step. Between namespaces of one machine the link is a veth pair (a memory copy through the
kernel's TCP stack), so the figure measured there is the TCP path's cost, not a network's;
docs/distributed.md works it out for a real link.

Options after `--` go to every `python -m launch` run as they are (a partition, --time,
--cpus-per-task, --set ...). The runs are kept under --results (on a file system every node
sees), else in a temporary folder under the current one, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoisebench.core.config import ConfigError
from denoisebench.core.records import FRAMEWORKS, read_summary

GRADIENT_BYTES = 186_371 * 4
"""What one step all-reduces for the paper's model: its parameters in float32."""


@dataclass(frozen=True)
class Plan:
    engine: str
    framework: str
    layout: str
    nodes: int
    per_node: int


def layouts(workers: int) -> dict[str, tuple[int, int]]:
    """The two placements of `workers`: all on one node, one on each of `workers` nodes."""
    return {"one node": (1, workers), "across nodes": (workers, 1)}


def plan(engines: list[str], frameworks: list[str], workers: int, repeat: int) -> list[Plan]:
    """One repeat's runs: every engine and framework, its two layouts back to back, the
    layout that goes first alternating with the repeat (a drift of the machine hits both)."""
    order = list(layouts(workers).items())
    if repeat % 2:
        order.reverse()
    return [
        Plan(engine, framework, name, nodes, per_node)
        for engine in engines
        for framework in frameworks
        for name, (nodes, per_node) in order
    ]


def launch_argv(p: Plan, args: argparse.Namespace, results: Path, run_id: str) -> list[str]:
    """The `python -m launch --slurm --wait` command of one run: global batch args.batch_size."""
    per_worker = args.batch_size // (p.nodes * p.per_node)
    argv = [sys.executable, "-m", "launch", "--slurm", "--wait", "--no-report"]
    argv += ["--framework", p.framework, "--engine", p.engine, "--profile", args.profile]
    argv += ["--nodes", str(p.nodes), "--gpus", str(p.per_node)]
    argv += ["--batch-size", str(per_worker), "--epochs", str(args.epochs)]
    argv += ["--limit", str(args.limit)]
    argv += ["--results", str(results), "--run-id", run_id]
    if not args.on_gpus:
        argv.append("--cpu-workers")
    return argv + args.launch_options


def measure(p: Plan, argv: list[str], fw_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run one job to its end; its steady throughput and whether it was disturbed."""
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    summary = read_summary(fw_dir.parent, fw_dir.name) or {}
    if proc.returncode != 0 or summary.get("status") != "completed":
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{p.engine} {p.framework} {p.layout}: failed: " + " | ".join(tail))
    return {
        "engine": p.engine,
        "framework": p.framework,
        "layout": p.layout,
        "img_s": summary["throughput_steady_img_s"],
        "step_p50_s": summary.get("step_time_p50_s"),
        "disturbed": bool(summary.get("disturbed")),
        "hosts": sorted(
            {h.get("host", "?") for h in summary.get("conditions", {}).get("hosts", [])}
        ),
        "job_s": time.monotonic() - t0,
    }


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine and framework: each layout's median img/s, and the ratio one node / across
    nodes of the medians with the extremes of the per-repeat ratios."""
    rows = []
    keys = sorted({(r["engine"], r["framework"]) for r in runs})
    for engine, framework in keys:
        mine = [r for r in runs if (r["engine"], r["framework"]) == (engine, framework)]
        one = [r["img_s"] for r in mine if r["layout"] == "one node"]
        two = [r["img_s"] for r in mine if r["layout"] == "across nodes"]
        pairs = [a / b for a, b in zip(one, two, strict=False) if b]
        rows.append(
            {
                "engine": engine,
                "framework": framework,
                "one_node_img_s": statistics.median(one),
                "across_nodes_img_s": statistics.median(two),
                "cost": statistics.median(one) / statistics.median(two),
                "cost_min": min(pairs),
                "cost_max": max(pairs),
                "repeats": min(len(one), len(two)),
                "disturbed": sum(r["disturbed"] for r in mine),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]], workers: int) -> str:
    head = (
        f"{'engine':8} {'framework':9} {'1 x ' + str(workers) + ' img/s':>12} "
        f"{str(workers) + ' x 1 img/s':>12} {'cost of crossing':>22} {'disturbed':>9}"
    )
    lines = [head]
    for r in rows:
        cost = f"{r['cost']:.3f} ({r['cost_min']:.3f}-{r['cost_max']:.3f})"
        lines.append(
            f"{r['engine']:8} {r['framework']:9} {r['one_node_img_s']:12.1f} "
            f"{r['across_nodes_img_s']:12.1f} {cost:>22} {r['disturbed']:>9}"
        )
    return "\n".join(lines)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{prog} crossing-nodes",
        description=__doc__.split("\n\n", 2)[2].split("\n\nOptions after")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engine", choices=["native", "horovod", "both"], default="both")
    p.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    p.add_argument("--workers", type=int, default=2, help="workers in each job (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each layout (default: 3)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default: 32)")
    p.add_argument("--profile", default="smoke", help="the runs' profile (default: smoke)")
    p.add_argument(
        "--limit", type=int, default=900, help="images of the data set used (default: 900)"
    )
    p.add_argument("--on-gpus", action="store_true", help="GPU workers (default: CPU workers)")
    p.add_argument("--timeout-s", type=float, default=900, help="per job (default: 900)")
    p.add_argument("--results", type=Path, help="keep the runs here (default: removed)")
    p.add_argument("--json", type=Path, help="also write every run and the table here")
    return p


def check(args: argparse.Namespace) -> None:
    if args.workers < 2 or args.repeats < 1 or args.epochs < 2:
        raise ConfigError("--workers must be >= 2, --repeats >= 1, --epochs >= 2 (one warm-up)")
    if args.batch_size % args.workers:
        raise ConfigError(f"--batch-size {args.batch_size}: not a multiple of --workers")
    if args.json is not None and not args.json.parent.is_dir():
        raise ConfigError(f"--json {args.json}: the folder {args.json.parent} does not exist")


def main(argv: list[str] | None = None, prog: str = "python -m denoisebench.bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser(prog).parse_args(argv[:cut])
    args.launch_options = argv[cut + 1 :]
    try:
        check(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.results is not None:
            args.results.mkdir(parents=True, exist_ok=True)
            runs = run_all(args, args.results)
        else:
            with tempfile.TemporaryDirectory(prefix="crossing-", dir=Path.cwd()) as tmp:
                runs = run_all(args, Path(tmp))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = table(runs)
    print()
    print(format_rows(rows, args.workers))
    print(
        f"cost of crossing: one node's img/s / across nodes' (medians; min-max of the "
        f"per-repeat ratios); each step all-reduces {GRADIENT_BYTES / 1e3:.0f} KB of gradients"
    )
    if args.json:
        given = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": given, "runs": runs, "table": rows}, indent=2))
    return 0


def run_all(args: argparse.Namespace, results: Path) -> list[dict[str, Any]]:
    """Every repeat of every engine, framework and layout, one job at a time."""
    engines = ["native", "horovod"] if args.engine == "both" else [args.engine]
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    runs = []
    for k in range(args.repeats):
        for i, p in enumerate(plan(engines, frameworks, args.workers, k)):
            run_id = f"r{k}-{i}-{p.engine}-{p.framework}-{p.nodes}x{p.per_node}"
            argv = launch_argv(p, args, results, run_id)
            run = measure(p, argv, results / run_id / p.framework, args.timeout_s)
            runs.append(run)
            print(
                f"repeat {k + 1}/{args.repeats} {p.engine:7} {p.framework:5} {p.layout:12}: "
                f"{run['img_s']:.1f} img/s{' (disturbed)' if run['disturbed'] else ''}",
                flush=True,
            )
    return runs


if __name__ == "__main__":
    sys.exit(main())
