"""The launcher's checks before a run folder is made: what a trainer would otherwise refuse
only after it (the config's machine bounds, the EuroSAT path, a GPU for --device gpu,
pytorch-msssim for PyTorch's SSIM loss, --gpus N against the GPUs here), the frameworks this
machine can train, and where Horovod can run."""

from __future__ import annotations

import argparse
import importlib.util
import stat
from pathlib import Path
from typing import Any

from denoisebench.cluster.horovod_build import engine_unavailable
from denoisebench.core.config import Config, ConfigError, check_machine_bounds
from denoisebench.core.placement import ranks_per_gpu
from denoisebench.core.records import FRAMEWORKS
from denoisebench.measure.environment import gpu_info
from launch.commands import Topology
from launch.options import prog


def check_local_inputs(cfg: Config, frameworks: list[str]) -> None:
    """What the trainers would refuse only after the run folder exists, checked before it is
    made: the bounds of this machine (threads, memory: core/bounds.py), the EuroSAT path (a
    regular file or folder that exists), a GPU for --device gpu, and pytorch-msssim for
    PyTorch's SSIM loss; runtime.share_gpus only for PyTorch alone."""
    check_machine_bounds(cfg)
    if cfg.runtime.share_gpus and "tf" in frameworks:
        raise ConfigError(
            "runtime.share_gpus puts several PyTorch DDP ranks on one GPU; TensorFlow drives "
            "its GPUs from one process and has no such mode here: add --framework torch"
        )
    torch_ssim = cfg.train.loss == "ssim" and "torch" in frameworks
    if torch_ssim and importlib.util.find_spec("pytorch_msssim") is None:
        raise ConfigError(
            "--loss ssim: PyTorch's SSIM loss needs the package pytorch-msssim "
            "(pip install pytorch-msssim)"
        )
    if cfg.data.source == "eurosat":
        from denoisebench.data.images import DataError, check_data_path  # Pillow: only here

        try:
            check_data_path(Path(cfg.data.path).expanduser())
        except DataError as e:
            raise ConfigError(
                f"{e}\n  EuroSAT RGB is EuroSAT.zip as published (2750/<Class>/*.jpg) or its "
                f"folder: `{prog()} data eurosat DIR` downloads it, checked (docs/usage.md#data); "
                "--data tfds reads it through tensorflow-datasets"
            ) from None
    if cfg.train.device == "gpu":
        info = gpu_info()
        if not info["gpus"]:
            raise ConfigError(
                f"--device gpu: no GPU here ({info.get('reason', 'NVML found none')}); "
                "use --device auto (a GPU when there is one) or --device cpu"
            )


def check_gpu_count(devices: int, info: dict[str, Any], share_gpus: bool) -> None:
    """--gpus N against the GPUs this node shows (gpu_info: NVML, after CUDA_VISIBLE_DEVICES):
    at least N, a GPU per DDP rank; with runtime.share_gpus fewer, N a multiple of them
    (placement.ranks_per_gpu: 2 ranks on 1 GPU, 4 on 2). Without GPUs the N devices are CPU
    workers, each its own: nothing to check, and share_gpus changes nothing for them."""
    found = len(info["gpus"] or [])
    if not found:
        return
    mask = info.get("cuda_visible_devices")
    where = (
        f"CUDA_VISIBLE_DEVICES={mask!r} shows {found} of this node's {info['node_gpus']} GPU(s)"
        if mask is not None
        else f"this node has {found} GPU(s)"
    )
    if share_gpus:
        ranks_per_gpu(devices, found, f"--gpus {devices}; {where}")
    elif found < devices:
        raise ConfigError(f"--gpus {devices}, but {where}")


FRAMEWORK_PACKAGES = {"torch": ("torch", "PyTorch"), "tf": ("tensorflow", "TensorFlow")}
"""Each framework's package (the module its trainer imports) and its name."""


def missing_frameworks(frameworks: list[str], asked: str) -> dict[str, str]:
    """The frameworks whose package this machine lacks, each with the reason: skipped, with a
    notice, when others remain (--framework both on a GPU node without TensorFlow); refused in
    one line when none does."""
    missing = {}
    for framework in frameworks:
        module, name = FRAMEWORK_PACKAGES[framework]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a package that is there but broken
            found = False
        if not found:
            missing[framework] = f"{name} is not installed"
    if missing and len(missing) == len(frameworks):
        raise ConfigError(f"--framework {asked}: {'; '.join(missing.values())} here")
    for framework, reason in missing.items():
        print(f"notice: {reason} here: {framework} is recorded as skipped", flush=True)
    return missing


def check_horovod(args: argparse.Namespace, topo: Topology | None) -> None:
    """--engine horovod: a worker per device (--gpus N), every node's host when the workers span
    nodes, and Horovod built here for the frameworks (under --slurm the job runs this Python)."""
    if args.engine != "horovod":
        return
    if topo is None and not args.slurm:
        raise ConfigError("--engine horovod starts a Horovod worker per device: give --gpus N")
    if topo is not None and topo.nodes > 1 and len(topo.hosts) != topo.nodes:
        raise ConfigError(
            f"--engine horovod across {topo.nodes} nodes needs every node's host, node 0 first: "
            f"--hosts h0,h1,... (SLURM's node list inside an allocation); got {list(topo.hosts)}"
        )
    frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
    reason = engine_unavailable(frameworks, prog())
    if reason is not None:
        raise ConfigError(reason)


def check_submitit(args: argparse.Namespace) -> None:
    """--slurm (and --sweep with it) submits through submitit: refused in one line where it is
    not installed, before anything is written; --sbatch-out needs no package."""
    if args.slurm and not args.sbatch_out and importlib.util.find_spec("submitit") is None:
        raise ConfigError(
            "--slurm submits through submitit, which is not installed here (pip install "
            "submitit); or write a batch script with --sbatch-out FILE and submit it with sbatch"
        )


MAX_REPEATS = 100
"""--repeats at most this: 10,000 was accepted and wrote that many folders before any training."""


def check_results_path(results: Path) -> None:
    """--results must be a folder or not exist yet; a path the system refuses (a name over 255
    bytes, a file on the way, no permission) is named in one line, not a traceback."""
    try:
        mode = results.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"--results {str(results)[:80]}...: {e.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"--results {results}: not a folder")
