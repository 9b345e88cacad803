"""A GPU node's own environment (tests/site_env: torch, no TensorFlow, no tensorboard, the
project not installed, run from the repository with PYTHONPATH=src:.): `--framework both` trains
PyTorch, records TensorFlow as skipped with the reason, writes no TensorBoard events and says
why, and ends with the report; no traceback anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO, launch

from denoisebench.core.records import read_json

SITE = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "site_env"), "src", "."])}
SMOKE = ["--profile", "smoke", "--epochs", "1"]


def test_the_site_environment_hides_what_a_node_lacks():
    probe = (
        "import importlib.util as u, importlib.metadata as m, json, denoisebench;"
        "print(json.dumps([u.find_spec(n) is None for n in ('tensorflow', 'tensorboard', 'pytorch_msssim', 'torch')]"
        " + [denoisebench.__file__]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env={**os.environ, **SITE},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    tf_gone, tb_gone, msssim_gone, torch_gone, where = json.loads(out)
    assert tf_gone and tb_gone and msssim_gone and not torch_gone
    assert where == str(REPO / "src" / "denoisebench" / "__init__.py")


def test_framework_both_trains_pytorch_and_skips_tensorflow(tmp_path):
    proc = launch(*SMOKE, "--framework", "both", "--results", str(tmp_path), "--run-id", "node",
                  "--report", env=SITE)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "ModuleNotFoundError" not in out
    assert "notice: TensorFlow is not installed here: tf is recorded as skipped" in out
    assert "no TensorBoard events: the `tensorboard` package is not installed" in out
    assert "  tf: skipped: TensorFlow is not installed" in proc.stdout
    run = tmp_path / "node"
    torch_summary, tf_summary = (
        read_json(run / "torch/summary.json"),
        read_json(run / "tf/summary.json"),
    )
    assert torch_summary["status"] == "completed"
    assert "tensorboard" in torch_summary["tensorboard_skipped"]
    assert not (run / "torch" / "tensorboard").exists()
    assert (tf_summary["status"], tf_summary["error"]) == ("skipped", "TensorFlow is not installed")
    report = (run / "report" / "report.md").read_text()
    assert (
        "| TensorFlow | 1 CPU | 0 of 1 | missing (skipped: TensorFlow is not installed) |" in report
    )
    # PyTorch's one run has every figure: no "(1 of 1 runs; others: nan)" beside them
    assert "others: nan" not in report and "| nan" not in report and "None (None" not in report
    assert (run / "report" / "report.html").is_file()


def test_framework_tf_alone_is_refused_before_the_run_folder(tmp_path):
    proc = launch(*SMOKE, "--framework", "tf", "--results", str(tmp_path), env=SITE)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --framework tf: TensorFlow is not installed here"
    assert list(tmp_path.iterdir()) == []


def test_pytorch_ssim_loss_without_pytorch_msssim_is_refused_in_one_line(tmp_path):
    proc = launch(*SMOKE, "--framework", "torch", "--loss", "ssim", "--results", str(tmp_path),
                  env=SITE)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --loss ssim: PyTorch's SSIM loss needs the package pytorch-msssim "
        "(pip install pytorch-msssim)"
    )
    assert list(tmp_path.iterdir()) == []


def test_slurm_without_submitit_is_refused_in_one_line_and_sbatch_out_still_works(tmp_path):
    proc = launch(*SMOKE, "--slurm", "--results", str(tmp_path), env=SITE)
    assert proc.returncode == 2 and list(tmp_path.iterdir()) == []
    assert proc.stderr.startswith("error: --slurm submits through submitit, which is not installed")
    assert len(proc.stderr.strip().splitlines()) == 1
    script = tmp_path / "job.sbatch"
    proc = launch(*SMOKE, "--framework", "torch", "--sbatch-out", str(script), env=SITE)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text().startswith("#!/bin/bash")


def test_the_tests_run_where_pytest_xdist_is_missing():
    """A GPU node's pytest may lack pytest-xdist (the GPU check runs the gpu tests there, in one
    process): conftest's xdist hook must not make pytest refuse the whole suite ("unknown
    hook"). `-p no:xdist` leaves the hook unknown to pytest, as a missing plugin does."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-o", "addopts=", "-q",
         "-p", "no:cacheprovider", "tests/test_docs.py"],
        cwd=REPO, env={**os.environ, **SITE}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
