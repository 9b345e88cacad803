"""Train the denoising autoencoder in PyTorch and TensorFlow and compare them.

    python -m launch                                # default profile, both frameworks
    python -m launch --framework torch --epochs 20
    python -m launch --profile paper --data /data/EuroSAT.zip
    python -m launch --set noise.kind=poisson --set noise.peak=10
    python -m launch --resume results/<run-id>      # continue an interrupted run
    python -m launch --gpus 4                       # data parallel on 4 GPUs, both frameworks
    python -m launch --gpus 4 --nodes 2 --node-rank 0 --master-addr node0 --run-id exp1
    python -m launch report [RESULTS...]            # the comparison report, results/report/
    python -m launch bench [--repeats 3]            # the suite's trainers vs hand-written loops
    python -m launch gpu-check [--budget-s 480]     # every GPU figure in one budgeted command

Configuration precedence: CLI flags and --set > profile file (profiles/<name>.toml) > defaults.

Batch rule (both frameworks): --batch-size is per device; the global batch is batch size x
devices (printed at start). --scale-lr multiplies the learning rate by the number of devices.
With --gpus N, PyTorch runs N DDP ranks under torchrun (NCCL; gloo on CPUs) and TensorFlow
runs MirroredStrategy over N devices (or, with --tf-strategy multiworker or several nodes,
MultiWorkerMirroredStrategy). On a machine without GPUs, --gpus N runs N CPU workers instead:
the same distributed code, on gloo and logical CPU devices. Inside a SLURM allocation the
nodes, node rank and master address are taken from SLURM's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from denoisebench.cluster.horovod_build import engine_unavailable
from denoisebench.core.config import (
    Config,
    ConfigError,
    load_config,
    load_resolved,
    parse_overrides,
)
from denoisebench.core.distributed import slurm_nodes
from denoisebench.core.records import (
    FRAMEWORKS,
    LAUNCH_CHOICES,
    LAUNCH_FILE,
    RunLock,
    atomic_write_text,
    check_free_space,
    check_run_id,
    clear_failures,
    default_results,
    launch_conflicts,
    launch_option,
    mark_failed,
    mark_interrupted,
    new_run_id,
    read_failures,
    read_launch_choices,
    read_summary,
    resume_command,
    space_needed,
    take_run_lock,
    write_killed,
    write_launch_choices,
)
from denoisebench.core.sweep import load_sweep
from denoisebench.measure.environment import gpu_info, local_device_kind, oldest_capability
from denoisebench.report.compare import comparison_table, repeats_table, sweep_table
from launch.commands import (
    Command,
    Topology,
    build_horovodrun_cmd,
    build_tf_cmds,
    build_torchrun_cmd,
    build_train_cmd,
)
from launch.slurm import check_slurm_options, submit_sweep, submit_to_slurm, write_sbatch
from launch.supervise import StopSignals, run_group

REPO_ROOT = Path(__file__).resolve().parents[1]


def prog() -> str:
    """How the user called us, for usage lines: the console command or `python -m launch`."""
    return "denoisebench" if Path(sys.argv[0]).name == "denoisebench" else "python -m launch"


def build_parser() -> argparse.ArgumentParser:
    """The command line, one argument group per concern (each built by its own function)."""
    p = argparse.ArgumentParser(
        prog=prog(),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add_options in (
        _run_options,
        _data_options,
        _training_options,
        _output_options,
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
        "(repeatable; sections: model, data, noise, train)",
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
    g.add_argument("--batch-size", type=int, help="images per optimizer step")
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
        "--no-space-check",
        action="store_true",
        help="start even where the results disk looks too full for one epoch's records and "
        "checkpoints (checked by default)",
    )
    g.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="train N times (repeat-<k>/ folders, frameworks interleaved) and report "
        "the median and spread (default: %(default)s)",
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
        help="native: torchrun/DDP and tf.distribute; horovod: N Horovod workers on this "
        "machine under horovodrun (Gloo), with --gpus N; build it first with "
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
        default=29500,
        help="rendezvous port (torch c10d; TensorFlow workers) (default: %(default)s)",
    )
    g.add_argument(
        "--hosts",
        help="TensorFlow across nodes: every node's host, comma-separated, "
        "in node-rank order (default: SLURM's node list)",
    )


def _slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (see also slurm/*.sbatch)")
    g.add_argument(
        "--slurm",
        action="store_true",
        help="submit through submitit instead of running here; prints the job id "
        "and the log folder",
    )
    g.add_argument("--partition", default="gpu", help="SLURM partition (default: %(default)s)")
    g.add_argument(
        "--time",
        default="01:00:00",
        help="time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED "
        "with --sbatch-out (default: %(default)s)",
    )
    g.add_argument("--account", help="SLURM account to charge")
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


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The dedicated flags, as section.key=value overrides (applied before --set)."""
    out = []
    if args.tfds_dir is not None and args.data != "tfds":
        raise ConfigError("--tfds-dir goes with --data tfds (it sets data.path)")
    if args.data is not None:
        if args.data in ("builtin", "synthetic", "tfds"):
            out.append(f"data.source={args.data}")
        else:
            out += ["data.source=eurosat", f"data.path={args.data}"]
    flags = {
        "tfds_dir": "data.path",
        "manual_dir": "data.manual_dir",
        "limit": "data.limit",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "loss": "train.loss",
        "noise": "noise.kind",
        "init": "train.init",
        "seed": "train.seed",
        "device": "train.device",
    }
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={value}")
    if args.download:
        out.append("data.download=true")
    if args.strict_data:
        out.append("data.strict=true")
    if args.scale_lr:
        out.append("train.scale_lr=true")
    return out


# Options that change the config: refused with --resume (the run keeps its saved config).
CONFIG_OPTIONS = (
    "data",
    "strict_data",
    "tfds_dir",
    "manual_dir",
    "download",
    "limit",
    "epochs",
    "batch_size",
    "lr",
    "loss",
    "noise",
    "init",
    "seed",
    "device",
    "set",
    "scale_lr",
)


def given_options(argv: list[str]) -> set[str]:
    """The options given on the command line (by dest), as opposed to argparse's defaults."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resolve(args: argparse.Namespace, given: set[str] | None = None) -> tuple[Config, Path]:
    """The config and run folder: a new one, or the one being resumed (`given`: the options
    on the command line, given_options; None: those that differ from the defaults)."""
    if given is None:
        defaults = vars(build_parser().parse_args([]))
        given = {k for k, v in vars(args).items() if v != defaults.get(k)}
    if args.auto_resume and args.resume is None:
        run_id = args.run_id or slurm_run_id()
        candidate = args.results / run_id if run_id else None
        if candidate is not None and (candidate / "config.json").is_file():
            print(
                f"--auto-resume: {candidate} exists, resuming it with its saved config", flush=True
            )
            args.resume = candidate
            return resume_run(args, candidate, given, requeued=True), candidate
    if args.resume is not None:
        if not (args.resume / "config.json").is_file():
            raise ConfigError(f"--resume {args.resume}: no config.json there (not a run folder)")
        return resume_run(args, args.resume, given), args.resume
    overrides = parse_overrides([*flag_overrides(args), *args.set])
    cfg = load_config(args.profile, overrides, args.mode or "", **mode_target(args))
    run_id = args.run_id or slurm_run_id() or new_run_id(cfg.profile)
    return cfg, args.results / run_id


def resume_run(
    args: argparse.Namespace, run_dir: Path, given: set[str], requeued: bool = False
) -> Config:
    """The saved config of the run being resumed; its saved launch choices (launch.json)
    replace those in `args`. Options in `given` that would change the run are refused by name:
    the config's, and launch choices that differ from the saved ones. A requeued job
    (--auto-resume) repeats the command that started the run: only its launch choices are
    checked."""
    cfg = load_resolved(run_dir / "config.json")
    try:
        saved = read_launch_choices(run_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{run_dir / LAUNCH_FILE}: cannot read the run's launch choices ({e})"
        ) from None
    if saved is not None and not isinstance(saved, dict):
        raise ConfigError(f"{run_dir / LAUNCH_FILE}: not the run's launch choices (no object)")
    if saved is None:
        print(
            f"note: {run_dir} has no {LAUNCH_FILE} (made before launch choices were saved): "
            "resuming with this command's --framework, --gpus and other launch options",
            flush=True,
        )
    choices = {k: getattr(args, k) for k in LAUNCH_CHOICES if k in given}
    if saved is None and "profile" in choices:  # the config knows its profile by name
        choices["profile"] = Path(choices["profile"]).stem
    known = saved if saved is not None else {"profile": cfg.profile, "mode": cfg.mode or None}
    refused = [] if requeued else [launch_option(k) for k in CONFIG_OPTIONS if k in given]
    refused += launch_conflicts(known, choices)
    if refused:
        raise ConfigError(
            f"--resume continues {run_dir} as it was started; drop {', '.join(refused)}"
        )
    for key, value in (saved or {}).items():
        if key in LAUNCH_CHOICES:
            setattr(args, key, value)
    return cfg


def mode_target(args: argparse.Namespace, devices: int | None = None) -> dict[str, Any]:
    """What picks the table of --mode (config.mode_runtime): the device kind (GPU for a SLURM
    job that asks for GPUs: the login node submitting it may have none, else what this machine
    trains on), this machine's GPUs' compute capability when they are the ones used, and the
    number of devices of the run."""
    if not args.mode:
        return {"device_kind": "cpu"}
    slurm_gpus = args.slurm and not args.cpu_workers and args.device != "cpu"
    info = None if slurm_gpus else gpu_info()  # one NVML read for the kind and the capability
    kind = "gpu" if slurm_gpus else local_device_kind(args.device or "auto", info)
    local_gpus = info is not None and kind == "gpu" and not args.slurm
    capability = oldest_capability(info) if local_gpus else None
    if devices is None:
        devices = (args.gpus or 1) * (args.nodes or 1)
    return {"device_kind": kind, "capability": capability, "devices": devices}


def slurm_run_id() -> str | None:
    """Inside a SLURM job the run folder is named after it, so every node and every requeue of
    the job finds the same folder."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


def resolve_topology(args: argparse.Namespace) -> Topology | None:
    """The distributed layout, or None for a plain single-device run. Prints the CPU notice."""
    slurm = slurm_nodes()
    nodes = args.nodes or (slurm.nodes if slurm else 1)
    if args.gpus is None and nodes == 1:
        return None
    devices = args.gpus or 1  # --gpus and --nodes below 1 were refused by launch()
    node_rank = args.node_rank if args.node_rank is not None else (slurm.node_rank if slurm else 0)
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"--node-rank {node_rank} outside 0..{nodes - 1}")
    if nodes > 1 and not args.run_id and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError("a multi-node run needs --run-id, so every node uses the same folder")
    info = gpu_info()
    found = len(info["gpus"] or [])
    if found and found < devices:
        raise ConfigError(f"--gpus {devices}, but this node has {found} GPU(s)")
    cores = len(os.sched_getaffinity(0))
    if not found and devices > cores:
        raise ConfigError(
            f"--gpus {devices} with no GPU here means {devices} CPU workers on this node's "
            f"{cores} cores: at most {cores} (one worker per core; each holds its own copy of "
            "the framework and the data)"
        )
    if not found:
        tf_kind = (
            "workers" if args.tf_strategy == "multiworker" or nodes > 1 else "logical CPU devices"
        )
        how = f"torch: {devices} gloo processes, tf: {devices} {tf_kind}"
        if args.engine == "horovod":
            how = f"{devices} Horovod processes over Gloo"
        print(
            f"notice: no GPU here ({info.get('reason', 'NVML found none')}); running {devices} "
            f"CPU workers instead ({how})",
            flush=True,
        )
    master = args.master_addr or (slurm.master_addr if slurm else "127.0.0.1")
    hosts = tuple(args.hosts.split(",")) if args.hosts else (slurm.hosts if slurm else ())
    return Topology(
        devices=devices,
        gpus=bool(found),
        nodes=nodes,
        node_rank=node_rank,
        master_addr=master,
        master_port=args.master_port,
        hosts=hosts,
        cpu_threads=0 if found else max(1, (os.cpu_count() or 1) // devices),
    )


def free_ports(n: int) -> list[int]:
    """n free TCP ports on 127.0.0.1 (for TensorFlow workers on one machine)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def framework_cmds(
    framework: str, run_dir: Path, topo: Topology | None, args: argparse.Namespace, resume: bool
) -> list[Command]:
    quiet = {"verbose": args.verbose}
    if topo is None:
        return [build_train_cmd(framework, run_dir, resume=resume, **quiet)]
    if args.engine == "horovod":
        return [build_horovodrun_cmd(framework, run_dir, topo, resume=resume, **quiet)]
    if framework == "torch":
        return [build_torchrun_cmd(run_dir, topo, run_id=run_dir.name, resume=resume)]
    multi = args.tf_strategy == "multiworker"
    ports = free_ports(topo.devices) if multi and topo.nodes == 1 else None
    return build_tf_cmds(run_dir, topo, multi_worker=multi, ports=ports, resume=resume, **quiet)


def wait_for_config(run_dir: Path, timeout_s: float = 300.0) -> None:
    """Nodes other than 0 use the config that node 0 writes (on the shared file system)."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "config.json").exists():
        if time.monotonic() > deadline:
            raise ConfigError(
                f"{run_dir}/config.json did not appear within {timeout_s:.0f}s: "
                "is node 0 running, and is the results folder shared?"
            )
        time.sleep(0.5)


def measurement_dirs(run_dir: Path, repeats: int) -> list[Path]:
    """Where each repeat's results go: the run folder itself, or repeat-<k>/ folders in it."""
    existing = sorted(run_dir.glob("repeat-*"), key=lambda p: int(p.name.split("-")[1]))
    if existing:
        return existing
    return [run_dir] if repeats == 1 else [run_dir / f"repeat-{k}" for k in range(repeats)]


SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, what it does). Imported only when asked for: the report's matplotlib and
    # scikit-image, or the benchmarks, would slow every training launch.
    "report": ("denoisebench.report.build", "the comparison report of results folders"),
    "bench": ("denoisebench.bench.cli", "the suite's trainers against hand-written loops"),
    "gpu-check": ("denoisebench.bench.gpu_check", "every GPU-only figure in one command"),
    "claims": ("launch.claims", "the paper's claims tested: both inits x seeds, then the report"),
    "horovod-build": ("denoisebench.cluster.horovod_build", "build and install Horovod (cached)"),
}


def main(argv: list[str] | None = None) -> int:
    """`python -m launch [SUBCOMMAND] ...`: a subcommand's own command line, else a launch."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return module.main(argv[1:], prog=f"{prog()} {argv[0]}")
    args = build_parser().parse_args(argv)
    return launch(args, given_options(argv))


REPORT_ENV = "DENOISEBENCH_REPORT"
"""'0' makes --no-report the default (a cluster's job environment, the test suite)."""


def wants_report(args: argparse.Namespace) -> bool:
    """--report / --no-report when given, else on unless DENOISEBENCH_REPORT=0."""
    if args.report is not None:
        return bool(args.report)
    return os.environ.get(REPORT_ENV, "1").strip() not in ("0", "false", "no", "off")


def launch(args: argparse.Namespace, given: set[str] | None) -> int:
    """One launch from parsed options: check and write the run folder, then train (here, or
    submitted to SLURM), print the table, and end with the run's report (--no-report: none).
    `given`: the options on the command line (given_options; None: those that differ from the
    defaults)."""
    try:
        if args.engine == "horovod" and (args.slurm or args.sbatch_out or args.sweep):
            raise ConfigError(HOROVOD_HERE_ONLY + "; --slurm, --sbatch-out and --sweep")
        if args.repeats < 1:
            raise ConfigError(f"--repeats {args.repeats} must be >= 1")
        for option, value in (("--gpus", args.gpus), ("--nodes", args.nodes)):
            if value is not None and value < 1:
                raise ConfigError(f"{option} {value} must be >= 1 (leave it out for one)")
        if args.results.exists() and not args.results.is_dir():
            raise ConfigError(f"--results {args.results}: not a folder")
        if args.run_id is not None:
            check_run_id(args.run_id)
        check_slurm_options(args)  # before anything is written: the values reach a script
        if args.sbatch_out:
            return write_sbatch(args)
        if args.sweep:
            return run_sweep(args)
        cfg, run_dir = resolve(args, given)
        if args.print_config:
            print(cfg.to_json())
            return 0
        topo = None if args.slurm else resolve_topology(args)
        check_horovod(args, topo)
        if not args.slurm:  # a cluster's data and GPUs are on its nodes, not the login node
            check_local_inputs(cfg)
        lock = prepare_run_folder(args, cfg, run_dir, topo)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    print(f"run folder: {run_dir}", flush=True)
    if args.slurm:
        if lock is not None:
            lock.release()  # the job's task 0 takes it (denoisebench.cluster.slurm_job)
        code = submit_to_slurm(args, frameworks, run_dir)
        if not args.wait:
            if code == 0 and wants_report(args):
                print(f"report: once the jobs end, {prog()} report {run_dir}", flush=True)
            return code
    else:
        with lock or contextlib.nullcontext():  # held while the trainers run
            code = train_frameworks(args, frameworks, run_dir, topo)
        if topo is not None and topo.node_rank != 0:
            return code  # node 0 reports
    if not wants_report(args):
        return code
    return max(code, write_run_report(run_dir, args.results))


def write_run_report(run_dir: Path, results: Path) -> int:
    """The report of one run, in <run>/report/ (also after a failed framework: what ran is
    shown, the failure with it); 0, or 1 with one line saying why it was not written."""
    from denoisebench.report.build import ReportError, write_report

    try:
        report = write_report([run_dir], run_dir / "report", results)
    except (ReportError, OSError) as e:  # no summary to report on, or no room to write it
        print(f"report: not written ({e})", file=sys.stderr)
        return 1
    print(f"report: {report}", flush=True)
    return 0


def check_local_inputs(cfg: Config) -> None:
    """What the trainers would refuse only after the run folder exists, checked before it is
    made: the EuroSAT path (a regular file or folder that exists) and a GPU for --device gpu."""
    if cfg.data.source == "eurosat":
        from denoisebench.data.images import DataError, check_data_path  # Pillow: only here

        try:
            check_data_path(Path(cfg.data.path).expanduser())
        except DataError as e:
            raise ConfigError(
                f"{e}\n  EuroSAT RGB is EuroSAT.zip as published (2750/<Class>/*.jpg) or its "
                "folder (docs/usage.md#data); --data tfds reads it through tensorflow-datasets"
            ) from None
    if cfg.train.device == "gpu":
        info = gpu_info()
        if not info["gpus"]:
            raise ConfigError(
                f"--device gpu: no GPU here ({info.get('reason', 'NVML found none')}); "
                "use --device auto (a GPU when there is one) or --device cpu"
            )


HOROVOD_HERE_ONLY = (
    "--engine horovod runs its workers on this machine (horovodrun -H localhost:N): one node, "
    "with --gpus N; across nodes or under SLURM use --engine native"
)


def check_horovod(args: argparse.Namespace, topo: Topology | None) -> None:
    """--engine horovod: workers on this one node, and Horovod built here for the frameworks."""
    if args.engine != "horovod":
        return
    if topo is None or topo.nodes > 1:
        raise ConfigError(HOROVOD_HERE_ONLY)
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    reason = engine_unavailable(frameworks, prog())
    if reason is not None:
        raise ConfigError(reason)


def repeat_seeds(args: argparse.Namespace, run_dir: Path) -> list[int] | None:
    """Each repeat's train.seed from --seeds (None: every repeat keeps the config's), setting
    --repeats to their number. Refused with --seed or --set train.seed, with a --repeats that
    differs, and, resuming, when they are not the seeds the run was started with."""
    seeds = getattr(args, "seeds", None)
    if not seeds:
        return None
    given = ",".join(map(str, seeds))
    if args.resume is not None:
        started = [
            json.loads((folder / "config.json").read_text())["train"]["seed"]
            for folder in measurement_dirs(run_dir, args.repeats)
        ]
        if list(seeds) != started:
            run_seeds = ",".join(map(str, started))
            raise ConfigError(
                f"--seeds {given}: {run_dir} was started with seeds {run_seeds}; drop --seeds"
            )
        return None
    if args.seed is not None or any(s.split("=")[0].strip() == "train.seed" for s in args.set):
        raise ConfigError(f"--seeds {given} sets train.seed per repeat: drop --seed / train.seed")
    if args.repeats not in (1, len(seeds)):
        raise ConfigError(
            f"--seeds {given} gives {len(seeds)} repeats but --repeats is {args.repeats}: "
            "drop --repeats or make them agree"
        )
    args.repeats = len(seeds)
    return list(seeds)


def prepare_run_folder(
    args: argparse.Namespace, cfg: Config, run_dir: Path, topo: Topology | None
) -> RunLock | None:
    """Node 0 checks the disk has room, takes the run folder (records.take_run_lock: one
    process trains a run at a time; a new run creates the folder first, refused when it
    exists) and writes a new run's folders (launch.json first, then each measurement folder's
    config.json); the other nodes wait for them. Returns node 0's lock, held until released."""
    is_node0 = topo is None or topo.node_rank == 0
    seeds = repeat_seeds(args, run_dir)
    if is_node0 and not args.no_space_check:
        devices = topo.devices * topo.nodes if topo else 1
        needed = space_needed(cfg, 2 if args.framework == "both" else 1, devices)
        check_free_space(args.results if args.resume is None else run_dir, needed * args.repeats)
    if not is_node0:
        wait_for_config(measurement_dirs(run_dir, args.repeats)[-1])
        return None
    if args.resume is None:
        try:  # atomic: of two new runs with one --run-id, the second is refused here
            run_dir.mkdir(parents=True)
        except FileExistsError:
            raise ConfigError(f"{run_dir} exists; pick another --run-id or --resume it") from None
        except OSError as e:  # a read-only file system, no permission, a file on the path
            raise ConfigError(
                f"--results {args.results}: cannot create {run_dir}: {e.strerror}"
            ) from None
    job = os.environ.get("SLURM_JOB_ID")
    lock = take_run_lock(run_dir, owner=f"SLURM job {job}" if job else None)
    if args.resume is not None:
        return lock
    try:
        write_launch_choices(run_dir, vars(args))  # first: config.json marks a run folder
        folders = measurement_dirs(run_dir, args.repeats)
        configs = dict.fromkeys([run_dir, *folders], cfg.to_dict())
        for folder, seed in zip(folders, seeds or [], strict=False):  # --seeds: one per repeat
            configs[folder] = {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "seed": seed}}
        for folder, config in configs.items():
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(config, indent=2, sort_keys=True)  # as Config.to_json writes it
            atomic_write_text(folder / "config.json", text + "\n")
    except BaseException:
        lock.release()
        raise
    return lock


def train_frameworks(
    args: argparse.Namespace, frameworks: list[str], run_dir: Path, topo: Topology | None
) -> int:
    """Train each framework in each repeat's folder, then print the table. Returns 0, 1 when
    one failed, or 128 + the signal's number when a stop signal ended it (SIGINT, SIGTERM and
    SIGHUP stop the children and mark the framework interrupted; frameworks not started yet
    stay as they are)."""
    failed = []
    interrupted = None
    folders = measurement_dirs(run_dir, args.repeats)
    with StopSignals() as stop:
        # repeats interleave the frameworks, so a slow drift of the machine hits both alike
        for k, folder in enumerate(folders):
            if len(folders) > 1:
                print(f"--- repeat {k + 1}/{len(folders)}: {folder}", flush=True)
            for framework in frameworks:
                if stop.signum is not None:
                    break
                code = run_framework(framework, folder, topo, args, stop)
                if code is None:
                    continue
                if code > 128:
                    interrupted = code
                    break
                failed.append(framework)
                if code == 2:
                    break  # bad input (config or data): the next framework would fail the same
            if failed or interrupted or stop.signum is not None:
                break
        if topo is None or topo.node_rank == 0:
            print()
            print(comparison_table(folders[0]) if len(folders) == 1 else repeats_table(folders))
            print(f"\nresults: {run_dir}")
        if interrupted is None and stop.signum is not None:  # between two frameworks
            interrupted = 128 + stop.signum
    if interrupted is not None:
        name = signal.Signals(interrupted - 128).name
        print(f"interrupted by {name}; continue with: {resume_command(run_dir)}", flush=True)
        return interrupted
    return 1 if failed else 0


def run_sweep(args: argparse.Namespace) -> int:
    """Every element of a sweep profile: here, one after the other, or as SLURM job arrays."""
    sweep = load_sweep(args.sweep)
    sweep_dir = args.results / (args.run_id or new_run_id(f"sweep-{Path(args.sweep).stem}"))
    if sweep_dir.exists():
        raise ConfigError(f"{sweep_dir} exists; pick another --run-id")
    elements = sweep.elements()
    configs = {}
    for el in elements:  # resolve every element first: a bad value stops the sweep before it runs
        overrides = parse_overrides([*sweep.overrides, f"train.batch_size={el.batch_size}"])
        configs[el.name] = load_config(
            sweep.profile, overrides, args.mode or "", **mode_target(args, el.devices)
        )
    try:  # atomic: of two sweeps started at once with one --run-id, the second stops here
        sweep_dir.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"{sweep_dir} exists; pick another --run-id") from None
    atomic_write_text(
        sweep_dir / "sweep.json",
        json.dumps({"sweep": str(args.sweep), "elements": [el.name for el in elements]}, indent=2)
        + "\n",
    )
    print(f"sweep folder: {sweep_dir} ({len(elements)} elements)", flush=True)
    if args.slurm:
        return submit_sweep(args, sweep_dir, elements, configs)
    failed = []
    with StopSignals() as stop:  # a signal between two elements stops the sweep there
        for el in elements:
            if stop.signum is not None:
                print()
                print(sweep_table(sweep_dir, elements))
                return 128 + stop.signum
            print(f"=== {el.name}", flush=True)
            code = launch(element_args(args, sweep, el, sweep_dir), given=None)
            if code > 128:  # interrupted: the rest of the sweep is not started
                print()
                print(sweep_table(sweep_dir, elements))
                return code
            if code != 0:
                failed.append(el.name)
    print()
    print(sweep_table(sweep_dir, elements))
    return 1 if failed else 0


def element_args(
    args: argparse.Namespace, sweep: Any, el: Any, sweep_dir: Path
) -> argparse.Namespace:
    """The launch options of one sweep element: the parser's defaults, the sweep's profile and
    overrides, the element's framework, batch size and devices, the sweep's --mode."""
    el_args = build_parser().parse_args([])
    el_args.profile, el_args.set = sweep.profile, list(sweep.overrides)
    el_args.framework, el_args.batch_size = el.framework, el.batch_size
    el_args.results, el_args.run_id = sweep_dir, el.name
    el_args.gpus = el.devices if el.devices > 1 else None
    el_args.mode, el_args.verbose = args.mode, args.verbose
    return el_args


def run_framework(
    framework: str,
    folder: Path,
    topo: Topology | None,
    args: argparse.Namespace,
    stop: StopSignals | None = None,
) -> int | None:
    """Train one framework into one results folder; None on success, else the exit code:
    128 + the signal's number when a stop signal ended it (it is then marked interrupted), 1
    when it diverged (the trainer recorded it)."""
    before = read_summary(folder, framework)
    if args.resume and before and before.get("status") == "completed":
        print(f"[{framework}] already completed, skipping", flush=True)
        return None
    cmds = framework_cmds(framework, folder, topo, args, resume=args.resume is not None)
    if topo is None or topo.node_rank == 0:
        clear_failures(folder / framework)  # an earlier attempt's: not this one's cause
    for argv_, _env in cmds:
        print(f"[{framework}] {' '.join(argv_)}", flush=True)
    names = [f"{framework} worker {i}" for i in range(len(cmds))] if len(cmds) > 1 else [framework]
    result = run_group(cmds, names, stop=stop, verbose=args.verbose)
    if result.returncode == 0:
        return None
    stopped_by = result.signal
    after = read_summary(folder, framework)
    if after and after != before and after.get("status") == "diverged":
        return 1  # a loss that was not finite: the trainer recorded where and said so
    if result.killed_by and result.failed_process:
        # it could not record its own failure; torchrun's ranks: denoisebench.cluster.torchrun
        write_killed(folder / framework, result.failed_process, result.killed_by)
    failures = read_failures(folder / framework)  # each failed process' own exception
    interrupted_now = after != before and bool(after) and after.get("status") == "interrupted"
    if stopped_by is None and interrupted_now and not failures:
        stopped_by = after.get("signal")  # a signal to the trainer, not through the launcher
    if stopped_by is not None:
        if after and after.get("status") == "completed":
            return None  # it finished as the signal came: the launch stops before the next
        if topo is None or topo.node_rank == 0:
            try:
                mark_interrupted(folder, framework, stopped_by, resume_command(folder))
            except OSError as e:  # a full disk: the trainer's own record stands
                print(f"[{framework}] could not record the stop in {folder}: {e}", file=sys.stderr)
        print(f"[{framework}] interrupted by {stopped_by}", file=sys.stderr, flush=True)
        return 128 + signal.Signals[stopped_by].value
    print(f"[{framework}] failed: {result.failed}", file=sys.stderr, flush=True)
    # a failed rank's peers are stopped by torchrun's SIGTERM, and rank 0 then records
    # 'interrupted': the failures say what really happened
    try:
        mark_failed(folder, framework, result.failed or "failed", failures, interrupted_now)
    except OSError as e:  # a full disk: the trainer's own record (and message) stands
        print(f"[{framework}] could not record the failure in {folder}: {e}", file=sys.stderr)
    # > 128 is kept for interrupted (above); < 0 (killed by a signal) is not an exit code
    return 1 if result.returncode > 128 or result.returncode < 0 else result.returncode


if __name__ == "__main__":
    sys.exit(main())
