"""Sweeps: framework x devices x batch size, here and as SLURM job arrays."""

from __future__ import annotations

import re

import pytest
from helpers import launch

from denoisebench.core.config import ConfigError
from denoisebench.core.records import read_json
from denoisebench.core.sweep import load_sweep


def test_sweep_profiles_load():
    sweep = load_sweep("default")
    assert load_sweep("profiles/sweeps/default.toml") == sweep
    assert len(sweep.elements()) == 2 * 3 * 2
    smoke = load_sweep("smoke")
    assert [e.name for e in smoke.elements()] == [
        "torch-1dev-b8",
        "tf-1dev-b8",
        "torch-2dev-b8",
        "tf-2dev-b8",
    ]
    assert smoke.overrides == ("train.epochs=1",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\ndevices = [1]\nbatch_sizes = [0]\n", "batch_sizes"),
        ("[sweep]\ndevices = []\nbatch_sizes = [8]\n", "devices"),
        ("[sweep]\nframeworks = ['jax']\ndevices = [1]\nbatch_sizes = [8]\n", "frameworks"),
        ("[sweep]\ngpus = [1]\ndevices = [1]\nbatch_sizes = [8]\n", "gpus"),
        ("[train]\nepochs = 1\n", "[sweep]"),
        ("[sweep\n", "not valid TOML"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}.*{__import__('re').escape(message)}"):
        load_sweep(path)


def test_bad_override_stops_the_sweep_before_anything_runs(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[sweep]\nprofile = 'smoke'\ndevices = [1]\nbatch_sizes = [8]\n"
        "[set]\n'train.epochs' = 'many'\n"
    )
    proc = launch("--sweep", str(path), "--results", str(tmp_path / "r"))
    assert proc.returncode == 2 and "train.epochs" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_local_sweep_runs_every_element_into_its_own_folder(tmp_path):
    proc = launch("--sweep", "smoke", "--results", str(tmp_path), "--run-id", "sw")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name, world in (
        ("torch-1dev-b8", 1),
        ("tf-1dev-b8", 1),
        ("torch-2dev-b8", 2),
        ("tf-2dev-b8", 2),
    ):
        framework = name.split("-")[0]
        summary = read_json(tmp_path / "sw" / name / framework / "summary.json")
        assert summary["status"] == "completed"
        assert (summary["world_size"], summary["global_batch"]) == (world, 8 * world)
    table = proc.stdout[proc.stdout.rindex("framework") :]
    assert len([line for line in table.splitlines() if "completed" in line]) == 4


@pytest.mark.slurm
def test_slurm_sweep_submits_job_arrays(slurm_cluster, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[sweep]\nprofile = 'smoke'\nframeworks = ['torch']\ndevices = [2]\n"
        "batch_sizes = [8, 16]\n[set]\n'train.epochs' = 1\n"
    )
    slurm = [
        "--slurm",
        "--partition",
        "debug",
        "--time",
        "00:10:00",
        "--cpus-per-task",
        "1",
        "--cpu-workers",
        "--wait",
        "--wait-timeout",
        "400",
    ]
    proc = launch("--sweep", str(path), *slurm, "--results", str(tmp_path), "--run-id", "sw")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one job array per (framework, devices): submitit names its elements <array id>_<index>
    job_ids = re.findall(r"\[torch-2dev-b(?:8|16)\] SLURM job (\S+)", proc.stdout)
    assert sorted(j.split("_")[1] for j in job_ids) == ["0", "1"]
    assert len({j.split("_")[0] for j in job_ids}) == 1
    for name, batch in (("torch-2dev-b8", 16), ("torch-2dev-b16", 32)):
        summary = read_json(tmp_path / "sw" / name / "torch" / "summary.json")
        assert summary["status"] == "completed"
        assert (summary["world_size"], summary["global_batch"]) == (2, batch)
