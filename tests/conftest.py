"""Shared fixtures: small configs and a quiet TensorFlow."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def smoke_overrides() -> dict[str, dict[str, str]]:
    """Overrides on top of the smoke profile for in-process training tests."""
    return {"data": {"limit": "96"}, "train": {"epochs": "2", "batch_size": "16"}}


# Real one-node SLURM cluster (session fixture `slurm_cluster`) for tests marked `slurm`.
pytest_plugins = ["slurm_cluster"]
