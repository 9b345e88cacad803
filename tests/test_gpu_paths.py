"""The GPU-only paths, checked before a GPU runs them: each case runs on the CPU where the path
can be reached there (XLA on CPU, a 2-rank gloo run, the step bookkeeping, stand-in device
lists and compute capabilities); the rest is marked `gpu` and runs first in the GPU check.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
from helpers import EXACT_ATOL, launch, weights

from denoisebench.core.config import (
    ConfigError,
    check_device_support,
    load_config,
    mode_runtime,
    parse_overrides,
)
from denoisebench.core.epochs import step_stats, warmup_steps
from denoisebench.core.records import read_json, read_jsonl


def train(framework: str, run: Path, *sets: str, epochs: int = 1) -> list[dict]:
    cfg = load_config("smoke", parse_overrides([f"train.epochs={epochs}", *sets]))
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(cfg.to_json())  # as the launcher writes it
    importlib.import_module(f"denoisebench.{framework}_backend.train").train(cfg, run)
    return read_jsonl(run / framework / "steps.jsonl")


# --- TensorFlow ----------------------------------------------------------------------------


def test_tf_allocator_peaks_need_profiler_rows(monkeypatch):
    """GPUs seen by TensorFlow but no NVML rows (profiler off, or NVML unavailable): the
    allocator's peaks have no row to go into, which must not end the epoch in a ValueError."""
    train_tf = importlib.import_module("denoisebench.tf_backend.train")
    monkeypatch.setattr(train_tf, "memory_peaks_gib", lambda gpus: [0.5 for _ in gpus])
    rows: list[dict] = []
    train_tf.add_allocator_peaks(rows, [0])  # one GPU, no rows
    assert rows == []
    rows = [{"index": 3}]
    train_tf.add_allocator_peaks(rows, [0])
    assert rows == [{"index": 3, "alloc_peak_gib": 0.5, "reserved_peak_gib": None}]


def test_xla_trains_with_poisson_noise(tmp_path):
    """stateless_poisson has no XLA kernel: the noise is drawn outside the compiled update."""
    steps = train("tf", tmp_path, "noise.kind=poisson", "runtime.xla=true")
    assert steps and all(np.isfinite(s["loss"]) for s in steps)
    assert read_json(tmp_path / "tf" / "summary.json")["status"] == "completed"


def test_xla_trains_on_the_eager_runs_noise(tmp_path):
    """Inside jit_compile stateless_normal draws other values (max abs difference 4.09 on
    CPU). With the noise drawn outside the compiled update, one epoch with and without XLA
    ends on the same weights up to rounding: compared in the exact mode (float64, EXACT_ATOL:
    helpers.py derives it). With the noise drawn inside the compiled step they differ by about
    4e-3: Adam moves each weight by about lr = 1e-3 a step, in a direction the noise decides."""
    exact = "runtime.precision=float64"
    train("tf", tmp_path / "eager", exact)
    train("tf", tmp_path / "xla", exact, "runtime.xla=true")
    for a, b in zip(
        weights(tmp_path / "eager", "tf"), weights(tmp_path / "xla", "tf"), strict=True
    ):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_allclose(b, a, rtol=0, atol=EXACT_ATOL)


def test_report_leaves_out_step_percentiles_measured_as_host_dispatch(tmp_path):
    """TensorFlow on a GPU times each step on the host while the device still works (one wait
    an epoch): its step percentiles are not device times, unlike PyTorch's CUDA events."""
    from denoisebench.core.records import atomic_write_json
    from denoisebench.report.runs import DISPATCH_REASON, run_record

    train("tf", tmp_path, epochs=1)
    host = run_record(tmp_path, "tf", "run", None, 3.0)
    assert host["step_time_p50_s"] is not None and host["step_time_reason"] is None
    summary = read_json(tmp_path / "tf" / "summary.json")
    atomic_write_json(tmp_path / "tf" / "summary.json", summary | {"step_clock": "host_dispatch"})
    dispatch = run_record(tmp_path, "tf", "run", None, 3.0)
    assert dispatch["step_time_p50_s"] is None and dispatch["step_time_p95_s"] is None
    assert dispatch["step_time_reason"] == DISPATCH_REASON
    assert dispatch["throughput_steady_img_s"] == host["throughput_steady_img_s"]


# --- speed modes on the GPU at hand --------------------------------------------------------


def test_tuned_mode_drops_xla_for_several_devices():
    one = mode_runtime("tuned", "gpu", capability=(9, 0), devices=1)
    four = mode_runtime("tuned", "gpu", capability=(9, 0), devices=4)
    assert one["xla"] is True and four["xla"] is False
    assert four["precision"] == one["precision"] == "bfloat16"


@pytest.mark.parametrize(
    ("capability", "precision", "tf32"),
    [((7, 0), "float32", False), ((7, 5), "float32", False), ((8, 0), "bfloat16", True)],
)
def test_tuned_mode_gates_bfloat16_and_tf32_on_compute_capability(capability, precision, tf32):
    cfg = load_config("default", mode="tuned", device_kind="gpu", capability=capability)
    assert cfg.runtime.precision == precision and cfg.runtime.tf32 is tf32
    assert cfg.runtime.cuda_graphs  # the rest of the mode stays


def test_unknown_capability_keeps_the_gpu_table():
    """A SLURM job submitted from a login node: the node's GPUs are checked by the trainer."""
    cfg = load_config("default", mode="tuned", device_kind="gpu", capability=None)
    assert cfg.runtime.precision == "bfloat16"


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["runtime.precision=bfloat16"], "runtime.precision=bfloat16"),
        (["runtime.tf32=true"], "runtime.tf32=true"),
    ],
)
def test_bfloat16_and_tf32_before_ampere_are_refused_by_key(sets, key):
    cfg = load_config("smoke", parse_overrides(sets))
    with pytest.raises(ConfigError, match=key) as e:
        check_device_support(cfg, "Tesla V100-SXM2-16GB", (7, 0))
    assert "7.0" in str(e.value)
    check_device_support(cfg, "NVIDIA A100-SXM4-80GB", (8, 0))  # accepted from 8.0


def test_a_mode_sub_table_with_an_unknown_name_is_refused(tmp_path, monkeypatch):
    from denoisebench.core import config

    (tmp_path / "odd.toml").write_text("[gpu]\nxla = true\n[gpu.before_hopper]\nxla = false\n")
    monkeypatch.setattr(config, "MODES_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"\[gpu.before_hopper\]"):
        mode_runtime("odd", "gpu")


# --- PyTorch -------------------------------------------------------------------------------


def test_ssim_loss_builds_its_window_once_and_matches_pytorch_msssim():
    """pytorch-msssim copies a host-built window to the device on every call unless given
    one: not allowed inside a CUDA graph capture. The loss builds it once and passes it in."""
    torch = pytest.importorskip("torch")
    msssim = pytest.importorskip("pytorch_msssim")
    from denoisebench.torch_backend.model import loss_fn, ssim_window

    loss = loss_fn("ssim")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 3, 32, 32, generator=gen), torch.rand(4, 3, 32, 32, generator=gen)
    first = loss(a, b)
    window = ssim_window(3, a.device)
    second = loss(b, a)
    assert ssim_window(3, a.device) is window
    expected = 1 - msssim.ssim(a, b, data_range=1.0, win_size=11, win_sigma=1.5)
    assert float(first) == pytest.approx(float(expected), abs=1e-7)
    assert float(second) == pytest.approx(float(first), abs=1e-6)  # SSIM is symmetric


@pytest.mark.gpu
def test_psnr_and_ssim_on_a_cuda_device_equal_the_hosts():
    """On a GPU the trainers score each epoch there (torch_backend.model.image_metrics)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_msssim")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from denoisebench.measure.quality import image_quality, summarize
    from denoisebench.torch_backend.model import image_metrics

    rng = np.random.default_rng(0)
    clean = rng.random((40, 64, 64, 3), dtype=np.float32)
    noisy = (clean + rng.normal(0, 0.2, clean.shape)).astype(np.float32)
    nchw = [torch.from_numpy(a).permute(0, 3, 1, 2).cuda() for a in (noisy, clean)]
    psnr, ssim, abs_sum = image_metrics(*nchw)
    assert psnr.device.type == ssim.device.type == "cuda"
    got = summarize(psnr.cpu().numpy(), ssim.cpu().numpy(), float(abs_sum), clean.size)
    assert got == pytest.approx(image_quality(clean, noisy), abs=2e-6, rel=1e-5)


def test_warmup_covers_the_cuda_graph_capture():
    cfg = load_config("smoke")
    cfg = dataclasses.replace(cfg, profiler=dataclasses.replace(cfg.profiler, warmup_steps=5))
    assert warmup_steps(cfg) == 5
    assert warmup_steps(cfg, capture_step=11) == 12  # DDP: 11 eager steps, then the capture
    assert warmup_steps(cfg, capture_step=3) == 5


def test_step_rows_flag_each_process_warmup_and_the_stats_follow_the_flag(tmp_path):
    """A resumed process warms up again (cuDNN, XLA, graph capture): its first steps are
    flagged, whatever their global step number."""
    steps = train("torch", tmp_path, "profiler.warmup_steps=3", epochs=2)
    per_epoch = len(steps) // 2
    assert [s["warmup"] for s in steps] == [True] * 3 + [False] * (2 * per_epoch - 3)
    cfg = load_config("smoke", parse_overrides(["train.epochs=3", "profiler.warmup_steps=3"]))
    importlib.import_module("denoisebench.torch_backend.train").train(cfg, tmp_path, resume=True)
    resumed = read_jsonl(tmp_path / "torch" / "steps.jsonl")[2 * per_epoch :]
    assert [s["warmup"] for s in resumed] == [True] * 3 + [False] * (per_epoch - 3)
    # step_stats follows the flags, not step numbers
    rows = [dict(s, step_time_s=9.0 if s["warmup"] else 1.0) for s in resumed]
    assert step_stats(rows, warmup_steps=0)["step_time_p95_s"] == 1.0


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_step_clock_is_recorded(tmp_path, framework):
    train(framework, tmp_path)
    assert read_json(tmp_path / framework / "summary.json")["step_clock"] == "host"


def test_ranks_wait_for_rank_0s_evaluation_outside_the_step_times(tmp_path):
    """Rank 0 evaluates and checkpoints between epochs; without a barrier the other rank's
    first all-reduce of the next epoch waits for it, inside a timed step."""
    proc = launch(
        "--profile", "smoke", "--framework", "torch", "--gpus", "2", "--epochs", "2",
        "--results", str(tmp_path), "--run-id", "ddp",
        env={"DENOISEBENCH_EVAL_DELAY_S": "4"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_jsonl(tmp_path / "ddp" / "torch" / "steps.jsonl")
    second = [s for s in steps if s["epoch"] == 1]
    assert {s["rank"] for s in second} == {0, 1}
    assert max(s["step_time_s"] for s in second) < 2.0, sorted(s["step_time_s"] for s in second)


# --- on a GPU ------------------------------------------------------------------------------


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
def test_cuda_graphs_capture_the_ssim_loss(tmp_path):
    _cuda()
    pytest.importorskip("pytorch_msssim")
    sets = ["train.device=gpu", "train.loss=ssim"]
    eager = train("torch", tmp_path / "eager", *sets, epochs=2)
    graphs = train("torch", tmp_path / "graphs", *sets, "runtime.cuda_graphs=true", epochs=2)
    np.testing.assert_allclose([s["loss"] for s in graphs], [s["loss"] for s in eager], rtol=1e-3)


@pytest.mark.gpu
def test_cuda_graphs_under_ddp_resume_like_the_uninterrupted_run(tmp_path):
    """DDP built on the capture stream after a restore: the broadcast and the restored
    weights are ordered (wait_stream both ways), so a resumed run equals a straight one."""
    torch = _cuda()
    gpus = str(min(2, torch.cuda.device_count()))
    common = ["--profile", "smoke", "--framework", "torch", "--gpus", gpus]
    common += ["--results", str(tmp_path), "--set", "runtime.cuda_graphs=true"]
    straight = launch(*common, "--epochs", "3", "--run-id", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    per_epoch = read_json(tmp_path / "straight" / "torch" / "summary.json")["final"]["steps"]
    fault = f"0:{per_epoch + 1}"  # rank 0 fails in the second epoch
    crashed = launch(
        *common, "--epochs", "3", "--run-id", "resumed", env={"DENOISEBENCH_FAULT": fault}
    )
    assert crashed.returncode != 0
    resumed = launch("--resume", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = [s["loss"] for s in read_jsonl(tmp_path / "straight" / "torch" / "steps.jsonl")]
    b = [s["loss"] for s in read_jsonl(tmp_path / "resumed" / "torch" / "steps.jsonl")]
    np.testing.assert_allclose(b, a, rtol=1e-3)


@pytest.mark.gpu
def test_the_trainer_accepts_the_tuned_mode_on_this_gpu(tmp_path):
    """The mode table the launcher picks for this GPU passes the trainer's own check."""
    torch = _cuda()
    capability = torch.cuda.get_device_capability()
    cfg = load_config("smoke", mode="tuned", device_kind="gpu", capability=capability)
    check_device_support(cfg, torch.cuda.get_device_name(), capability)
