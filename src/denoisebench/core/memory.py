"""The memory one training process needs for its batch, estimated from the model spec before
anything is allocated, and the largest batch that fits.

A `--batch-size 100000` once grew one CPU trainer to 20.7 GB of a 23 GB machine before the OOM
killer ended it (issue 34); the launcher now compares this estimate with what the machine has
before it makes the run folder (launch/folders.py, check_step_memory) and refuses in one line.

The estimate, for one training process (on a GPU: for one device), with per-device batch B,
global batch G = B x devices of the job, and R devices driven by the process (TensorFlow's
MirroredStrategy drives several; every other process one):

    SAFETY x (framework + data + R x (train copy + params + B x per_image + G x per_global))

- framework: the process's resident memory with nothing of the run in it (the interpreter,
  the framework's libraries, thread pools). Measured, not derived: FRAMEWORK_BYTES.
- data: the images as the step finds them, as uint8 except where said (trainer/rundata.py):
  the training split on the host, and its copy that each device holds ("train copy": both
  trainers put it on the device once); the test split on the host as uint8 and float32 clean
  and noisy, and rank 0's TestSet of it (uint8, float32 noisy, a float32 output buffer).
- params: weights, gradients and Adam's two moments, 4 copies of the parameters in the
  weights' dtype (float32, float64 in float64 mode), and autocast's low-precision copy.
- per_global: every device draws the whole global batch's noise (core/distributed.py), so it
  holds the clean and noisy global batch: 2 images in the images' dtype (float32; float64).
- per_image, what autograd (or TensorFlow's tape) keeps of one image until the backward pass:
  each layer's activation output, which is also the next layer's convolution input and what
  the ReLU, sigmoid and tanh gradients are computed from; the convolution's own output besides
  where the activation differentiates through its input (SiLU, ELU); the gradients in flight,
  2 of the largest layer's output (the one arriving, the one sent on); the loss' own tensors,
  LOSS_COPIES images in the images' dtype (|out - clean| and the gradient it sends back; SSIM
  keeps its filtered maps); in mixed precision the input cast to the compute dtype and the
  output cast back. Activations are in the compute dtype: 2 bytes in bfloat16 and float16
  (autocast, Keras' mixed policy), else the images' dtype.
- SAFETY: what the formula leaves out (the allocator's rounding and fragmentation, oneDNN's
  reorder buffers, the short-lived noise and batch copies), taken from the measurements in
  docs/usage.md#memory.

Standard library only (core's rule): the figures come from the config, never from a framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from denoisebench.core.bounds import Bound
from denoisebench.core.config import Config

GIB = 2**30
MIB = 2**20
FRAMEWORK_BYTES = {"torch": int(0.6 * GIB), "tf": int(0.95 * GIB)}
"""One trainer's peak RSS at batch 16 on 4,500 synthetic images, less the data term
(docs/usage.md#memory): torch 2.13 CPU 0.75 GiB, TensorFlow 2.21 CPU 1.07 GiB, each less
0.16 GiB of data, rounded up."""
GPU_RESERVED_BYTES = 1 * GIB
"""On a GPU, what the device holds beside the run's tensors (the CUDA context, cuDNN and cuBLAS
workspaces, the caching allocator's rounding): assumed, not measured (no GPU has run this)."""
SAFETY = 1.2
"""The 18 measured peaks were 0.80 to 0.99 of the formula without it (docs/usage.md#memory):
the margin is for what one machine cannot show (other CPUs' kernels, more threads' arenas)."""
KEEPS_INPUT = frozenset({"silu", "elu"})
"""Activations whose gradient is computed from their input: the convolution output stays too."""
LOSS_COPIES = {"mae": 2, "mse": 2, "ssim": 14}
"""Images the loss keeps per batch image: the difference and its gradient; SSIM its filtered
means, variances and maps (measured: 12 images more than MAE, PyTorch, batch 1,024)."""
EUROSAT_IMAGES = 27_000
BUILTIN_IMAGES_64 = 959
"""data/images.load_builtin's patches at 64x64 (a size s gives about 959 x (64/s)**2)."""


@dataclass(frozen=True)
class Layout:
    """Where one framework's training runs on this machine."""

    processes: int = 1
    """Training processes of this framework on this machine at once."""
    replicas: int = 1
    """Devices each process drives (TensorFlow's MirroredStrategy: all of them; else 1)."""
    world: int = 1
    """Devices of the whole job: the global batch is train.batch_size x world."""
    gpu: bool = False
    """The batch lives on a GPU: the estimate is per device, against the GPU's memory."""


@dataclass(frozen=True)
class StepMemory:
    """The estimate's terms in bytes, before SAFETY; `total` is what is compared."""

    framework: int
    data: int
    per_image: int
    """Bytes per image of the per-device batch, global-batch terms included, for R devices."""
    batch: int

    @property
    def total(self) -> int:
        return math.ceil(SAFETY * (self.framework + self.data + self.per_image * self.batch))

    def terms(self, framework: str, gpu: bool) -> str:
        """'1.1 MiB x 4,096 images, data 0.2 GiB, torch 0.6 GiB, x1.2', for the message."""
        base = "GPU runtime" if gpu else framework
        return (
            f"{self.per_image / MIB:,.2f} MiB x {self.batch:,} images, data "
            f"{self.data / GIB:,.1f} GiB, {base} {self.framework / GIB:,.1f} GiB, x{SAFETY:g}"
        )


def dtype_bytes(precision: str) -> tuple[int, int]:
    """(images and loss, activations): float64 8 and 8, bfloat16 and float16 4 and 2, else 4."""
    wide = 8 if precision == "float64" else 4
    return wide, 2 if precision in ("bfloat16", "float16") else wide


def image_bytes(cfg: Config) -> int:
    """Bytes autograd keeps per image of the per-device batch (module docstring: per_image)."""
    spec, precision = cfg.model, cfg.runtime.precision
    wide, act = dtype_bytes(precision)
    pixels = spec.image_size**2 * spec.in_channels
    outputs = [out for _, out in spec.layer_sizes()]
    kept = sum(
        out * (2 if layer.activation in KEEPS_INPUT else 1)
        for out, layer in zip(outputs, spec.layers(), strict=True)
    )
    casts = pixels * (act + wide) if act != wide else 0
    loss = pixels * wide * LOSS_COPIES[cfg.train.loss]
    return act * (kept + 2 * max(outputs)) + loss + casts


def global_image_bytes(cfg: Config) -> int:
    """Bytes per image of the global batch: its clean and noisy copies, on every device."""
    return (
        2 * cfg.model.image_size**2 * cfg.model.in_channels * dtype_bytes(cfg.runtime.precision)[0]
    )


def param_bytes(cfg: Config) -> int:
    """Weights, gradients, Adam's two moments, and autocast's low-precision copy."""
    wide, act = dtype_bytes(cfg.runtime.precision)
    return cfg.model.num_parameters() * (4 * wide + (act if act != wide else 0))


def expected_images(cfg: Config) -> int:
    """The images the data source gives (data.limit applied), known before loading them."""
    data, size = cfg.data, cfg.model.image_size
    if data.source == "synthetic":
        n = data.synthetic_images
    elif data.source == "builtin":
        n = max(2, round(BUILTIN_IMAGES_64 * (64 / size) ** 2))
    else:  # eurosat, tfds: EuroSAT RGB
        n = EUROSAT_IMAGES
    return min(n, data.limit) if data.limit else n


def split_sizes(cfg: Config) -> tuple[int, int]:
    """(train, test) images: data/images.make_split's arithmetic on expected_images."""
    n, total = expected_images(cfg), cfg.data.n_train + cfg.data.n_test
    n_test = min(n - 1, max(1, round(n * cfg.data.n_test / total)))
    return max(1, min(n - n_test, round(n * cfg.data.n_train / total))), n_test


def estimate(cfg: Config, framework: str, layout: Layout, batch: int | None = None) -> StepMemory:
    """The peak of one process (a GPU: one device) training `batch` images per device (None:
    train.batch_size) in `layout`: the module docstring's formula."""
    batch = cfg.train.batch_size if batch is None else batch
    pixels = cfg.model.image_size**2 * cfg.model.in_channels
    n_train, n_test = split_sizes(cfg)
    train_copy = n_train * pixels
    # uint8 and two float32 copies: the host's clean and noisy, rank 0's noisy and outputs
    test_set = n_test * pixels * (1 + 4 + 4)
    if layout.gpu:
        framework_bytes, data, replicas = GPU_RESERVED_BYTES, train_copy + test_set, 1
    else:
        framework_bytes, replicas = FRAMEWORK_BYTES[framework], layout.replicas
        data = train_copy + test_set * 2 + replicas * train_copy  # host, then devices
    per_image = replicas * (image_bytes(cfg) + layout.world * global_image_bytes(cfg))
    return StepMemory(framework_bytes, data + replicas * param_bytes(cfg), per_image, batch)


def largest_batch(cfg: Config, framework: str, layout: Layout, available: int) -> int:
    """The largest per-device batch whose estimate fits `available` bytes (0: none does)."""
    low, high = 0, 2**40
    while low < high:
        mid = (low + high + 1) // 2
        fits = estimate(cfg, framework, layout, mid).total <= available
        low, high = (mid, high) if fits else (low, mid - 1)
    return low


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:,.1f} GiB"


def step_problem(
    cfg: Config, framework: str, layout: Layout, available: int, where: str
) -> str | None:
    """The one-line refusal when the step's estimate exceeds `available` bytes, naming the key,
    the value, the largest batch that fits and both figures (`where`: what `available` is,
    e.g. "this machine has 22.6 GiB available"); None when it fits."""
    need = estimate(cfg, framework, layout)
    if need.total <= available:
        return None
    per = "per device" if layout.gpu else f"per {framework} process"
    terms = need.terms(framework, layout.gpu)
    why = f"a training step needs about {gib(need.total)} {per} ({terms}), {where}"
    batch, most = cfg.train.batch_size, largest_batch(cfg, framework, layout, available)
    if most < 1:
        return f"train.batch_size={batch}: not even 1 image per step fits ({why})"
    return Bound(1, most, why).problem("train.batch_size", batch)
