"""The test split on the device for the whole run, and each epoch's test figures reduced there:
the TensorFlow side of torch_backend/evaluation.py, the same design and the same figures.

`TestSet` (the chief only: it alone evaluates) puts on its first device once: the clean test
images as uint8 NHWC, as the training set is, the noisy ones as float32, and rundata.U8_TO_UNIT,
the 256 float32 values the host's clean test set is made of (indexed with tf.gather, so the
clean images are the host's bit for bit on any device). Each epoch runs the model eagerly on
batches sliced on the device, as before on host arrays. With `metrics` (GPUs: image_metrics,
tf.image.ssim, run as a tf.function: eager, its four shape checks each read a value on the host)
every batch's loss times its size, per-image PSNR and SSIM and |out - clean| are summed on the
device in float64, and one `numpy()` brings the four sums back. Without (a CPU,
where the host's threaded NumPy scores are five times faster than tf.image.ssim) the outputs
are joined on the device and measure.quality.image_quality reads them through a memoryview,
which on a CPU is the tensor's own memory (no copy); the sums are still the one transfer. The
noisy inputs' scores are computed once, when the test set is made. The outputs reach the host
once, at the end (`sample_outputs`); a checkpoint holds none.

The figures equal the per-batch host version's: the test loss and the MAE sum are the same
float64 arithmetic in the same order, and the PSNR and SSIM means differ only in the order of a
float64 sum (within 2 n u64 max|x|, as torch_backend/evaluation.py states).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from denoisebench.core.config import Config
from denoisebench.measure.quality import epoch_scores, from_sums, image_quality
from denoisebench.tf_backend.model import input_dtype
from denoisebench.trainer.rundata import SAMPLE_IMAGES, U8_TO_UNIT, RunData

Metrics = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
"""model.image_metrics: per-image PSNR and SSIM and the sum of |out - clean|, on the device."""


class TestSet:
    """The test split on `device` from start to end; its scores each epoch (module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(self, data: RunData, cfg: Config, device: str, metrics: Metrics | None) -> None:
        self.cfg, self.device, self.metrics = cfg, device, metrics
        # a graph: eager tf.image.ssim reads four shape checks on the host per call (a wait for
        # the device each); traced, they stay checks on the device
        self._sums = tf.function(self._metric_sums) if metrics is not None else None
        self.n = len(data.test_u8)
        with tf.device(device):
            self.clean_u8 = tf.identity(data.test_u8)
            self.noisy = tf.identity(data.test_noisy)
            self.unit = tf.identity(U8_TO_UNIT)
        self.host_clean = data.test_clean
        self.noisy_quality = self._noisy_quality(data)

    def batches(self) -> Iterator[tuple[int, int]]:
        """[start, end) of each evaluation batch (train.eval_batch_size)."""
        size = self.cfg.train.eval_batch_size
        for i in range(0, self.n, size):
            yield i, min(i + size, self.n)

    def clean(self, i: int, j: int) -> tf.Tensor:
        """Clean images [i, j): float32 NHWC, the host's values."""
        return tf.gather(self.unit, tf.cast(self.clean_u8[i:j], tf.int32))

    def _forward(self, model: Any, i: int, j: int) -> tf.Tensor:
        # a float64 model (runtime.precision=float64) gets float64 images; its output is cast
        # to float32, the dtype of the recorded loss and outputs
        noisy = tf.cast(self.noisy[i:j], input_dtype(self.cfg.runtime.precision))
        return tf.cast(model(noisy, training=False), tf.float32)

    def _metric_sums(self, out: tf.Tensor, clean: tf.Tensor) -> tf.Tensor:
        """[PSNR sum, SSIM sum, |out - clean| sum] of a batch, float64 on the device."""
        assert self.metrics is not None
        return tf.stack([tf.reduce_sum(tf.cast(t, tf.float64)) for t in self.metrics(out, clean)])

    def scores(self, model: Any, criterion: Any) -> dict[str, float]:
        """The epoch's test figures (measure.quality.epoch_scores) of `model`. One transfer from
        the device: the sums, as one array."""
        with tf.device(self.device):
            loss_sum = tf.constant(0.0, tf.float64)
            metric_sums = tf.zeros([3], tf.float64)
            outputs = []
            for i, j in self.batches():
                clean = self.clean(i, j)
                out = self._forward(model, i, j)
                loss_sum += tf.cast(criterion(clean, out), tf.float64) * float(j - i)
                if self._sums is not None:
                    metric_sums += self._sums(out, clean)
                else:
                    outputs.append(out)
            sums = tf.concat([[loss_sum], metric_sums], axis=0).numpy().tolist()
            loss, psnr_sum, ssim_sum, abs_sum = sums
            if self._sums is not None:
                size = self.n * int(np.prod(self.noisy.shape[1:]))
                quality = from_sums(psnr_sum, ssim_sum, abs_sum, self.n, size)
            else:  # on a CPU the memoryview is the tensor's own memory
                joined = tf.concat(outputs, axis=0)
                quality = image_quality(self.host_clean, np.asarray(memoryview(joined)))
        return epoch_scores(loss / self.n, quality, self.noisy_quality)

    def _noisy_quality(self, data: RunData) -> dict[str, float]:
        """MAE, PSNR and SSIM of the noisy inputs, once, by the epochs' scorer."""
        if self._sums is None:
            return image_quality(data.test_clean, data.test_noisy)
        with tf.device(self.device):
            sums = tf.zeros([3], tf.float64)
            for i, j in self.batches():
                sums += self._sums(self.noisy[i:j], self.clean(i, j))
            psnr_sum, ssim_sum, abs_sum = sums.numpy().tolist()
        return from_sums(psnr_sum, ssim_sum, abs_sum, self.n, int(np.prod(self.noisy.shape)))

    def sample_outputs(self, model: Any) -> np.ndarray:
        """The model's outputs (NHWC float32, on the host) for the report's test samples."""
        with tf.device(self.device):
            return self._forward(model, 0, min(SAMPLE_IMAGES, self.n)).numpy()
