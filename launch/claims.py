"""The paper's claims, tested: both frameworks x {native, shared} initialisation x seeds, each
initialisation one `python -m launch` run with one repeat per seed, then the report with its
section "The paper's claims" (denoisebench.report.claims), whose table is printed here too.

    python -m launch claims --data /data/EuroSAT.zip               # the paper's profile, 100 epochs
    python -m launch claims --data builtin --epochs 4 --limit 480  # the quick form: minutes on CPU
    python -m launch claims --data builtin --epochs 4 --limit 480 --seeds 0,1,2,3,4
    python -m launch report results/<run-id> --claims              # the section again, from disk

Writes results/<run-id>/native/ and shared/ (each a run folder with repeat-<k>/ per seed) and
results/<run-id>/report/. Run again with the same --run-id, it continues where it stopped
(`--resume` of each initialisation's run; completed frameworks are skipped).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from denoisebench.core.records import default_results, new_run_id
from denoisebench.report.build import ReportError, write_report
from launch.options import seed_list
from launch.supervise import run_launcher

INITS = ("native", "shared")
DEFAULT_SEEDS = "0,1,2"


def build_parser(prog: str = "python -m launch claims") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--profile",
        default="paper",
        help="the run profile both initialisations use (default: %(default)s, the paper's "
        "setup: EuroSAT, Gaussian 0.2, MAE, Adam, 100 epochs)",
    )
    p.add_argument("--mode", metavar="MODE", help="speed mode, as python -m launch --mode")
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="as python -m launch --data: a path to EuroSAT.zip or its folder, tfds, builtin "
        "(not EuroSAT: the report says so), synthetic",
    )
    p.add_argument("--tfds-dir", metavar="DIR", help="TFDS data dir (with --data tfds)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    p.add_argument("--epochs", type=int, help="training epochs (default: the profile's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the profile's)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], help="where to train")
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=seed_list(DEFAULT_SEEDS),
        metavar="S,S,...",
        help="one repeat per seed, for each initialisation and framework; a verdict other than "
        f"'within noise' needs 3 or more (default: {DEFAULT_SEEDS})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config override, as python -m launch --set (not train.init or train.seed)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=default_results(),
        help="folder that receives results/<run-id>/ (default: %(default)s)",
    )
    p.add_argument(
        "--run-id", help="name of the folder (default: <UTC time>-claims); an existing one resumes"
    )
    p.add_argument(
        "--baseline-images",
        type=int,
        default=8,
        metavar="N",
        help="test images for the report's classical baselines; 0 skips them "
        "(default: %(default)s)",
    )
    return p


def launch_cmd(args: argparse.Namespace, init: str, root: Path) -> list[str]:
    """The `python -m launch` run of one initialisation: both frameworks, one repeat per seed
    (frameworks interleaved); or its --resume where the folder exists."""
    run_dir = root / init
    if (run_dir / "config.json").is_file():
        return [sys.executable, "-m", "launch", "--resume", str(run_dir)]
    cmd = [sys.executable, "-m", "launch", "--profile", args.profile, "--framework", "both"]
    for option, value in (
        ("--mode", args.mode),
        ("--data", args.data),
        ("--tfds-dir", args.tfds_dir),
        ("--limit", args.limit),
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--device", args.device),
    ):
        if value is not None:
            cmd += [option, str(value)]
    cmd += [x for pair in args.set for x in ("--set", pair)]
    seeds = ",".join(map(str, args.seeds))
    cmd += ["--init", init, "--seeds", seeds, "--results", str(root), "--run-id", init]
    return cmd


def continue_command(prog: str, argv: list[str] | None, run_id: str) -> str:
    """The command that continues these claims runs: the same options, with --run-id."""
    words = list(sys.argv[1:] if argv is None else argv)
    kept = []
    while words:
        word = words.pop(0)
        if word == "--run-id" and words:
            words.pop(0)
        elif not word.startswith("--run-id="):
            kept.append(word)
    return shlex.join([*prog.split(), *kept, "--run-id", run_id])


def main(argv: list[str] | None = None, prog: str = "python -m launch claims") -> int:
    args = build_parser(prog).parse_args(argv)
    fixed = [s for s in args.set if s.split("=")[0].strip() in ("train.init", "train.seed")]
    if fixed:
        print(
            f"error: --set {fixed[0]}: the claims runs set train.init (native and shared) and "
            "train.seed (--seeds) themselves",
            file=sys.stderr,
        )
        return 2
    root = args.results / (args.run_id or new_run_id("claims"))
    print(f"claims folder: {root}", flush=True)
    for k, init in enumerate(INITS):
        cmd = launch_cmd(args, init, root)
        print(f"=== {init} initialisation: {' '.join(cmd)}", flush=True)
        code, stopped_by = run_launcher(cmd)  # stop signals passed on, waited for
        if stopped_by is not None:
            done = f"the {', '.join(INITS[:k])}-init runs finished; " if k else ""
            print(
                f"claims: stopped by {stopped_by} during the {init}-init runs ({done}their "
                f"trainers recorded where they were); continue with: "
                f"{continue_command(prog, argv, root.name)}",
                file=sys.stderr,
                flush=True,
            )
            return 128 + signal.Signals[stopped_by].value
        if code == 2 and not (root / init / "config.json").is_file():
            return code  # the launcher refused the options and said why: nothing to continue
        if code != 0:
            print(
                f"error: the {init}-init runs ended with exit code {code}; run the same "
                f"command with --run-id {root.name} to continue",
                file=sys.stderr,
            )
            return code
    try:
        html = write_report(
            [root / init for init in INITS],
            root / "report",
            args.results,
            baseline_images=args.baseline_images,
            claims=True,
        )
    except (ReportError, OSError) as e:
        print(f"error: report not written ({e})", file=sys.stderr)
        return 1
    print()
    print((root / "report" / "claims.txt").read_text(), flush=True)
    print(f"\nreport: {html}", flush=True)
    return 0
