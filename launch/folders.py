"""A run's folder: the config and folder a launch resolves to (new, resumed, or requeued),
the checks and writes that make the folder before anything trains (the disk's room, a training
step's memory), and the repeat folders in it."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from denoisebench.core.bounds import available_bytes
from denoisebench.core.config import (
    Config,
    ConfigError,
    RuntimeConfig,
    load_config,
    load_resolved,
    parse_overrides,
)
from denoisebench.core.diskspace import check_free_space, space_needed
from denoisebench.core.fingerprint import check_unchanged, write_fingerprint
from denoisebench.core.memory import Layout, gib, step_problem
from denoisebench.core.placement import ranks_per_gpu
from denoisebench.core.records import (
    FRAMEWORKS,
    LAUNCH_CHOICES,
    LAUNCH_DEFAULTS,
    LAUNCH_FILE,
    atomic_write_text,
    launch_conflicts,
    launch_option,
    new_run_id,
    read_launch_choices,
    write_launch_choices,
)
from denoisebench.core.runlock import REQUEUE_WAIT_S, RunLock, requeued, take_run_locks
from denoisebench.measure.environment import gpu_info, local_device_kind, oldest_capability
from launch.commands import Topology
from launch.options import build_parser


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
    # --slurm trains on the cluster's nodes: their machine bounds are checked there, not here
    cfg = load_resolved(run_dir / "config.json", here=not args.slurm)
    try:
        saved = read_launch_choices(run_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{run_dir / LAUNCH_FILE}: cannot read the run's launch choices ({e})"
        ) from None
    if saved is not None and not isinstance(saved, dict):
        raise ConfigError(f"{run_dir / LAUNCH_FILE}: not the run's launch choices (no object)")
    # readable, and as the run started (a damaged file is named as damaged, above)
    for folder in {run_dir, *measurement_dirs(run_dir, args.repeats)}:
        check_unchanged(folder)
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
        elif key in LAUNCH_DEFAULTS and getattr(args, key, None) is None:
            setattr(args, key, value)  # --no-report stays off on --resume unless --report
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


def measurement_dirs(run_dir: Path, repeats: int) -> list[Path]:
    """Where each repeat's results go: the run folder itself, or repeat-<k>/ folders in it."""
    existing = sorted(run_dir.glob("repeat-*"), key=lambda p: int(p.name.split("-")[1]))
    if existing:
        return existing
    return [run_dir] if repeats == 1 else [run_dir / f"repeat-{k}" for k in range(repeats)]


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


def check_step_memory(args: argparse.Namespace, cfg: Config, topo: Topology | None) -> None:
    """Each framework's training step (core/memory.py: the batch, the data, the framework)
    against what this machine has, before anything is allocated or written: on a CPU the
    memory available (MemAvailable) shared by the processes that train at once, on a GPU the
    smallest total memory of the GPUs used (NVML), shared by the ranks of runtime.share_gpus.
    Not under --slurm (the nodes' memory is not known here), nor with --no-memory-check."""
    if args.slurm or getattr(args, "no_memory_check", False):
        return
    devices, nodes = (topo.devices, topo.nodes) if topo else (1, 1)
    gpus = (gpu_info()["gpus"] or []) if cfg.train.device != "cpu" else []
    for framework in FRAMEWORKS if args.framework == "both" else (args.framework,):
        # TensorFlow's MirroredStrategy: one process drives the node's devices
        mirrored = framework == "tf" and nodes == 1 and args.engine != "horovod"
        mirrored = mirrored and args.tf_strategy != "multiworker"
        processes, replicas = (1, devices) if mirrored else (devices, 1)
        layout = Layout(processes, replicas, devices * nodes, gpu=bool(gpus))
        if gpus:
            available, where = gpu_memory(gpus[:devices], devices, cfg.runtime)
        else:
            available, where = host_memory(processes)
        problem = available and step_problem(cfg, framework, layout, available, where)
        if problem:
            raise ConfigError(f"{problem}; --no-memory-check starts anyway")


def host_memory(processes: int) -> tuple[int | None, str]:
    """The memory available to each of `processes` (MemAvailable; None: unknown), and what it
    is, for the message."""
    total = available_bytes()
    if total is None:
        return None, ""
    where = f"this machine has {gib(total)} available"
    if processes > 1:
        where += f", {gib(total / processes)} for each of {processes} processes"
    return total // processes, where


def gpu_memory(
    gpus: list[dict[str, Any]], devices: int, runtime: RuntimeConfig
) -> tuple[int | None, str]:
    """The memory of the smallest GPU used (None: NVML does not say, a MIG device), shared by
    the ranks that runtime.share_gpus puts on it, and what it is, for the message."""
    totals = [g.get("memory_total_gib") for g in gpus]
    if not totals or None in totals:
        return None, ""
    total = min(totals) * 2**30
    # the layout check_gpu_count let through: --gpus N a multiple of the GPUs shown
    ranks = ranks_per_gpu(devices, len(gpus), "the GPUs shown") if runtime.share_gpus else 1
    where = f"the GPU has {gib(total)}"
    if ranks > 1:
        where += f", {gib(total / ranks)} for each of the {ranks} ranks on it"
    return int(total // ranks), where


def prepare_run_folder(
    args: argparse.Namespace, cfg: Config, run_dir: Path, topo: Topology | None
) -> RunLock | None:
    """Every node checks that a training step fits its memory (check_step_memory); node 0
    checks the disk has room, takes the lock of each framework it trains
    (runlock.take_run_locks: one process trains a framework of a run at a time; a new run
    creates the folder first, refused when it exists; a requeued SLURM job waits for the lock
    up to runlock.REQUEUE_WAIT_S) and writes a new run's folders (launch.json first, then each
    measurement folder's config.json); the other nodes wait for them. Returns node 0's locks,
    held until released."""
    is_node0 = topo is None or topo.node_rank == 0
    seeds = repeat_seeds(args, run_dir)
    check_step_memory(args, cfg, topo)
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
    frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    wait_s = REQUEUE_WAIT_S if requeued(os.environ) else 0.0
    lock = take_run_locks(run_dir, frameworks, f"SLURM job {job}" if job else None, wait_s)
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
        for folder in configs:  # what the run started with: every resume checks it
            write_fingerprint(folder)
    except BaseException:
        lock.release()
        raise
    return lock


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
