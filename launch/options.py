"""The launcher's command line, options only: `build_parser` (one argument group per concern),
the flags as config overrides, and which options a command line gave."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from denoisebench.core.records import default_results

DESCRIPTION = """Train the denoising autoencoder in PyTorch and TensorFlow and compare them.

    python -m launch                                # default profile, both frameworks
    python -m launch --framework torch --epochs 20
    python -m launch --profile paper --data /data/EuroSAT.zip
    python -m launch --set noise.kind=poisson --set noise.peak=10
    python -m launch --resume results/<run-id>      # continue an interrupted run
    python -m launch --gpus 4                       # data parallel on 4 GPUs, both frameworks
    python -m launch --gpus 4 --nodes 2 --node-rank 0 --master-addr node0 --run-id exp1

Configuration precedence: CLI flags and --set > profile file (profiles/<name>.toml) > defaults.

Batch rule (both frameworks): --batch-size is per device; the global batch is batch size x
devices (printed at start). --scale-lr multiplies the learning rate by the number of devices.
With --gpus N, PyTorch runs N DDP ranks under torchrun (NCCL; gloo on CPUs) and TensorFlow
runs MirroredStrategy over N devices (or, with --tf-strategy multiworker or several nodes,
MultiWorkerMirroredStrategy). On a machine without GPUs, --gpus N runs N CPU workers instead:
the same distributed code, on gloo and logical CPU devices. Inside a SLURM allocation the
nodes, node rank and master address are taken from SLURM's environment.
"""
"""`--help`'s text above the options (the subcommands are listed after it)."""

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, what it does). Imported only when asked for: the report's matplotlib and
    # scikit-image, or the benchmarks, would slow every training launch.
    "report": ("denoisebench.report.build", "the comparison report of results folders"),
    "bench": ("denoisebench.bench.cli", "the suite's trainers against hand-written loops"),
    "gpu-check": ("denoisebench.bench.gpu_check", "every GPU-only figure in one command"),
    "claims": ("launch.claims", "the paper's claims tested: both inits x seeds, then the report"),
    "horovod-build": ("denoisebench.cluster.horovod_build", "build and install Horovod (cached)"),
    "data": ("denoisebench.data.fetch", "download EuroSAT RGB (size and sha256 checked)"),
}

REPORT_ENV = "DENOISEBENCH_REPORT"
"""'0' makes --no-report the default (a cluster's job environment, the test suite)."""


def prog() -> str:
    """How the user called us, for usage lines: the console command or `python -m launch`."""
    return "denoisebench" if Path(sys.argv[0]).name == "denoisebench" else "python -m launch"


def subcommand_lines() -> str:
    """The subcommands for --help, each with what it does (each has its own --help)."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"    {prog()} {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    return "\nSubcommands (each has its own --help):\n" + "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line, one argument group per concern (each built by its own function)."""
    p = argparse.ArgumentParser(
        prog=prog(),
        description=DESCRIPTION + subcommand_lines(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add_options in (
        _run_options,
        _data_options,
        _training_options,
        _output_options,
        _check_options,
        _distributed_options,
        _slurm_options,
    ):
        add_options(p)
    return p


def _run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--profile",
        default="default",
        help="profiles/<name>.toml or a path to a TOML file: paper (the paper's setup), "
        "default (short embedded run), smoke (tests) (default: %(default)s)",
    )
    g.add_argument(
        "--mode",
        metavar="MODE",
        help="speed mode laid over the profile's [runtime] (profiles/modes/<MODE>.toml): "
        "faithful (the paper's float32 eager training, the fair comparison) or tuned (each "
        "framework's fastest options within 0.1 dB PSNR of float32); its GPU or CPU table "
        "as the run trains on GPUs or not; --set still wins",
    )
    g.add_argument(
        "--framework",
        choices=["torch", "tf", "both"],
        default="both",
        help="which framework(s) to train, one after the other (default: %(default)s)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set model.encoder_widths=32,64,128,256 "
        "(repeatable; sections: model, data, noise, train, runtime, profiler)",
    )


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="SOURCE",
        help="builtin (photographs shipped with scikit-image, cut into 64x64 patches; "
        "not EuroSAT), synthetic (random images), tfds (tensorflow-datasets "
        "eurosat/rgb, see --tfds-dir), or a path to EuroSAT.zip or its folder",
    )
    g.add_argument("--tfds-dir", metavar="DIR", help="TFDS data dir (with --data tfds)")
    g.add_argument(
        "--manual-dir",
        metavar="DIR",
        help="folder holding EuroSAT.zip, to build the TFDS dataset offline",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="let tensorflow-datasets download EuroSAT (needs internet)",
    )
    g.add_argument(
        "--strict-data",
        action="store_true",
        help="refuse EuroSAT files whose content is not RGB JPEG (default: a warning naming them)",
    )
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N images")


def _training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (each sets one config field; --set sets any)")
    g.add_argument("--epochs", type=int, help="training epochs")
    g.add_argument(
        "--batch-size",
        type=int,
        help="images per device per step (the global batch is this x devices)",
    )
    g.add_argument("--lr", type=float, help="Adam learning rate")
    g.add_argument("--loss", choices=["mae", "mse", "ssim"], help="training loss")
    g.add_argument(
        "--noise",
        choices=["gaussian", "salt_and_pepper", "poisson", "speckle"],
        help="noise model (its level: --set noise.sigma=, noise.amount=, noise.peak=)",
    )
    g.add_argument(
        "--init",
        choices=["native", "shared"],
        help="native: each framework's own initialisers; shared: the same seeded weights in both",
    )
    g.add_argument("--seed", type=int, help="seed of initialisation, shuffling and noise")
    g.add_argument("--device", choices=["auto", "cpu", "gpu"], help="where to train")


def seed_list(text: str) -> tuple[int, ...]:
    """--seeds: comma-separated integers, each used once."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a seed given twice (repeats of one seed: --repeats N --seed S)"
        )
    return seeds


def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("results, repeats and resuming")
    g.add_argument(
        "--verbose",
        action="store_true",
        help="show the frameworks' C++ start-up lines (hidden by default: TensorFlow's C++ "
        "INFO and WARNING lines, and the start-up notices in launch/supervise.py STARTUP_NOISE)",
    )
    g.add_argument(
        "--results",
        type=Path,
        default=default_results(),
        help="folder that receives <run-id>/ (default: $DENOISEBENCH_RESULTS when set, else "
        "the repository's results/; here %(default)s)",
    )
    g.add_argument(
        "--run-id",
        help="name of the run folder: letters, digits, '.', '_', '-', up to 100 "
        "(default: <UTC time>-<profile>)",
    )
    g.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="train N times, at most 100 (repeat-<k>/ folders, frameworks interleaved) and "
        "report the median and spread (default: %(default)s)",
    )
    g.add_argument(
        "--seeds",
        type=seed_list,
        metavar="S,S,...",
        help="one repeat per seed, each repeat's train.seed recorded in its config.json "
        "(seed-to-seed variation for quality figures); sets --repeats, or must agree with it",
    )
    g.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config "
        "and launch choices (launch.json: --framework, --gpus, --mode...); an option that "
        "would change the run is refused; with --slurm, on the cluster",
    )
    g.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end with the run's report, <run>/report/report.html (default: on; "
        f"{REPORT_ENV}=0 in the environment makes --no-report the default)",
    )
    g.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def _check_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checks before anything is written")
    g.add_argument(
        "--no-space-check",
        action="store_true",
        help="start even where the results disk looks too full for one epoch's records and "
        "checkpoints (checked by default)",
    )
    g.add_argument(
        "--no-memory-check",
        action="store_true",
        help="start even where a training step looks too large for this machine's memory "
        "(estimated from the model, the batch and the data: docs/usage.md#memory; checked by "
        "default)",
    )


def _distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed")
    g.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="devices per node for data-parallel training (without GPUs: N CPU workers)",
    )
    g.add_argument(
        "--engine",
        choices=["native", "horovod"],
        default="native",
        help="native: torchrun/DDP and tf.distribute; horovod: a Horovod worker per device "
        "(Gloo), with --gpus N: under horovodrun on one node, across nodes (--nodes with "
        "--hosts, --slurm, sbatch) one launcher per node, no SSH; build it first with "
        "`horovod-build` (default: %(default)s)",
    )
    g.add_argument(
        "--tf-strategy",
        choices=["mirrored", "multiworker"],
        default="mirrored",
        help="one node: one MirroredStrategy process, or one MultiWorkerMirroredStrategy "
        "worker per device (several nodes always use multiworker)",
    )
    g.add_argument(
        "--scale-lr",
        action="store_true",
        help="multiply the learning rate by the number of devices",
    )
    g.add_argument("--nodes", type=int, help="nodes in the job (default: SLURM's, else 1)")
    g.add_argument(
        "--node-rank", type=int, help="this node's index (default: SLURM_NODEID, else 0)"
    )
    g.add_argument(
        "--master-addr",
        help="rendezvous host, node 0 (default: SLURM's first node, else 127.0.0.1)",
    )
    g.add_argument(
        "--master-port",
        type=int,
        help="first port: torch's rendezvous; TensorFlow's worker i of a node on it + i "
        "(default: under SLURM one derived from the job id, 20000-32767; else 29500)",
    )
    g.add_argument(
        "--hosts",
        help="TensorFlow across nodes: every node's host, comma-separated, "
        "in node-rank order (default: SLURM's node list)",
    )


def _slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (see also slurm/*.sbatch and docs/slurm.md)")
    g.add_argument(
        "--slurm",
        action="store_true",
        help="submit through submitit instead of running here; prints the job id "
        "and the log folder",
    )
    _slurm_request_options(g)
    g.add_argument(
        "--wait", action="store_true", help="wait for the job, then print the comparison table"
    )
    g.add_argument(
        "--wait-timeout",
        type=float,
        default=7200.0,
        metavar="S",
        help="stop waiting after S seconds (default: %(default)s)",
    )
    g.add_argument(
        "--sbatch-out",
        type=Path,
        metavar="FILE",
        help="write the sbatch script for these options to FILE and exit",
    )
    g.add_argument(
        "--sweep",
        metavar="FILE",
        help="run every element of a sweep profile (profiles/sweeps/<name>.toml or a path): "
        "framework x devices x batch size, each in its own folder",
    )
    g.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume the run folder if it exists, else start it (requeued jobs)",
    )


def _slurm_request_options(g: argparse._ArgumentGroup) -> None:
    """What --slurm and --sbatch-out ask SLURM for (launch.slurm_options.SlurmRequest)."""
    g.add_argument(
        "--partition", help="SLURM partition, or a comma-separated list (default: SLURM's own)"
    )
    g.add_argument(
        "--time",
        default="01:00:00",
        help="time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED "
        "with --sbatch-out (default: %(default)s)",
    )
    g.add_argument("--account", help="SLURM account to charge")
    g.add_argument("--qos", help="SLURM quality of service (QOS) to ask for")
    g.add_argument(
        "--constraint",
        metavar="FEATURES",
        help="node features the job needs, e.g. a GPU type: a100, or a100|h100",
    )
    g.add_argument("--mem", metavar="SIZE", help="memory per node, e.g. 64G (default: SLURM's)")
    g.add_argument(
        "--sbatch-option",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="any other sbatch option, without its dashes, e.g. --sbatch-option mail-type=END "
        "or --sbatch-option exclusive (repeatable; an option the launcher sets, such as "
        "nodes or time, is refused naming the option to use)",
    )
    g.add_argument(
        "--cpus-per-task",
        type=int,
        default=4,
        help="CPU cores per SLURM task (default: %(default)s)",
    )
    g.add_argument(
        "--cpu-workers",
        action="store_true",
        help="the --gpus devices are CPU workers: ask SLURM for no GPUs",
    )


def given_options(argv: list[str]) -> set[str]:
    """The options given on the command line (by dest), as opposed to argparse's defaults."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def wants_report(args: argparse.Namespace) -> bool:
    """--report / --no-report when given, else on unless DENOISEBENCH_REPORT=0."""
    if args.report is not None:
        return bool(args.report)
    return os.environ.get(REPORT_ENV, "1").strip() not in ("0", "false", "no", "off")
