"""The roofline bounds (denoisebench.measure.roofline) and the bandwidth and peak tables (hardware.py)."""

from __future__ import annotations

import math

import pytest

from denoisebench.core.spec import ModelSpec
from denoisebench.measure import roofline
from denoisebench.measure.hardware import memory_bandwidth, peak_flops

# the paper's model on 64x64 RGB, layer by layer (input, output elements), worked out by hand:
# 64x64x3 -> 32x32x32 -> 16x16x64 -> 8x8x128 -> 16x16x64 -> 32x32x32 -> 64x64x3
PAPER_LAYERS = [
    (12288, 32768),
    (32768, 16384),
    (16384, 8192),
    (8192, 16384),
    (16384, 32768),
    (32768, 12288),
]


def test_layer_sizes_of_the_paper_model():
    assert ModelSpec().layer_sizes() == PAPER_LAYERS


def test_traffic_counts_each_activation_as_the_docstring_says():
    # forward x + y, backward 3y + x, plus dx for every layer but the first
    xs = sum(x for x, _ in PAPER_LAYERS)
    ys = sum(y for _, y in PAPER_LAYERS)
    elements = (xs + ys) + (3 * ys + xs) + (xs - 12288)
    assert elements == 819_200
    assert roofline.traffic_bytes_per_image(ModelSpec(), "fp32") == 4 * elements
    assert roofline.traffic_bytes_per_image(ModelSpec(), "bf16") == 2 * elements


def test_h100_bounds():
    frame = roofline.bounds(ModelSpec(), "NVIDIA H100 80GB HBM3").set_index("precision")
    flops = 3 * ModelSpec().forward_flops_per_image()
    assert frame.loc["fp32", "compute bound img/s"] == pytest.approx(67.0e12 / flops)
    assert frame.loc["bf16", "memory bound img/s"] == pytest.approx(3.35e12 / (2 * 819_200))
    # float32 without tensor cores is compute-bound; bfloat16 memory-bound
    assert frame.loc["fp32", "bound img/s"] == frame.loc["fp32", "compute bound img/s"]
    assert frame.loc["bf16", "bound img/s"] == frame.loc["bf16", "memory bound img/s"]


def test_unknown_figures_are_missing_not_guessed():
    frame = roofline.bounds(ModelSpec(), "NVIDIA L40S").set_index("precision")
    assert frame["bound img/s"].isna().all()
    t4 = roofline.bounds(ModelSpec(), "Tesla T4").set_index("precision")
    assert math.isnan(t4.loc["tf32", "compute bound img/s"])  # no TF32 on a T4
    assert t4.loc["tf32", "bound img/s"] == t4.loc["tf32", "memory bound img/s"]
    assert roofline.bounds(ModelSpec(), None)["bound img/s"].isna().all()


@pytest.mark.parametrize(
    ("name", "tbs"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H100 PCIe", 2.0),
        ("NVIDIA H100 NVL", 3.9),
        ("NVIDIA H200", 4.8),
        ("NVIDIA H200 NVL", 4.8),
        ("NVIDIA A100-SXM4-80GB", 2.039),
        ("NVIDIA A100-SXM4-40GB", 1.555),
        ("NVIDIA L4", 0.3),
    ],
)
def test_bandwidth_table(name, tbs):
    assert memory_bandwidth(name) == (tbs * 1e12, None)


@pytest.mark.parametrize(
    ("name", "fp32", "tf32", "bf16"),
    [
        # NVL cards: the datasheets' 835 and 1,671 TFLOP/s are with sparsity, dense is half
        ("NVIDIA H100 NVL", 60.0, 417.5, 835.5),
        ("NVIDIA H200 NVL", 60.0, 417.5, 835.5),
        ("NVIDIA H100 80GB HBM3", 67.0, 494.7, 989.4),  # SXM5
        ("NVIDIA H200", 67.0, 494.7, 989.4),  # SXM
        ("NVIDIA H100 PCIe", 51.2, 378.0, 756.0),
    ],
)
def test_peak_table_tells_the_nvl_cards_from_the_sxm_ones(name, fp32, tf32, bf16):
    assert peak_flops(name, "fp32") == (fp32 * 1e12, None)
    assert peak_flops(name, "tf32") == (tf32 * 1e12, None)
    assert peak_flops(name, "bf16") == (bf16 * 1e12, None)
    assert peak_flops(name, "fp16") == (bf16 * 1e12, None)


def test_bandwidth_of_an_unknown_device_says_why():
    value, reason = memory_bandwidth("NVIDIA L40S")
    assert value is None and "not in the bandwidth table" in reason
    assert memory_bandwidth(None)[1].startswith("no GPU")


def test_roofline_command_prints_the_table(capsys):
    assert roofline.main(["--device", "NVIDIA H100 80GB HBM3"]) == 0
    out = capsys.readouterr().out
    assert "541,000" in out and "2,045,000" in out
    assert roofline.main(["--profile", "nonexistent"]) == 2
