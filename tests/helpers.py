"""Helpers the tests share: run the launcher as a user would, read a run's final weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def launch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`python -m launch ARGS` from the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def weights(run: Path, framework: str) -> list[np.ndarray]:
    """A run's final weights.npz, in the canonical layout order."""
    with np.load(Path(run) / framework / "weights.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]
