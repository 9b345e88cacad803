"""Pure functions that build the command lines the launcher runs; no side effects, easy to test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRAINER_MODULES = {"torch": "denoisebench.train_torch", "tf": "denoisebench.train_tf"}


def build_train_cmd(
    framework: str, run_dir: Path, resume: bool = False, base_env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that trains one framework into run_dir on this machine.

    Each framework runs in its own process, so a PyTorch run never imports TensorFlow.
    """
    if framework not in TRAINER_MODULES:
        raise ValueError(f"framework {framework!r} is not one of {', '.join(TRAINER_MODULES)}")
    argv = [sys.executable, "-m", TRAINER_MODULES[framework], str(run_dir)]
    if resume:
        argv.append("--resume")
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONUNBUFFERED"] = "1"
    if framework == "tf":
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
    return argv, env
