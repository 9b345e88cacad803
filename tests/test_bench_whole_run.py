"""bench whole-run (denoisebench.bench.whole_run): the plain scripts stand apart from the suite,
both sides read the same folder alike, the plan interleaves, the table's arithmetic, and one
tiny real run through the command line."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from denoisebench.bench import whole_run
from denoisebench.bench.cli import main
from denoisebench.core.config import DataConfig
from denoisebench.data.images import load_images, make_split


def plain(framework: str) -> ModuleType:
    """A plain script loaded from its file, as `bench whole-run` runs it (not through the
    package)."""
    path = whole_run.PLAIN_SCRIPTS[framework]
    spec = importlib.util.spec_from_file_location(f"plain_{framework}_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_the_plain_scripts_import_nothing_of_the_suite_and_run_as_files(framework):
    path = whole_run.PLAIN_SCRIPTS[framework]
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: a relative import"
            tops.add((node.module or "").split(".")[0])
    assert not tops & {"denoisebench", "launch"}, tops
    assert tops >= ({"torch", "PIL"} if framework == "torch" else {"tensorflow", "keras"})
    args = whole_run.build_parser("bench").parse_args([])
    argv = whole_run.plain_argv(framework, args, Path("/data"), Path("/w"))
    assert argv[:3] == [sys.executable, str(path), "/data"]  # a file: no package imported


def test_each_repeat_runs_both_kinds_the_order_reversed_every_other_repeat():
    first = whole_run.plan(["torch", "tf"], 0)
    assert first == [("torch", "suite"), ("torch", "plain"), ("tf", "suite"), ("tf", "plain")]
    assert whole_run.plan(["torch", "tf"], 1) == first[::-1]
    assert whole_run.plan(["torch", "tf"], 2) == first


def fake(framework: str, kind: str, repeat: int, wall_s: float, psnr: float = 20.0) -> dict:
    return {"framework": framework, "kind": kind, "repeat": repeat, "wall_s": wall_s,
            "psnr_db": psnr}  # fmt: skip


def test_the_ratio_is_of_the_medians_with_the_extremes_of_the_per_repeat_ratios():
    runs = [
        fake("torch", "suite", 0, 11.0), fake("torch", "plain", 0, 10.0),
        fake("torch", "plain", 1, 8.0), fake("torch", "suite", 1, 12.0, psnr=21.0),
        fake("torch", "suite", 2, 10.0), fake("torch", "plain", 2, 10.0, psnr=19.0),
        fake("tf", "suite", 0, 30.0), fake("tf", "plain", 0, 20.0),
    ]  # fmt: skip
    torch_row, tf_row = whole_run.table(runs)
    assert (torch_row["suite_s"], torch_row["plain_s"]) == (11.0, 10.0)
    assert torch_row["ratio"] == pytest.approx(1.1)  # of the medians, not a median of ratios
    assert (torch_row["ratio_min"], torch_row["ratio_max"]) == pytest.approx((1.0, 1.5))
    assert (torch_row["suite_psnr_db"], torch_row["plain_psnr_db"]) == (20.0, 20.0)
    assert (tf_row["framework"], tf_row["repeats"], tf_row["ratio"]) == ("tf", 1, 1.5)
    shown = whole_run.format_rows([torch_row, tf_row])
    assert "1.100 (1.000-1.500)" in shown and "1.500 (1.500-1.500)" in shown


@pytest.mark.parametrize("images", [60, 600, 2700, 27_000])
def test_the_suite_splits_the_folder_into_the_sizes_the_plain_script_gets(images):
    args = whole_run.build_parser("bench").parse_args(["--images", str(images)])
    argv = whole_run.suite_argv("torch", args, Path("/data"), Path("/r"), "x")
    sets = dict(argv[i + 1].split("=") for i, a in enumerate(argv) if a == "--set")
    split = make_split(images, DataConfig(n_train=int(sets["data.n_train"]),
                                          n_test=int(sets["data.n_test"])))  # fmt: skip
    plain_argv = whole_run.plain_argv("torch", args, Path("/d"), Path("/w"))
    n_test = int(plain_argv[plain_argv.index("--test-images") + 1])
    assert (len(split.train), len(split.test)) == whole_run.split_sizes(images)
    assert len(split.test) == n_test and len(split.train) + n_test == images
    assert argv[3:9] == ["--framework", "torch", "--profile", "paper", "--data", "/data"]
    assert argv[-1] == "--no-report"


def test_the_data_folder_is_read_alike_by_the_suite_and_both_plain_scripts(tmp_path):
    folder = whole_run.write_images(tmp_path / "data", 60)
    assert len(list(folder.glob("*/*.jpg"))) == 60 and len(list(folder.iterdir())) == 10
    suite = load_images(DataConfig(source="eurosat", path=str(folder)), 64).images
    assert suite.shape == (60, 64, 64, 3) and suite.std() > 20  # textures, not flat grey
    as_set = sorted(image.tobytes() for image in suite)
    for framework in ("torch", "tf"):
        mine = plain(framework).load_images(folder)
        assert sorted(image.tobytes() for image in mine) == as_set, framework  # same pixels
    again = whole_run.write_images(tmp_path / "again", 60)
    assert (again / "Forest" / "Forest_1.jpg").read_bytes() == (
        folder / "Forest" / "Forest_1.jpg"
    ).read_bytes()  # seeded


def test_the_plain_torch_ssim_is_the_suites_definition():
    import torch

    from denoisebench.measure.quality import ssim_per_image

    rng = np.random.default_rng(0)
    clean = rng.random((4, 64, 64, 3), dtype=np.float32)
    out = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    script = plain("torch")
    nchw = [torch.from_numpy(x).permute(0, 3, 1, 2) for x in (out, clean)]
    mine = script.ssim(*nchw, script.gaussian_window(torch.device("cpu"))).numpy()
    np.testing.assert_allclose(mine, ssim_per_image(clean, out), atol=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "60"], "--batch-size 128: more than the 56 training images"),
        (["--repeats", "0"], "must be >= 1"),
        (["--json", "."], "a folder, not a file"),
        (["--json", "no/such/w.json"], "does not exist"),
    ],
)
def test_options_that_cannot_run_are_refused_before_anything_runs(argv, message, capsys):
    assert main(["whole-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_tiny_whole_run_prints_the_table_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "whole.json"
    argv = ["--framework", "torch", "--epochs", "1", "--images", "60", "--batch-size", "16"]
    assert main(["whole-run", *argv, "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "machine: " in printed and "torch" in printed and "on cpu" in printed
    assert "suite / plain (min-max)" in printed
    figures = json.loads(out.read_text())
    assert [(r["kind"], r["repeat"]) for r in figures["runs"]] == [("suite", 0), ("plain", 0)]
    suite, plain_run = figures["runs"]
    assert suite["wall_s"] > 0 and plain_run["wall_s"] > 0
    assert plain_run["device"] == "cpu" and plain_run["version"]
    [row] = figures["table"]
    assert row["ratio"] == pytest.approx(suite["wall_s"] / plain_run["wall_s"])
    assert figures["command"].endswith("whole-run " + " ".join(argv) + f" --repeats 1 --json {out}")


def test_the_plain_tf_script_trains_scores_every_epoch_and_saves_its_model(tmp_path):
    """The tiny whole run above covers plain_torch.py; this runs plain_tf.py alone (the suite's
    TensorFlow run is covered elsewhere)."""
    import subprocess

    folder = whole_run.write_images(tmp_path / "data", 60)
    weights = tmp_path / "denoiser.keras"
    args = whole_run.build_parser("bench").parse_args(
        ["--epochs", "3", "--images", "60", "--batch-size", "16"]
    )
    argv = whole_run.plain_argv("tf", args, folder, weights)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    test_losses = [float(line.split("test loss ")[1].split(",")[0]) for line in lines]
    assert test_losses[-1] < test_losses[0], lines  # it learns
    assert "PSNR" in lines[-1] and "SSIM" in lines[-1] and weights.stat().st_size > 0
