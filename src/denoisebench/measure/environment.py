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


def gpu_info() -> dict[str, Any]:
    """GPU names and driver from NVML; missing with the reason where there is none."""
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
                    "memory_total_gib": mem.total / 2**30,
                    "compute_capability": capability,
                }
            )
        return {"gpus": gpus, "driver": pynvml.nvmlSystemGetDriverVersion()}
    finally:
        pynvml.nvmlShutdown()


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
