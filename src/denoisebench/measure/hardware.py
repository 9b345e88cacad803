"""Peak FLOP/s and memory bandwidth of common GPUs: the tables MFU and the roofline use.

Dense (no sparsity) vendor figures, in TFLOP/s, per precision the trainers can run in:
fp32 (plain float32), tf32 (float32 on tensor cores), bf16 and fp16 (tensor cores). A device
that is not in the table, or a precision it lacks, gives no peak: MFU is then missing with the
reason, never guessed.
"""

from __future__ import annotations

import re
from typing import Any

# (substring of the NVML device name, lower case) -> {precision: dense peak TFLOP/s}.
# Checked in order: put more specific names first. NVIDIA's datasheets print the tensor-core
# rows (TF32, BF16, FP16) "with sparsity"; the dense figure here is half the printed one.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    # NVIDIA H200 NVL datasheet: FP32 60, TF32 835*, BF16/FP16 1,671* (* with sparsity)
    ("h200 nvl", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("h200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    # NVIDIA H100 NVL datasheet: FP32 60, TF32 835*, BF16/FP16 1,671* (* with sparsity)
    ("h100 nvl", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    # NVIDIA H100 PCIe datasheet: FP32 51, TF32 756*, BF16/FP16 1,513*; FP32 51.2 is
    # 114 SMs x 128 lanes x 2 x 1.755 GHz, and 756 the rounded half of 1,513
    ("h100 pcie", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("h100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM5
    ("a100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("a10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    ("l4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("v100", {"fp32": 15.7, "fp16": 125.0}),  # SXM2
    ("t4", {"fp32": 8.1, "fp16": 65.0}),
]


# (substring of the NVML device name, lower case) -> DRAM bandwidth, TB/s (vendor figures).
MEMORY_TBS: list[tuple[str, float]] = [
    ("h200 nvl", 4.8),  # H200 NVL datasheet; the same HBM3e bandwidth as the SXM part
    ("h200", 4.8),
    ("h100 nvl", 3.9),  # H100 NVL datasheet (94 GB HBM3)
    ("h100 pcie", 2.0),
    ("h100", 3.35),  # SXM5
    ("a100-sxm4-80gb", 2.039),
    ("a100 80gb pcie", 1.935),
    ("a100", 1.555),  # 40 GB
    ("a10", 0.6),
    ("l4", 0.3),
    ("v100", 0.9),
    ("t4", 0.32),
]


def _lookup(table: list[tuple[str, Any]], device_name: str) -> Any:
    name = device_name.lower()
    for key, value in table:
        # whole tokens only: "l4" must not match "L40S", nor "a100" "RTX A1000"
        if re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", name):
            return value
    return None


def peak_flops(device_name: str | None, precision: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s, None) or (None, why there is none)."""
    if not device_name:
        return None, "no GPU: no peak FLOP/s for this device"
    peaks = _lookup(PEAK_TFLOPS, device_name)
    if peaks is None:
        return (
            None,
            f"{device_name}: not in the peak FLOP/s table (src/denoisebench/measure/hardware.py)",
        )
    if precision not in peaks:
        return None, f"{device_name}: no {precision} peak in the table"
    return peaks[precision] * 1e12, None


def memory_bandwidth(device_name: str | None) -> tuple[float | None, str | None]:
    """(DRAM bytes/s, None) or (None, why there is none)."""
    if not device_name:
        return None, "no GPU: no memory bandwidth for this device"
    tbs = _lookup(MEMORY_TBS, device_name)
    if tbs is None:
        return (
            None,
            f"{device_name}: not in the bandwidth table (src/denoisebench/measure/hardware.py)",
        )
    return tbs * 1e12, None
