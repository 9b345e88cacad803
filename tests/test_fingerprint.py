"""A run edited between an interrupt and its resume is refused, naming the file (core.fingerprint):
the launcher's --resume, and a SLURM task that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from denoisebench.cluster.slurm_job import TrainTask
from denoisebench.core.config import ConfigError
from denoisebench.core.fingerprint import FINGERPRINT_FILE
from launch.__main__ import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch torch run made by the launcher (its fingerprints written)."""
    root = tmp_path_factory.mktemp("fp")
    argv = ["--profile", "smoke", "--epochs", "1", "--framework", "torch", "--no-report"]
    assert main([*argv, "--results", str(root), "--run-id", "r"]) == 0
    return root / "r"


def edited_copy(run: Path, tmp_path: Path, name: str, change) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    record = json.loads((copy / name).read_text())
    (copy / name).write_text(json.dumps(change(record), indent=2))
    return copy


EDITS = {
    "architecture": ("config.json", lambda c: c | {"model": c["model"] | {"kernel_size": 5}}),
    "seed": ("config.json", lambda c: c | {"train": c["train"] | {"seed": 7}}),
    "framework": ("launch.json", lambda c: c | {"framework": "both"}),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_run_is_not_resumed(run, tmp_path, capsys, edit):
    """Before the check: the architecture ended torch's restore in a size-mismatch traceback
    (TensorFlow trained the new model from scratch), the seed went through with exit 0, the
    framework left tf 'interrupted' for ever."""
    name, change = EDITS[edit]
    copy = edited_copy(run, tmp_path, name, change)
    assert main(["--resume", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {copy / name} changed since the run started (its sha256 is ")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="changed since the run started"):
        TrainTask("torch", copy, resume=True)._train()


def test_an_unedited_run_resumes_and_one_without_fingerprints_too(
    run, tmp_path, capsys, monkeypatch
):
    """... and its --no-report holds on --resume (it was forgotten: the resume wrote a report)."""
    monkeypatch.delenv("DENOISEBENCH_REPORT", raising=False)  # the report's default: on
    assert json.loads((run / FINGERPRINT_FILE).read_text()).keys() == {"config.json", "launch.json"}
    assert main(["--resume", str(run)]) == 0  # already completed: nothing to do
    assert "[torch] already completed" in capsys.readouterr().out
    assert not (run / "report").exists()
    copy = edited_copy(run, tmp_path, "config.json", lambda c: c)  # same content, new layout
    (copy / FINGERPRINT_FILE).unlink()  # a run made before fingerprints
    assert main(["--resume", str(copy)]) == 0
