"""The equivalence checks catch real data-parallel bugs: each bug is planted in a 2-device run
(tests/plants/sitecustomize.py, through PYTHONPATH), and "2 devices with batch 8 equal one
device with batch 16" (helpers.assert_same_training, float64 to EXACT_ATOL) must fail on it,
while the same check passes on the unplanted runs (test_distributed.py).

Measured after one smoke epoch (9 steps, AMD EPYC): the largest weight difference from the
one-device run is 1.1e-2 for local gradients and for a skipped slice, 3.9e-3 for summed
gradients, 8.1e-3 (PyTorch) and 3.0e-3 (TensorFlow) for per-rank noise: every one is more
than 1e6 times EXACT_ATOL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import EXACT, EXACT_ATOL, REPO, assert_same_training, launch, weights

PLANTS = REPO / "tests" / "plants"


def pythonpath() -> str:
    """The plants first, then whatever PYTHONPATH there was (a GPU node's `src:.`)."""
    return os.pathsep.join(p for p in (str(PLANTS), os.environ.get("PYTHONPATH", "")) if p)


def planted_run(tmp_path: Path, framework: str, plant: str) -> Path:
    proc = launch(
        "--profile", "smoke", "--epochs", "1", *EXACT,
        "--framework", framework, "--gpus", "2", "--batch-size", "8",
        "--results", str(tmp_path), "--run-id", plant,
        env={"PYTHONPATH": pythonpath(), "DENOISEBENCH_PLANT": plant},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"[plant] {plant}" in out, "the planted bug did not load: " + out[-3000:]
    return tmp_path / plant


@pytest.mark.parametrize(
    ("framework", "plant"),
    [
        ("torch", "local_gradients"),
        ("torch", "summed_gradients"),
        ("torch", "skipped_slice"),
        ("torch", "rank_noise"),
        ("tf", "skipped_slice"),  # MirroredStrategy: 2 replicas on logical CPUs
        ("tf", "rank_noise"),
    ],
)
def test_the_equivalence_check_fails_on_a_planted_bug(single, tmp_path, framework, plant):
    run = planted_run(tmp_path, framework, plant)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_same_training(run, single, framework)
    pairs = zip(weights(run, framework), weights(single, framework), strict=True)
    moved = max(abs(a - b).max() for a, b in pairs)
    assert moved > 1e3 * EXACT_ATOL  # caught by a wide margin, not by a hair
