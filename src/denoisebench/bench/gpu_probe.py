"""The GPU check's probe: this machine as the GPU runs see it, printed as one JSON line.

    python -m denoisebench.bench.gpu_check --probe

The check's environment step runs it in a subprocess, so that a broken CUDA or NVML install
fails that step alone, and the check itself never imports torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import time
from collections.abc import Callable
from typing import Any

# Packages a site's GPU environment may lack; each is used by one feature only.
OPTIONAL_PACKAGES = ("tensorflow", "tensorflow_datasets", "submitit", "pytorch_msssim", "bm3d")


def probe() -> dict[str, Any]:
    """Python, packages (and those missing), torch's CUDA build and device, NVML's view."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {},
        "missing": [],
    }
    for name in ("torch", "numpy", "pandas", *OPTIONAL_PACKAGES):
        if importlib.util.find_spec(name) is None:
            info["missing"].append(name)
    from importlib import metadata

    for dist in ("torch", "numpy", "pandas", "matplotlib", "scikit-image", "nvidia-ml-py"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info["packages"][dist] = metadata.version(dist)
    info["torch"] = probe_torch()
    info["nvml"] = probe_nvml()
    return info


def probe_torch() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            nccl=".".join(map(str, torch.cuda.nccl.version())),
        )
    return out


def probe_nvml() -> dict[str, Any]:
    """Driver, clocks, power limit and whether the energy counter moves (read 1 s apart)."""
    from denoisebench.measure.profiler import load_nvml

    nvml, reason = load_nvml()
    if nvml is None:
        return {"reason": reason}
    out: dict[str, Any] = {"driver": nvml.nvmlSystemGetDriverVersion(), "gpus": []}
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        gpu: dict[str, Any] = {"index": i, "name": nvml.nvmlDeviceGetName(h)}
        reads: list[tuple[str, Callable[[], Any]]] = [
            ("sm_clock_mhz", lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("sm_clock_max_mhz", lambda h=h: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            ("power_limit_w", lambda h=h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
            ("power_w", lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000),
            ("temperature_c", lambda h=h: nvml.nvmlDeviceGetTemperature(h, 0)),
        ]
        for key, read in reads:
            try:
                gpu[key] = read()
            except nvml.NVMLError as e:
                gpu[key] = None
                gpu[f"{key}_reason"] = str(e)
        gpu.update(energy_counter(nvml, h))
        out["gpus"].append(gpu)
    return out


def energy_counter(nvml: Any, h: Any) -> dict[str, Any]:
    """Whether the energy counter moves, read 1 s apart, and the idle power it gives."""
    try:
        e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        time.sleep(1.0)
        e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except nvml.NVMLError as e:
        return {"energy_counter_readable": False, "energy_counter_reason": str(e)}
    return {
        "energy_counter_mj": [e0, e1],
        "energy_counter_readable": e1 > e0,
        "idle_power_from_counter_w": (e1 - e0) / 1000,
    }
