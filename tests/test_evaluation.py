"""Evaluation on the device: each epoch moves no test image between the host and the device, and
one small transfer brings its figures back; the noisy inputs are scored once.

The transfers are counted where they happen in Python: PyTorch's host-to-device entries
(torch.from_numpy, as_tensor, tensor, and .to/.cuda of a CPU tensor to another device) and its
device-to-host exits (.cpu, .item, .tolist, .numpy); TensorFlow's conversions of host values
into eager tensors (constant_op.convert_to_eager_tensor, which tf.constant, tf.convert_to_tensor
and a Keras model called on a NumPy array go through) and every read of an eager tensor's values
on the host (_EagerTensorBase._numpy, behind .numpy(), np.asarray, float(); int32 tensors left
out: shapes and indices, which TensorFlow keeps in host memory on a GPU). Each is counted
with its number of elements, on the training thread, while an epoch's evaluation runs. Both
scorers are checked: the host's (a CPU's) and the device's (a GPU's, made to run here on the CPU).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from denoisebench.core.config import load_config
from denoisebench.core.records import read_jsonl
from denoisebench.trainer.rundata import U8_TO_UNIT
from denoisebench.trainer.session import Session

IMAGE = 64 * 64 * 3  # elements of one test image (the smoke profile's)


@dataclass
class Moved:
    """The transfers of one epoch's evaluation: the elements of each, by direction."""

    to_device: list[int] = field(default_factory=list)
    to_host: list[int] = field(default_factory=list)


class Transfers:
    """Counts host <-> device transfers (module docstring) while `counting()` is open."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, framework: str) -> None:
        self.moved: Moved | None = None
        if framework == "torch":
            self._torch(monkeypatch)
        else:
            self._tf(monkeypatch)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Moved]:
        self.moved = Moved()
        try:
            yield self.moved
        finally:
            self.moved = None

    def _note(self, direction: str, elements: int) -> None:
        if self.moved is not None and threading.current_thread() is threading.main_thread():
            getattr(self.moved, direction).append(int(elements))

    def _wrap(self, mp: Any, owner: Any, name: str, direction: str, size: Any) -> None:
        real = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            elements = size(*args, **kwargs)
            if elements is not None:
                self._note(direction, elements)
            return real(*args, **kwargs)

        mp.setattr(owner, name, counted)

    def _torch(self, mp: pytest.MonkeyPatch) -> None:
        import torch

        def host_value(value: Any, *_: Any, **__: Any) -> int | None:
            return None if isinstance(value, torch.Tensor) else int(np.size(value))

        def leaves_cpu(t: torch.Tensor, *args: Any, **kwargs: Any) -> int | None:
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, torch.Tensor):
                target = target.device
            moves = isinstance(target, str | torch.device) and torch.device(target).type != "cpu"
            return t.numel() if t.device.type == "cpu" and moves else None

        for name in ("from_numpy", "as_tensor", "tensor"):
            self._wrap(mp, torch, name, "to_device", host_value)
        self._wrap(mp, torch.Tensor, "to", "to_device", leaves_cpu)
        self._wrap(mp, torch.Tensor, "cuda", "to_device", lambda t, *a, **k: t.numel())
        for name in ("cpu", "item", "tolist", "numpy"):
            self._wrap(mp, torch.Tensor, name, "to_host", lambda t, *a, **k: t.numel())

    def _tf(self, mp: pytest.MonkeyPatch) -> None:
        import tensorflow as tf
        from tensorflow.python.framework import constant_op, ops

        def host_value(value: Any, *_: Any, **__: Any) -> int:
            return int(np.size(value))

        def data_values(t: Any) -> int | None:
            # int32 tensors are shapes and indices, which TensorFlow keeps in host memory on a
            # GPU too (tf.image.ssim reads its images' shapes so): reading them moves nothing
            return None if t.dtype == tf.int32 else int(np.prod(t.shape))

        self._wrap(mp, constant_op, "convert_to_eager_tensor", "to_device", host_value)
        self._wrap(mp, ops._EagerTensorBase, "_numpy", "to_host", data_values)


def trainer(framework: str) -> Any:
    return importlib.import_module(f"denoisebench.{framework}_backend.train")


def count_per_epoch(monkeypatch: pytest.MonkeyPatch, framework: str) -> list[Moved]:
    """Each epoch's evaluation's transfers, through Session.end_epoch's `evaluate`."""
    transfers = Transfers(monkeypatch, framework)
    per_epoch: list[Moved] = []
    real_end_epoch = Session.end_epoch

    def end_epoch(self: Session, epoch: int, result: Any, evaluate: Any, save: Any) -> None:
        def counted() -> Any:
            with transfers.counting() as moved:
                figures = evaluate()
            per_epoch.append(moved)
            return figures

        real_end_epoch(self, epoch, result, counted, save)

    monkeypatch.setattr(Session, "end_epoch", end_epoch)
    return per_epoch


@pytest.mark.parametrize("on_device", [False, True], ids=["host-scores", "device-scores"])
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_evaluation_moves_no_test_image_per_epoch(tmp_path, monkeypatch, framework, on_device):
    """12 test images in batches of 5 (3 batches), 2 epochs: every epoch's evaluation brings
    its figures back in one transfer of at most 4 numbers, and no value larger than that goes
    either way (the per-batch version moved every batch both ways: 2 x 5 x 12,288 elements in,
    and the outputs and scores out)."""
    if framework == "torch" and on_device:
        pytest.importorskip("pytorch_msssim")
    module = trainer(framework)
    if on_device:
        monkeypatch.setattr(module, "scores_on_device", lambda *_: True)
    per_epoch = count_per_epoch(monkeypatch, framework)
    cfg = load_config("smoke", {"train": {"epochs": "2", "eval_batch_size": "5"}})
    module.train(cfg, tmp_path)
    assert len(per_epoch) == 2
    for epoch, moved in enumerate(per_epoch):
        assert max(moved.to_device, default=0) <= 4, (epoch, moved)  # nothing image-sized in
        assert len(moved.to_host) == 1 and moved.to_host[0] <= 4, (epoch, moved)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_the_noisy_inputs_are_scored_once_by_the_device_scorer(tmp_path, monkeypatch, framework):
    """The noisy baseline of every epoch line: scored once for the run, when the test set goes
    to the device, by the device's image_metrics when the epochs are (never by the host's
    image_quality, which every process's data loading ran before), the same in every epoch."""
    if framework == "torch":
        pytest.importorskip("pytorch_msssim")
    module = trainer(framework)
    monkeypatch.setattr(module, "scores_on_device", lambda *_: True)
    evaluation = importlib.import_module(f"denoisebench.{framework}_backend.evaluation")
    scored, host_scored = [], []
    real = evaluation.TestSet._noisy_quality
    monkeypatch.setattr(
        evaluation.TestSet,
        "_noisy_quality",
        lambda self, data: scored.append(1) or real(self, data),
    )
    monkeypatch.setattr(evaluation, "image_quality", lambda *a: host_scored.append(a))
    cfg = load_config("smoke", {"train": {"epochs": "2", "eval_batch_size": "5"}})
    module.train(cfg, tmp_path)
    assert scored == [1] and host_scored == []
    epochs = read_jsonl(tmp_path / framework / "epochs.jsonl")
    assert len(epochs) == 2 and len({(e["noisy_psnr_db"], e["noisy_ssim"]) for e in epochs}) == 1


def test_the_device_table_gives_the_hosts_clean_images_bit_for_bit():
    """U8_TO_UNIT[u8] is rundata's u8.astype(float32) / 255 for every uint8 value, and indexed
    on each framework's device it stays so (a division there could round otherwise)."""
    import tensorflow as tf
    import torch

    values = np.arange(256, dtype=np.uint8)
    host = values.astype(np.float32) / 255.0
    assert U8_TO_UNIT.dtype == np.float32 and np.array_equal(
        U8_TO_UNIT.view(np.uint32), host.view(np.uint32)
    )
    on_torch = torch.from_numpy(U8_TO_UNIT)[torch.from_numpy(values).long()].numpy()
    on_tf = tf.gather(tf.constant(U8_TO_UNIT), tf.cast(tf.constant(values), tf.int32)).numpy()
    for got in (on_torch, on_tf):
        assert np.array_equal(got.view(np.uint32), host.view(np.uint32))
