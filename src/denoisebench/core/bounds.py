"""The bounds of every number in a run's config, as data: the lowest and highest value, and why.

Two kinds, checked in two places:

- BOUNDS, the same on every machine: seeds in numpy's range, a poisson peak that leaves
  something to denoise, Adam's rates, image counts and sizes. config.py checks them whenever a
  config is built (a profile, `--set`, a saved config.json read back), so no config that
  breaks one is ever written.
- threads_bound() and memory_bound(), what the machine that trains can do: threads at most the
  cores this process may use (os.sched_getaffinity: a SLURM task's or a taskset's CPUs, not
  the machine's count), and a synthetic data set whose estimated size (synthetic_bytes) fits
  in the memory available. They are never baked into a saved config, which is written on one
  machine (a login node, a laptop) and trained on another (a GPU node):
  config.check_machine_bounds checks them where a run starts, on the machine that runs it:
  the launcher before the run folder is made (launch/checks.py, for runs on this machine:
  under --slurm the nodes check), and load_resolved, which every trainer and a SLURM job's
  task read their config.json with, on their node.

Each message names the key, the value, the bound and the reason in one line:
"runtime.intra_op_threads must be <= 2, got 10000 (at most 2 threads: this machine has 2
cores)".

Standard library only, as core is (tests/test_layers.py): the memory available is read from
/proc/meminfo's MemAvailable, the figure psutil.virtual_memory().available reports on Linux.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bound:
    """The values a number may take: from `low` to `high`, each included unless open."""

    low: float
    high: float
    why: str
    """the reason for the bound, said in the message"""
    low_open: bool = False
    high_open: bool = False

    def above_low(self, value: float) -> bool:
        return value > self.low if self.low_open else value >= self.low

    def below_high(self, value: float) -> bool:
        return value < self.high if self.high_open else value <= self.high

    def rule(self) -> str:
        """'>= 0 and <= 1', '> 0 and < 1', or the one value allowed."""
        if self.low == self.high:
            return _number(self.low)
        return f"{self._low_side()} and {self._high_side()}"

    def _low_side(self) -> str:
        return f"{'>' if self.low_open else '>='} {_number(self.low)}"

    def _high_side(self) -> str:
        return f"{'<' if self.high_open else '<='} {_number(self.high)}"

    def problem(self, key: str, value: float) -> str | None:
        """The one-line message for `value` of `key` outside the bound, naming the side it
        crosses (both for a number that is not finite, or a bound of one value) and why."""
        if isinstance(value, float) and not math.isfinite(value):
            must = f"a finite number {self.rule()}"
        elif self.low == self.high and value != self.low:
            must = self.rule()
        elif not self.above_low(value):
            must = self._low_side()
        elif not self.below_high(value):
            must = self._high_side()
        else:
            return None
        return f"{key} must be {must}, got {value} ({self.why})"


def _number(x: float) -> str:
    """4294967295 -> '4,294,967,295'; 1.0 -> '1'; 0.01 -> '0.01'; 1e-300 -> '1e-300'."""
    if isinstance(x, int) or (x.is_integer() and abs(x) < 1e16):
        return f"{int(x):,}"
    return f"{x:g}"


FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: a larger value reaches the device as inf."""
MAX_IMAGES = 2**31 - 1
"""The most images any count may name: 2**31 - 1 images of 64x64 RGB are 26 TB."""
SEED = Bound(0, 2**32 - 1, "numpy's seed range: np.random.seed, which Keras seeds through")
IMAGES = Bound(1, MAX_IMAGES, "an image count; 2**31 - 1 images of 64x64 are 26 TB")
BATCH = Bound(1, 2**20, "images per step; 2**20 images of 64x64 are 12 GiB as uint8 alone")
THREADS = Bound(
    0,
    2**31 - 1,
    "0: the framework's default; both take a C int, and the machine's cores are "
    "checked where the run starts",
)

BOUNDS: dict[str, Bound] = {
    "model.in_channels": Bound(3, 3, "the images are RGB"),
    "model.image_size": Bound(
        1,
        4096,
        "pixels on a side, EuroSAT's are 64; at 4096 a first 32-channel layer's output "
        "is 512 MiB of float32 per image",
    ),
    "model.encoder_widths": Bound(
        1, 4096, "channels of each layer; a 3x3 layer of 4096 to 4096 holds 151 M weights"
    ),
    "model.kernel_size": Bound(1, 64, "pixels on a side; EuroSAT's whole image is 64x64"),
    "model.stride": Bound(1, 16, "stride**depth divides image_size, at most 4096 = 16**3"),
    "data.limit": Bound(
        0, MAX_IMAGES, "0: all images, else an image count; 2**31 - 1 images of 64x64 are 26 TB"
    ),
    "data.n_train": IMAGES,
    "data.n_test": IMAGES,
    "data.split_seed": SEED,
    "data.synthetic_images": Bound(
        2,
        MAX_IMAGES,
        "a train and a test image at least; the memory they need is checked at "
        "the start, on the machine that trains",
    ),
    "noise.sigma": Bound(0, 10, "pixels are in [0, 1]: beyond 10 clipping leaves only 0 and 1"),
    "noise.amount": Bound(0, 1, "a fraction of the pixels"),
    "noise.peak": Bound(
        0.01,
        1e6,
        "a white pixel's mean photon count: below 0.01 it gets none 99% of the time "
        "so the noisy images are black; above 1e6 the noise is under a quarter of an 8-bit step",
    ),
    "noise.test_seed": SEED,
    "train.epochs": Bound(1, 1_000_000, "passes over the training set; the paper trains 100"),
    "train.batch_size": BATCH,
    "train.eval_batch_size": BATCH,
    "train.lr": Bound(
        0,
        FLOAT32_MAX,
        "a step size: above float32's largest it reaches the device as inf; a step too large "
        "for the model ends the run as diverged",
        low_open=True,
    ),
    "train.beta1": Bound(0, 1, "Adam's decay rate: 1 never forgets", high_open=True),
    "train.beta2": Bound(0, 1, "Adam's decay rate: 1 never forgets", high_open=True),
    "train.eps": Bound(
        0, 1, "Adam's epsilon is added to gradient magnitudes far below 1", low_open=True
    ),
    "train.seed": SEED,
    "runtime.intra_op_threads": THREADS,
    "runtime.inter_op_threads": THREADS,
    "runtime.collective_timeout_s": Bound(1, 86_400, "seconds a dead peer holds the job: a day"),
    "profiler.warmup_steps": Bound(
        0, 10_000, "steps left out of the timing; 10,000 are 51 of the paper's epochs"
    ),
    "profiler.sample_interval_s": Bound(
        0.01, 60, "NVML returns errors or zeros faster; at a minute short windows get no sample"
    ),
    "profiler.idle_s": Bound(0, 600, "seconds of the start-up window read as idle power"),
    "profiler.min_window_s": Bound(0, 3600, "seconds; energy windows shorter are flagged"),
    "profiler.trace_steps": Bound(0, 1000, "steps traced; a trace holds every kernel launched"),
}
"""Every number of every config section (a tuple's items each), with its reason."""


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: SLURM's or taskset's), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return os.cpu_count() or 1


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory that can be allocated without swapping: MemAvailable, as psutil reports it on
    Linux; elsewhere the free pages (less, so the bound errs on the safe side); None unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


FLOAT_COPIES = 5
"""float32 copies of the test images held at once while the noisy test set is made
(trainer/rundata.py, core/noise.add_noise): the clean set, and add_noise's input, the noise
drawn, the sum and the clipped result (4.75 measured with tracemalloc)."""
QUALITY_BLOCK, QUALITY_WORKERS, QUALITY_ARRAYS = 64, 16, 8
"""measure/quality.image_quality, run once on the noisy test set by rank 0 of a CPU run (its
evaluation.TestSet; a GPU scores it on the device): blocks of 64 images in float64, one per
thread (at most 16, one per core), each with about 8 arrays of the block alive at once."""
INDEX_BYTES = 64
"""Per image: the split's int64 permutation and indices, and split.json's Python lists."""


def synthetic_bytes(n: int, image_size: int, limit: int, test_share: float, cores: int) -> int:
    """About the most memory `n` synthetic images (the first `limit` kept, 0: all; `test_share`
    of them for testing) take at once in a trainer on `cores` cores: the largest of three
    moments. Loading (data/images.py): all n as uint8 (size x size x 3 bytes each), and the
    first `limit` copied out of them. Then (trainer/rundata.py): the images kept, their train
    and test copies, and the noisy test set's float32 copies (add_noise). Then, the loaded set
    freed, rank 0 of a CPU run scores the noisy test set once (QUALITY_*), beside the train and
    test copies, the framework's own copy of the training set and the float32 test sets."""
    per_image = image_size**2 * 3
    kept = min(n, limit) if limit else n
    n_test = min(kept - 1, max(1, round(kept * test_share)))
    loading = per_image * (n + (kept if kept < n else 0))
    test_f32 = 4 * per_image * n_test
    blocks = min(cores, QUALITY_WORKERS, -(-n_test // QUALITY_BLOCK))
    quality = blocks * min(n_test, QUALITY_BLOCK) * per_image * 8 * QUALITY_ARRAYS
    splitting = per_image * 2 * kept + FLOAT_COPIES * test_f32
    scoring = per_image * (2 * kept - n_test) + 2 * test_f32 + quality
    return max(loading, splitting, scoring) + INDEX_BYTES * n


def largest_fitting(
    available: int, image_size: int, limit: int, test_share: float, cores: int
) -> int:
    """The most synthetic images whose estimate fits in `available` bytes (at least 1)."""
    low, high = 1, MAX_IMAGES
    while low < high:
        mid = (low + high + 1) // 2
        fits = synthetic_bytes(mid, image_size, limit, test_share, cores) <= available
        low, high = (mid, high) if fits else (low, mid - 1)
    return low


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def threads_bound() -> Bound:
    """runtime.*_threads on this machine: at most the cores this process may use."""
    cores = usable_cores()
    return Bound(0, cores, f"at most {cores} threads: this machine has {cores} cores")


def memory_bound(n: int, image_size: int, limit: int, test_share: float) -> Bound | None:
    """data.synthetic_images on this machine: the most images whose estimate fits the memory
    available, the reason giving the estimate for `n`; None when the memory is unknown."""
    available = available_bytes()
    if available is None:
        return None
    cores = usable_cores()
    need = synthetic_bytes(n, image_size, limit, test_share, cores)
    most = largest_fitting(available, image_size, limit, test_share, cores)
    return Bound(
        2,
        max(2, most),
        f"the training set needs about {_gib(need)}, this machine has {_gib(available)} available",
    )
