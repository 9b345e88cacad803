"""Upper bounds on training throughput: the device's compute and memory bandwidth against the model.

    python -m denoisebench.measure.roofline [--device "NVIDIA H100 80GB HBM3"] [--profile default]
        [--set SECTION.KEY=VALUE]

Prints, per precision, the images per second a training step could reach at most if it were
limited only by arithmetic (training FLOPs per image against the peak of hardware.py) or only
by DRAM traffic (the least bytes a step must move per image against the bandwidth). These are
bounds, computed, not measured: a measured figure is judged by how far below the lower of the
two it lands (bench/suite.py prints both beside the measurement).

The traffic model counts activations only, at the precision's element size (float32: 4 bytes,
bfloat16/float16: 2), assuming each layer's bias and activation are fused into its
convolution: forward, a layer reads its input and writes its output; backward, it reads the
gradient of its output, its output again (the activation's derivative) and its input again (the
weight gradient), and writes the gradient of its input (not for the first layer). Weights and
optimizer state (0.2 M parameters for the paper's model) are per step, not per image, and left
out; so are the noise and the loss, a few elements per pixel. Real kernels move more (padding
copies, unfused activations, cuDNN workspaces), so the bound is optimistic, as a bound should be.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from denoisebench.core.config import ConfigError, load_config, parse_overrides
from denoisebench.core.spec import ModelSpec
from denoisebench.measure.hardware import memory_bandwidth, peak_flops

ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}


def traffic_bytes_per_image(spec: ModelSpec, precision: str) -> int:
    """Least DRAM bytes one training step moves per image (the model in the docstring)."""
    elements = 0
    for i, (x, y) in enumerate(spec.layer_sizes()):
        elements += x + y  # forward: read the input, write the output
        elements += 3 * y + x  # backward: read dy, y and x
        elements += x if i > 0 else 0  # backward: write dx, except for the image itself
    return elements * ELEMENT_BYTES[precision]


def bounds(spec: ModelSpec, device_name: str | None) -> pd.DataFrame:
    """One row per precision: training FLOPs and bytes per image, and the two img/s bounds
    (NaN where the device's peak or bandwidth is not in hardware.py)."""
    flops = 3 * spec.forward_flops_per_image()
    bandwidth, _ = memory_bandwidth(device_name)
    rows = []
    for precision in ELEMENT_BYTES:
        peak, _ = peak_flops(device_name, precision)
        traffic = traffic_bytes_per_image(spec, precision)
        compute_bound = peak / flops if peak else float("nan")
        memory_bound = bandwidth / traffic if bandwidth else float("nan")
        rows.append(
            {
                "precision": precision,
                "MFLOP/img": flops / 1e6,
                "MB/img": traffic / 1e6,
                "FLOP/byte": flops / traffic,
                "compute bound img/s": compute_bound,
                "memory bound img/s": memory_bound,
                # the lower known bound (NaN only when neither is known)
                "bound img/s": min(
                    (v for v in (compute_bound, memory_bound) if v == v), default=float("nan")
                ),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m denoisebench.measure.roofline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        default="NVIDIA H100 80GB HBM3",
        help="GPU name as NVML reports it (default: %(default)s)",
    )
    parser.add_argument("--profile", default="default", help="(default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        spec = load_config(args.profile, parse_overrides(args.set)).model
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for reason in (peak_flops(args.device, "fp32")[1], memory_bandwidth(args.device)[1]):
        if reason:
            print(f"note: {reason}")
    frame = bounds(spec, args.device)
    print(f"{args.device}; model {spec.encoder_widths} k={spec.kernel_size}, {spec.image_size}px")
    shown = frame.round({"MFLOP/img": 1, "MB/img": 2, "FLOP/byte": 1})
    for col in ("compute bound img/s", "memory bound img/s", "bound img/s"):
        # bounds, not measurements: thousands are plenty
        shown[col] = shown[col].map(lambda v: "n/a" if v != v else f"{round(v, -3):,.0f}")
    print(shown.to_string(index=False, na_rep="n/a"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
