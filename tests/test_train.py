"""Short real training runs: the loss goes down, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import importlib

import pytest

from denoisebench.core.config import load_config
from denoisebench.core.records import read_json, read_jsonl
from denoisebench.trainer import session

# what a resumed run must reproduce exactly; times, memory and CPU use vary from run to run
DETERMINISTIC = {
    "framework",
    "epoch",
    "step",
    "steps",
    "rank",
    "replicas",
    "batch_size",
    "loss",
    "train_loss",
    "test_loss",
    "test_mae",
    "test_psnr_db",
    "test_ssim",
    "noisy_psnr_db",
    "noisy_ssim",
    "model_flops_per_image",
}


def trainer(framework: str):
    return importlib.import_module(f"denoisebench.{framework}_backend.train")


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k in DETERMINISTIC} for r in records]


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_scores_computed_on_the_device_equal_the_hosts(tmp_path, framework, monkeypatch):
    """On a GPU the trainers compute each epoch's PSNR and SSIM there (image_metrics); made to
    do so here on the CPU, the same training records the host's figures to float32 rounding."""
    if framework == "torch":
        pytest.importorskip("pytorch_msssim")
    cfg = load_config("smoke", {"train": {"epochs": "1"}})
    module = trainer(framework)
    module.train(cfg, tmp_path / "host")
    monkeypatch.setattr(module, "scores_on_device", lambda *_: True)
    calls = []
    metrics = module.image_metrics
    monkeypatch.setattr(module, "image_metrics", lambda *a: calls.append(1) or metrics(*a))
    module.train(cfg, tmp_path / "device")
    assert calls  # the device's figures were the ones recorded
    host, device = (
        read_jsonl(tmp_path / r / framework / "epochs.jsonl")[0] for r in ("host", "device")
    )
    assert device["test_loss"] == host["test_loss"]  # the same outputs were scored
    assert device["test_psnr_db"] == pytest.approx(host["test_psnr_db"], abs=1e-4)
    # float32 on the device: E[x^2] - E[x]^2 loses digits on the flat outputs of a short run
    assert device["test_ssim"] == pytest.approx(host["test_ssim"], abs=1e-5)
    assert device["test_mae"] == pytest.approx(host["test_mae"], rel=1e-5)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_training_lowers_the_loss(tmp_path, framework):
    cfg = load_config("smoke", {"train": {"epochs": "3", "lr": "0.005"}})
    summary = trainer(framework).train(cfg, tmp_path)

    steps = read_jsonl(tmp_path / framework / "steps.jsonl")
    epochs = read_jsonl(tmp_path / framework / "epochs.jsonl")
    assert len(epochs) == 3
    assert len(steps) == 3 * epochs[0]["steps"]
    first = sum(s["loss"] for s in steps[:5]) / 5
    last = sum(s["loss"] for s in steps[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert epochs[-1]["test_loss"] < epochs[0]["test_loss"]
    assert epochs[-1]["test_psnr_db"] > epochs[0]["test_psnr_db"]
    assert summary["status"] == "completed"
    assert read_json(tmp_path / framework / "summary.json")["final"] == epochs[-1]


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_resume_after_a_crash_equals_uninterrupted(tmp_path, framework, monkeypatch):
    cfg = load_config("smoke", {"train": {"epochs": "3"}})
    module = trainer(framework)
    module.train(cfg, tmp_path / "straight")

    # Crash in the middle of the second epoch: its steps ran, its record and checkpoint did not.
    # (Both trainers end an epoch through trainer.session.Session.end_epoch, which builds the record.)
    real_epoch_record = session.epoch_record

    def crash_in_epoch_1(framework_, epoch, *args, **kwargs):
        if epoch == 1:
            raise RuntimeError("simulated node failure")
        return real_epoch_record(framework_, epoch, *args, **kwargs)

    monkeypatch.setattr(session, "epoch_record", crash_in_epoch_1)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        module.train(cfg, tmp_path / "resumed")
    summary = read_json(tmp_path / "resumed" / framework / "summary.json")
    assert summary["status"] == "failed"
    assert "simulated node failure" in summary["error"]
    assert summary["epochs_completed"] == 1
    assert len(read_jsonl(tmp_path / "resumed" / framework / "epochs.jsonl")) == 1

    monkeypatch.setattr(session, "epoch_record", real_epoch_record)
    module.train(cfg, tmp_path / "resumed", resume=True)

    for name in ("steps.jsonl", "epochs.jsonl"):
        straight = without_timing(read_jsonl(tmp_path / "straight" / framework / name))
        resumed = without_timing(read_jsonl(tmp_path / "resumed" / framework / name))
        assert resumed == straight, name
    assert read_json(tmp_path / "resumed" / framework / "summary.json")["status"] == "completed"


def test_both_frameworks_see_the_same_split_and_test_set(tmp_path):
    """The second framework checks the split the first one wrote."""
    cfg = load_config("smoke", {"train": {"epochs": "1"}})
    trainer("torch").train(cfg, tmp_path)
    split = read_json(tmp_path / "split.json")
    trainer("tf").train(cfg, tmp_path)
    assert read_json(tmp_path / "split.json") == split
    torch_final = read_json(tmp_path / "torch" / "summary.json")["final"]
    tf_final = read_json(tmp_path / "tf" / "summary.json")["final"]
    # the noisy test inputs are identical, so their quality is too
    assert torch_final["noisy_psnr_db"] == tf_final["noisy_psnr_db"]
    assert torch_final["noisy_ssim"] == tf_final["noisy_ssim"]


def test_a_different_split_is_refused(tmp_path):
    from denoisebench.trainer.rundata import SplitMismatchError

    trainer("torch").train(load_config("smoke", {"train": {"epochs": "1"}}), tmp_path)
    other = load_config("smoke", {"train": {"epochs": "1"}, "data": {"split_seed": "7"}})
    with pytest.raises(SplitMismatchError, match=r"split\.json"):
        trainer("torch").train(other, tmp_path)
