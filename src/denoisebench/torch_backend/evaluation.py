"""The test split on the device for the whole run, and each epoch's test figures reduced there.

`TestSet` (rank 0 only: it alone evaluates) puts on the training device once: the clean test
images as uint8 NHWC, as the training set is, the noisy ones as float32 (the noise is no uint8
value), and rundata.U8_TO_UNIT, the 256 float32 values the host's clean test set is made of, so
that the clean images the loss and the scores see on any device are the host's, bit for bit (a
division on the device need not round as NumPy's does). Each epoch, with `metrics` (the GPU's
image_metrics), every batch's loss times its size, per-image PSNR and SSIM and |out - clean|
are summed on the device in float64 and one transfer (`tolist`) brings the four sums back: no
test image leaves the device and none comes to it. Without `metrics` (a CPU: the host's threaded
NumPy scores are as fast there) the outputs go into one float32 buffer whose NumPy view,
taken once, measure.quality.image_quality reads in place; the loss sum is still the one
transfer. The noisy inputs' own scores (the 'noisy' baseline of every epoch) are computed once,
when the test set is made, by the same scorer. The outputs reach the host once, at the end: the
report's samples (`sample_outputs`); a checkpoint holds none (--resume needs none).

The figures are the ones the per-batch host transfers gave: the same outputs are scored, the
test loss is the same float64 arithmetic in the same order (equal), the MAE's |out - clean|
sums likewise, and the means of PSNR and SSIM differ only in the order of a float64 sum of
float32 per-image values, each sum within (n - 1) u64 sum|x| of the exact one (n images, u64 =
2**-53): the means within 2 n u64 max|x|, 2e-11 dB for 2,000 images at 40 dB. On a GPU the noisy baseline, scored by the host before, is now the device's:
within the float32 tolerance tests/test_train.py holds device and host scores to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from denoisebench.core.config import Config
from denoisebench.measure.quality import epoch_scores, from_sums, image_quality
from denoisebench.torch_backend.model import autocast, memory_format, param_dtype
from denoisebench.trainer.rundata import SAMPLE_IMAGES, U8_TO_UNIT, RunData

Metrics = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""model.image_metrics: per-image PSNR and SSIM and the sum of |out - clean|, on the device."""


class TestSet:
    """The test split on `device` from start to end; its scores each epoch (module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(
        self, data: RunData, cfg: Config, device: torch.device, metrics: Metrics | None
    ) -> None:
        self.cfg, self.device, self.metrics = cfg, device, metrics
        self.n = len(data.test_u8)
        self.clean_u8 = torch.from_numpy(data.test_u8).to(device)
        self.noisy = torch.from_numpy(data.test_noisy).to(device)  # on a CPU: the same memory
        self.unit = torch.from_numpy(U8_TO_UNIT).to(device)
        self.host_clean = data.test_clean
        self.outputs: torch.Tensor | None = None
        self.host_outputs: np.ndarray | None = None
        if metrics is None:  # scored by the host: one buffer, on a CPU read in place
            self.outputs = torch.empty(self.noisy.shape, dtype=torch.float32, device=device)
            self.host_outputs = self.outputs.numpy() if device.type == "cpu" else None
        self.noisy_quality = self._noisy_quality(data)

    def batches(self) -> Iterator[tuple[int, int]]:
        """[start, end) of each evaluation batch (train.eval_batch_size)."""
        size = self.cfg.train.eval_batch_size
        for i in range(0, self.n, size):
            yield i, min(i + size, self.n)

    def clean(self, i: int, j: int) -> torch.Tensor:
        """Clean images [i, j): float32 NCHW in the run's memory format, the host's values."""
        nhwc = self.unit[self.clean_u8[i:j].long()]
        return nhwc.permute(0, 3, 1, 2).contiguous(memory_format=self._format())

    def inputs(self, i: int, j: int) -> torch.Tensor:
        """Noisy images [i, j) as the model takes them: NCHW, the run's dtype and format."""
        x = self.noisy[i:j].to(param_dtype(self.cfg.runtime.precision)).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=self._format())

    def _format(self) -> torch.memory_format:
        return memory_format(self.cfg.runtime.channels_last)

    def _forward(self, model: torch.nn.Module, i: int, j: int) -> torch.Tensor:
        with autocast(self.device, self.cfg.runtime.precision):
            return model(self.inputs(i, j)).float()

    def _metric_sums(self, out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """(PSNR sum, SSIM sum, |out - clean| sum) of a batch, float64 on the device."""
        assert self.metrics is not None
        psnr, ssim, abs_sum = self.metrics(out, clean)
        return torch.stack([psnr.double().sum(), ssim.double().sum(), abs_sum.double()])

    @torch.no_grad()
    def scores(self, model: torch.nn.Module, criterion: Any) -> dict[str, float]:
        """The epoch's test figures (measure.quality.epoch_scores) of `model` (left in train
        mode). One transfer from the device: the sums, as one list."""
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for i, j in self.batches():
            clean = self.clean(i, j)
            out = self._forward(model, i, j)
            sums[0] += criterion(out, clean).double() * (j - i)
            if self.metrics is not None:
                sums[1:] += self._metric_sums(out, clean)
            else:
                assert self.outputs is not None
                self.outputs[i:j] = out.permute(0, 2, 3, 1)
        model.train()
        loss_sum, psnr_sum, ssim_sum, abs_sum = sums.tolist()
        if self.metrics is not None:
            quality = from_sums(psnr_sum, ssim_sum, abs_sum, self.n, self.noisy.numel())
        else:
            quality = image_quality(self.host_clean, self._host_outputs())
        return epoch_scores(loss_sum / self.n, quality, self.noisy_quality)

    def _host_outputs(self) -> np.ndarray:
        """The outputs for the host's scores: on a CPU the buffer itself; on a GPU without
        pytorch-msssim one copy of it (the one case that copies outputs every epoch)."""
        if self.host_outputs is not None:
            return self.host_outputs
        assert self.outputs is not None
        return self.outputs.cpu().numpy()

    @torch.no_grad()
    def _noisy_quality(self, data: RunData) -> dict[str, float]:
        """MAE, PSNR and SSIM of the noisy inputs, once, by the epochs' scorer."""
        if self.metrics is None:
            return image_quality(data.test_clean, data.test_noisy)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for i, j in self.batches():
            sums += self._metric_sums(self.noisy[i:j].permute(0, 3, 1, 2), self.clean(i, j))
        psnr_sum, ssim_sum, abs_sum = sums.tolist()
        return from_sums(psnr_sum, ssim_sum, abs_sum, self.n, self.noisy.numel())

    @torch.no_grad()
    def sample_outputs(self, model: torch.nn.Module) -> np.ndarray:
        """The model's outputs (NHWC float32, on the host) for the report's test samples."""
        model.eval()
        return self._forward(model, 0, min(SAMPLE_IMAGES, self.n)).permute(0, 2, 3, 1).cpu().numpy()
