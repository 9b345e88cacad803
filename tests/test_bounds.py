"""core/bounds.py's machine bounds: threads against this process' cores, a synthetic set against
the memory available (its estimate against what loading really takes), and where they are
checked (a saved config read back to train, not a config being built)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import psutil
import pytest

from denoisebench.core import bounds
from denoisebench.core.config import (
    ConfigError,
    check_machine_bounds,
    load_config,
    load_resolved,
    parse_overrides,
)
from denoisebench.measure import quality
from denoisebench.trainer.rundata import prepare_data

CORES = len(os.sched_getaffinity(0))


def synthetic(*pairs: str):
    return load_config("default", parse_overrides(["data.source=synthetic", *pairs]))


@pytest.mark.parametrize("key", ["runtime.intra_op_threads", "runtime.inter_op_threads"])
def test_threads_are_at_most_this_process_cores(key):
    check_machine_bounds(load_config("smoke", parse_overrides([f"{key}={CORES}"])))
    with pytest.raises(ConfigError) as e:
        check_machine_bounds(load_config("smoke", parse_overrides([f"{key}={CORES + 1}"])))
    assert str(e.value) == (
        f"{key} must be <= {CORES}, got {CORES + 1} (at most {CORES} threads: this machine has "
        f"{CORES} cores)"
    )


def test_a_synthetic_set_must_fit_the_memory_available(monkeypatch):
    """With 64 MiB available: the largest set whose estimate fits passes, one image more is
    refused, naming both figures."""
    available = 64 * 2**20
    monkeypatch.setattr(bounds, "available_bytes", lambda: available)
    share = 2_000 / 27_000  # the default profile's n_test / (n_train + n_test)
    largest = bounds.largest_fitting(available, 64, 0, share, CORES)
    assert bounds.synthetic_bytes(largest, 64, 0, share, CORES) <= available
    assert bounds.synthetic_bytes(largest + 1, 64, 0, share, CORES) > available
    check_machine_bounds(synthetic(f"data.synthetic_images={largest}"))
    with pytest.raises(ConfigError) as e:
        check_machine_bounds(synthetic(f"data.synthetic_images={largest + 1}"))
    assert str(e.value) == (
        f"data.synthetic_images must be <= {largest:,}, got {largest + 1} (the training set "
        "needs about 0.1 GiB, this machine has 0.1 GiB available)"
    )
    check_machine_bounds(load_config("smoke"))  # built-in images: their size is fixed


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        ["data.limit=500"],
        ["noise.kind=poisson"],
        ["data.n_test=25000"],
        ["model.image_size=32"],
    ],
)
def test_the_memory_estimate_covers_what_loading_takes(tmp_path, pairs):
    """The estimate against the peak that tracemalloc (which sees numpy's arrays) measures while
    a trainer loads 3,000 synthetic images and, rank 0 on a CPU, scores the noisy test set once
    (its evaluation.TestSet, with the data loaded): never below it, and not far above."""
    cfg = synthetic("data.synthetic_images=3000", *pairs)
    tracemalloc.start()
    try:
        data = prepare_data(cfg, tmp_path)
        framework_copy = data.train_u8[:, ::-1, ::-1].copy()  # torch's flipped one, on a CPU
        quality.image_quality(data.test_clean, data.test_noisy)
        peak = tracemalloc.get_traced_memory()[1]
        del framework_copy
    finally:
        tracemalloc.stop()
    share = cfg.data.n_test / (cfg.data.n_train + cfg.data.n_test)
    estimate = bounds.synthetic_bytes(3000, cfg.model.image_size, cfg.data.limit, share, CORES)
    assert peak <= estimate <= 1.5 * peak, (peak, estimate)
    assert (bounds.QUALITY_BLOCK, bounds.QUALITY_WORKERS) == (quality.BLOCK, 16)


def test_available_memory_is_psutils_figure():
    ours, theirs = bounds.available_bytes(), psutil.virtual_memory().available
    assert ours is not None and abs(ours - theirs) < max(0.05 * theirs, 256 * 2**20)
    assert bounds.available_bytes(Path("/nonexistent/meminfo")) > 0  # free pages instead


def test_a_saved_config_is_checked_against_the_machine_that_trains_it(tmp_path):
    """A config.json written elsewhere (a node with more cores) passes every fixed bound; read
    back to train here it is refused, and read for anything else it is not."""
    cfg = load_config("smoke", parse_overrides([f"runtime.intra_op_threads={CORES + 1}"]))
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    with pytest.raises(ConfigError, match=f"this machine has {CORES} cores"):
        load_resolved(path)
    assert load_resolved(path, here=False) == cfg
