"""What machine a run ran on: library versions, CPU and GPU models, driver, git commit, and
the GPUs' kind and compute capability that pick a speed mode's table. Probes the machine;
nothing here is written to a record by itself (trainer.session does that).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError) as e:
        return {"commit": None, "reason": f"git unavailable: {e}"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_info(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The GPUs a CUDA process started here sees, in its order (NVML's list, through
    CUDA_VISIBLE_DEVICES when set: visible_gpus), their names and the driver; missing with the
    reason where there is none. `node_gpus`: how many the node has, mask or not."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # no library, no driver, no device: all mean "no NVML here"
        return {"gpus": None, "reason": f"NVML unavailable: {e}"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                capability = list(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            except pynvml.NVMLError:
                capability = None
            gpus.append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "uuid": pynvml.nvmlDeviceGetUUID(handle),
                    "memory_total_gib": mem.total / 2**30,
                    "compute_capability": capability,
                }
            )
        info = {"gpus": gpus, "driver": pynvml.nvmlSystemGetDriverVersion(), "node_gpus": count}
    finally:
        pynvml.nvmlShutdown()
    return visible_gpus(info, os.environ if env is None else env)


def visible_gpus(info: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """`info` with only the GPUs CUDA_VISIBLE_DEVICES shows, in its order, as CUDA reads it:
    entries are NVML indices or (prefixes of) GPU UUIDs; the first entry that names no GPU, or
    one already named, ends the list ("" and "-1" show none). A MIG device (`MIG-...`) counts
    as one device of unknown model. Unset: every GPU. With none left, `reason` says why."""
    mask = env.get("CUDA_VISIBLE_DEVICES")
    gpus = info.get("gpus") or []
    if mask is None or not gpus:
        return info
    shown: list[dict[str, Any]] = []
    for entry in (e.strip() for e in mask.split(",")):
        if entry.isdigit() and int(entry) < len(gpus):
            gpu = gpus[int(entry)]
        elif entry.startswith("MIG-"):
            gpu = {"index": None, "name": f"MIG device {entry}", "uuid": entry,
                   "memory_total_gib": None, "compute_capability": None}  # fmt: skip
        else:
            named = [
                g for g in gpus if entry.startswith("GPU-") and g.get("uuid", "").startswith(entry)
            ]
            if len(named) != 1:
                break
            gpu = named[0]
        if gpu in shown:
            break
        shown.append(gpu)
    out = {**info, "gpus": shown, "cuda_visible_devices": mask}
    if not shown:
        out["reason"] = (
            f"CUDA_VISIBLE_DEVICES={mask!r} shows none of this node's {len(gpus)} GPU(s)"
        )
    return out


def local_device_kind(device_choice: str, info: dict[str, Any] | None = None) -> str:
    """ "gpu" where a run with train.device=`device_choice` trains on this machine's GPUs,
    else "cpu": which table of a speed mode (profiles/modes/) applies here. `info`: a
    gpu_info() already read (None: read it)."""
    if device_choice == "cpu":
        return "cpu"
    return "gpu" if (gpu_info() if info is None else info)["gpus"] else "cpu"


def oldest_capability(info: dict[str, Any]) -> tuple[int, int] | None:
    """The oldest compute capability among the GPUs of a gpu_info(), None when unknown."""
    caps = [g.get("compute_capability") for g in info["gpus"] or []]
    known = [(int(c[0]), int(c[1])) for c in caps if c]
    return min(known) if known and len(known) == len(caps) else None


def environment(framework: str) -> dict[str, Any]:
    packages = ["numpy", "scikit-image", "nvidia-ml-py"]
    packages += ["torch"] if framework == "torch" else ["tensorflow", "tensorflow-cpu", "keras"]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git": git_commit(),
        **gpu_info(),
    }
