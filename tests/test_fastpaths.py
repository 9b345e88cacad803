"""Fast paths and speed modes: mixed precision, channels_last, CUDA graphs, XLA, --mode.

Each option must train the same model to about the same result (the `tuned` mode's promise is
0.1 dB of float32; the short runs here allow more, their PSNR being far from converged), record
itself in the run's summary, and refuse the combinations that cannot work with a message that
names the key. CUDA graphs need a GPU: those tests are marked `gpu` and run where one is.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from helpers import launch

from denoisebench.bench import cli
from denoisebench.bench import paths as bench_paths
from denoisebench.core.config import (
    MODES_DIR,
    ConfigError,
    load_config,
    parse_overrides,
    speed_label,
)
from denoisebench.core.records import read_json, read_jsonl


def train(framework: str, tmp_path: Path, name: str, *sets: str, epochs: int = 3) -> list[dict]:
    cfg = load_config("smoke", parse_overrides([f"train.epochs={epochs}", "train.lr=0.005", *sets]))
    importlib.import_module(f"denoisebench.{framework}_backend.train").train(cfg, tmp_path / name)
    return read_jsonl(tmp_path / name / framework / "epochs.jsonl")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_mixed_precision_trains_like_float32(tmp_path, framework, precision):
    ref = train(framework, tmp_path, "fp32")
    mixed = train(framework, tmp_path, precision, f"runtime.precision={precision}")
    assert mixed[-1]["test_psnr_db"] > mixed[0]["test_psnr_db"]  # it learns
    # the same model from the same start lands near float32's result; three epochs on 148
    # images leave the PSNR moving by ~1 dB an epoch, so "near" is 0.5 dB here (the 0.1 dB of
    # the tuned mode is for a converged run: docs/measurements.md "Fast paths and speed modes")
    assert abs(mixed[-1]["test_psnr_db"] - ref[-1]["test_psnr_db"]) < 0.5
    assert all(math.isfinite(e["train_loss"]) for e in mixed)
    summary = read_json(tmp_path / precision / framework / "summary.json")
    assert summary["runtime"]["precision"] == precision
    assert summary["runtime"]["mode"] == "custom"
    assert read_json(tmp_path / "fp32" / framework / "summary.json")["runtime"]["mode"] == (
        "faithful"
    )


def test_torch_float16_resume_keeps_the_loss_scale(tmp_path):
    import torch

    train("torch", tmp_path, "fp16", "runtime.precision=float16", epochs=1)
    state = torch.load(tmp_path / "fp16" / "torch" / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] > 1.0  # the GradScaler's dynamic scale is checkpointed


def test_channels_last_is_the_same_training(tmp_path):
    plain = train("torch", tmp_path, "nchw", epochs=1)
    nhwc = train("torch", tmp_path, "nhwc", "runtime.channels_last=true", epochs=1)
    steps_a = [s["loss"] for s in read_jsonl(tmp_path / "nchw" / "torch" / "steps.jsonl")]
    steps_b = [s["loss"] for s in read_jsonl(tmp_path / "nhwc" / "torch" / "steps.jsonl")]
    # a memory layout, not a different computation: only float rounding may differ
    np.testing.assert_allclose(steps_b, steps_a, rtol=1e-4)
    assert nhwc[-1]["test_psnr_db"] == pytest.approx(plain[-1]["test_psnr_db"], abs=1e-3)


def test_memory_format_follows_the_setting():
    import torch

    from denoisebench.core.spec import ModelSpec
    from denoisebench.torch_backend.model import build_model, memory_format

    model = build_model(ModelSpec()).to(memory_format=memory_format(True))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert memory_format(False) == torch.contiguous_format


def test_cuda_graphs_without_a_gpu_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/test_fastpaths.py::test_cuda_graphs_* cover it")
    with pytest.raises(ConfigError, match=r"runtime\.cuda_graphs needs CUDA devices"):
        train("torch", tmp_path, "graphs", "runtime.cuda_graphs=true", epochs=1)
    assert read_json(tmp_path / "graphs" / "torch" / "summary.json")["status"] == "failed"


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["runtime.cuda_graphs=true", "runtime.torch_compile=true"], "choose one"),
        (["runtime.cuda_graphs=true", "runtime.precision=float16"], "use bfloat16"),
        (["runtime.precision=float8"], "float32, bfloat16, float16, float64"),
    ],
)
def test_impossible_combinations_are_refused_at_load(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config("default", parse_overrides(sets))


def test_xla_on_several_replicas_fails_fast_with_the_reason(tmp_path):
    """Refused on CPU devices (XLA has no collectives there) and on GPUs (Keras turns XLA off
    under tf.distribute): the key is named, the trainer exits as for bad input."""
    proc = launch(
        "--profile", "smoke", "--framework", "tf", "--gpus", "2", "--epochs", "1",
        "--results", str(tmp_path), "--run-id", "xla", "--set", "runtime.xla=true",
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "runtime.xla with 2 TensorFlow replicas" in proc.stderr
    assert "tf exited with code 2" in proc.stderr  # the trainer's bad-input exit, no traceback
    assert "Traceback" not in proc.stderr


# --- speed modes -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
@pytest.mark.parametrize("mode", sorted(p.stem for p in MODES_DIR.glob("*.toml")))
def test_every_mode_table_is_a_valid_runtime_section(mode, kind):
    cfg = load_config("default", mode=mode, device_kind=kind)
    table = tomllib.loads((MODES_DIR / f"{mode}.toml").read_text())[kind]
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if key not in subtables:
            assert getattr(cfg.runtime, key) == value
    # each sub-table (config.MODE_OVERLAYS) holds runtime keys, laid over the table when it applies
    old_multi = load_config("default", mode=mode, device_kind=kind, capability=(7, 0), devices=2)
    for name, sub in subtables.items():
        for key, value in sub.items():
            assert getattr(old_multi.runtime, key) == value, (name, key)
    assert cfg.mode == mode
    assert speed_label(cfg) == mode


def test_faithful_is_plain_float32_and_tuned_on_gpu_uses_the_fast_paths():
    faithful = load_config("default", mode="faithful", device_kind="gpu").runtime
    assert faithful == load_config("default").runtime  # the config.py defaults
    assert faithful.precision == "float32" and not faithful.tf32 and not faithful.xla
    tuned = load_config("default", mode="tuned", device_kind="gpu").runtime
    assert tuned.precision == "bfloat16" and tuned.cuda_graphs and tuned.xla


def test_set_overrides_win_over_the_mode():
    cfg = load_config(
        "default", parse_overrides(["runtime.xla=false"]), mode="tuned", device_kind="gpu"
    )
    assert cfg.runtime.xla is False and cfg.runtime.precision == "bfloat16"


def test_unknown_mode_names_the_file_and_the_known_modes():
    with pytest.raises(ConfigError, match=r"mode 'fastest'.*known modes: faithful, tuned"):
        load_config("default", mode="fastest")


def test_speed_label_without_a_mode_or_against_faithful():
    tf32 = parse_overrides(["runtime.tf32=true"])
    assert speed_label(load_config("default")) == "faithful"
    assert speed_label(load_config("default", tf32)) == "custom"
    assert speed_label(load_config("default", tf32, mode="faithful")) == "custom"
    assert speed_label(load_config("default", tf32, mode="tuned")) == "tuned"  # tuned, adjusted


def test_launch_mode_is_written_into_the_run_config(tmp_path):
    proc = launch("--mode", "tuned", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert '"mode": "tuned"' in proc.stdout
    (tmp_path / "config.json").write_text(load_config("smoke").to_json())
    refused = launch("--resume", str(tmp_path), "--mode", "tuned")
    assert refused.returncode == 2
    assert "drop --mode tuned (the run's: none)" in refused.stderr  # refused by name


# --- the fast-paths benchmark ------------------------------------------------------------


def test_paths_plan_skips_gpu_options_on_a_cpu_and_ends_with_tuned():
    runs, skipped = bench_paths.plan(["torch", "tf"], "cpu")
    names = [(f, o) for f, o, _ in runs]
    assert ("torch", "CUDA graphs") not in names
    assert ("torch", "CUDA graphs", "needs a GPU") in skipped
    assert names[0] == ("torch", bench_paths.FAITHFUL)
    assert names[-1] == ("tf", bench_paths.TUNED) and runs[-1][2] is None
    gpu_runs, gpu_skipped = bench_paths.plan(["torch"], "gpu")
    assert ("torch", "CUDA graphs") in [(f, o) for f, o, _ in gpu_runs] and not gpu_skipped


def test_paths_frame_speedup_and_psnr_difference_against_faithful():
    def fig(img_s, psnr):
        return {"img_s": img_s, "psnr_db": psnr, "data_wait_fraction": 0.01}

    raw = {
        ("torch", bench_paths.FAITHFUL): [fig(100, 20.0), fig(120, 20.0), fig(110, 20.0)],
        ("torch", "bfloat16 autocast"): [fig(300, 19.95), fig(330, 19.95), fig(310, 19.95)],
        ("torch", bench_paths.TUNED): [fig(400, 19.8), fig(400, 19.8), fig(400, 19.8)],
    }
    frame = bench_paths.paths_frame(raw).set_index("option")
    assert frame.loc["bfloat16 autocast", "speed-up"] == pytest.approx(310 / 110)
    assert frame.loc["bfloat16 autocast", "PSNR diff dB"] == pytest.approx(-0.05)
    assert bool(frame.loc["bfloat16 autocast", "within 0.1 dB"])
    assert not bool(frame.loc[bench_paths.TUNED, "within 0.1 dB"])  # 0.2 dB lost: flagged
    assert frame.loc["bfloat16 autocast", "min-max"] == "300-330"


def test_paths_plan_leaves_out_skipped_options_but_never_faithful():
    runs, skipped = bench_paths.plan(["torch"], "gpu", ("torch.compile", bench_paths.FAITHFUL))
    names = [o for _, o, _ in runs]
    assert "torch.compile" not in names and names[0] == bench_paths.FAITHFUL
    assert ("torch", "torch.compile", "--skip-path") in skipped


def test_bench_skip_path_must_name_an_option():
    assert cli.main(["--paths", "--skip-path", "nope", "--profile", "smoke"]) == 2
    assert cli.main(["--skip-path", "torch.compile", "--profile", "smoke"]) == 2


def test_bench_paths_keeps_the_other_options_when_one_fails(tmp_path, monkeypatch, capsys):
    def fake_measure(framework, variant, root, tag, epochs, first_steady):
        if "runtime.channels_last=true" in variant.set:
            raise SystemExit("python -m launch ... failed (exit 1):\nRuntimeError: boom")
        return {"framework": framework, "img_s": 100.0, "psnr_db": 20.0,
                "data_wait_fraction": 0.0}  # fmt: skip

    monkeypatch.setattr(bench_paths, "measure_suite", fake_measure)
    out = tmp_path / "paths.json"
    code = cli.main(
        ["--paths", "--framework", "torch", "--profile", "smoke", "--batch-size", "16",
         "--steps", "4", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 1
    result = json.loads(out.read_text())
    assert result["failed"] == [["torch", "channels_last", "RuntimeError: boom"]]
    options = [row["option"] for row in result["table"]]
    assert "channels_last" not in options and bench_paths.TUNED in options
    assert "FAILED: torch channels_last: RuntimeError: boom" in capsys.readouterr().out


def test_bench_paths_refuses_a_mode():
    assert cli.main(["--paths", "--mode", "tuned", "--profile", "smoke"]) == 2


def test_bench_paths_json_holds_what_was_measured_before_the_end(tmp_path):
    """--json is rewritten after every run: a benchmark cut at its time limit (the GPU check's
    fast-paths step) keeps the options it measured, marked unfinished."""
    fig = {"img_s": 100.0, "psnr_db": 20.0, "data_wait_fraction": 0.0}
    raw = {("torch", bench_paths.FAITHFUL): [fig], ("torch", "channels_last"): []}
    args = argparse.Namespace(json=tmp_path / "paths.json", framework="torch")
    bench_paths.write_json(args, "cpu", 3, 1, time.perf_counter(), [], {}, raw)
    result = json.loads((tmp_path / "paths.json").read_text())
    assert not result["finished"]
    assert [row["option"] for row in result["table"]] == [bench_paths.FAITHFUL]
    assert result["raw"]["torch/channels_last"] == []


def test_bench_paths_runs_end_to_end(tmp_path):
    out = tmp_path / "paths.json"
    code = cli.main(
        [
            "--paths",
            "--framework",
            "torch",
            "--profile",
            "smoke",
            "--batch-size",
            "16",
            "--steps",
            "4",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["finished"]
    options = [row["option"] for row in result["table"]]
    assert options[0] == bench_paths.FAITHFUL and bench_paths.TUNED in options
    assert all(row["img/s"] > 0 for row in result["table"])
    faithful = result["table"][0]
    assert faithful["speed-up"] == 1.0 and faithful["PSNR diff dB"] == 0.0


# --- on a GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_graphs_train_like_eager(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    eager = train("torch", tmp_path, "eager", "train.device=gpu", epochs=2)
    graphs = train(
        "torch", tmp_path, "graphs", "train.device=gpu", "runtime.cuda_graphs=true", epochs=2
    )
    loss_a = [s["loss"] for s in read_jsonl(tmp_path / "eager" / "torch" / "steps.jsonl")]
    loss_b = [s["loss"] for s in read_jsonl(tmp_path / "graphs" / "torch" / "steps.jsonl")]
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-3)
    assert graphs[-1]["test_psnr_db"] == pytest.approx(eager[-1]["test_psnr_db"], abs=0.05)
    steps = read_jsonl(tmp_path / "graphs" / "torch" / "steps.jsonl")
    assert all(s["step_time_s"] > 0 for s in steps)  # CUDA-event step times
    assert sum(s["step_time_s"] for s in steps[-5:]) < graphs[-1]["train_time_s"]


@pytest.mark.gpu
def test_bfloat16_on_gpu_records_the_bf16_peak(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from denoisebench.measure.hardware import peak_flops

    epochs = train("torch", tmp_path, "bf16", "train.device=gpu", "runtime.precision=bfloat16")
    assert epochs[-1]["test_psnr_db"] > epochs[0]["test_psnr_db"]
    summary = read_json(tmp_path / "bf16" / "torch" / "summary.json")
    assert summary["runtime"]["precision"] == "bfloat16"
    peak, reason = peak_flops(torch.cuda.get_device_name(), "bf16")
    if peak is None:
        pytest.skip(reason)
    last = epochs[-1]  # MFU against the bfloat16 tensor-core peak, not float32's
    expected = last["throughput_per_device_img_s"] * last["model_flops_per_image"] / peak
    assert last["mfu"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.gpu
def test_cuda_graphs_under_ddp_train_like_eager_ddp(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    runs = {}
    for name, sets in (("eager", []), ("graphs", ["--set", "runtime.cuda_graphs=true"])):
        proc = launch(
            "--profile", "smoke", "--framework", "torch", "--gpus", "2", "--epochs", "5",
            "--results", str(tmp_path), "--run-id", name, *sets,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [s["loss"] for s in read_jsonl(tmp_path / name / "torch" / "steps.jsonl")]
    # 5 epochs of 4 steps (global batch 32 of 148 images): 11 eager DDP steps, the capture,
    # then 9 replayed steps, all on the same losses as eager DDP
    assert len(runs["graphs"]) == 2 * 20  # both ranks' rows
    np.testing.assert_allclose(runs["graphs"], runs["eager"], rtol=1e-3)
