"""The plain TensorFlow training loop a user would write by hand, timed: the benchmark's baseline.

    python -m denoisebench.bench.handwritten_tf [--profile default] [--batch-size 64]
        [--steps 60] [--warmup 10] [--set SECTION.KEY=VALUE]

Prints one JSON line: img/s over the steady window, the data-wait fraction, the losses.
`python -m denoisebench.bench` runs it beside the suite's trainer (tf_backend/train.py), with the same
model, optimizer, loss, data, noise and batch. It is deliberately the shortest idiomatic loop:
a tf.data pipeline (shuffle, batch, prefetch) feeding one `tf.function` step with a
GradientTape, no distribution strategy, no per-step logging and no per-step `float(loss)`.
The only lines beyond that pin the speed settings the suite pins (config.RuntimeConfig), so
the two runs differ in their loops, not in precision or kernel choice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from denoisebench.bench.suite import hand_figures, handwritten_main
from denoisebench.core.config import Config
from denoisebench.data.images import load_images, make_split
from denoisebench.tf_backend.model import adam, add_noise, build_model, loss_fn, pick_device


def pin_runtime(cfg: Config) -> None:
    """The config's speed settings, set here as a user would; TensorFlow's defaults differ
    (TF32 is on). Written apart from the suite's trainer on purpose: this loop is what it is
    measured against.

    Must run before any other TensorFlow work: thread counts are fixed once the runtime is up.
    """
    rt = cfg.runtime
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(rt.tf32)
    autotune = rt.cudnn_autotune and not cfg.train.deterministic
    os.environ["TF_CUDNN_USE_AUTOTUNE"] = "1" if autotune else "0"
    tf.config.threading.set_intra_op_parallelism_threads(rt.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(rt.inter_op_threads)
    pick_device(cfg.train.device)  # GPU memory on demand, not the whole device


def run(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    """Train `warmup` + `steps` steps; time the last `steps` (img/s, data-wait fraction)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    pin_runtime(cfg)
    if cfg.train.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    images = load_images(cfg.data, cfg.model.image_size, seed=cfg.train.seed).images
    train = images[make_split(len(images), cfg.data).train]  # uint8 NHWC

    keras.utils.set_random_seed(cfg.train.seed)  # the suite's initial weights (native init)
    b = cfg.train.batch_size
    dataset = (
        tf.data.Dataset.from_tensor_slices(train)
        .shuffle(len(train))
        .batch(b, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    model = build_model(cfg.model, precision=cfg.runtime.precision)
    optimizer = adam(cfg.train, cfg.train.lr, cfg.runtime.precision)
    optimizer.build(model.trainable_variables)  # its slots exist before the step is traced
    criterion = loss_fn(cfg.train.loss)

    @tf.function(jit_compile=cfg.runtime.xla)
    def train_step(batch: tf.Tensor) -> tf.Tensor:
        clean = tf.cast(batch, tf.float32) / 255.0
        # stateless noise seeded by (seed, step): new noise every step, nothing fed from Python
        seed = tf.stack([tf.constant(cfg.train.seed, tf.int64), tf.identity(optimizer.iterations)])
        noisy = add_noise(clean, cfg.noise, seed)
        with tf.GradientTape() as tape:
            loss = criterion(clean, model(noisy, training=True))
            scaled = optimizer.scale_loss(loss)  # float16: loss scaling; else the loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def batches() -> Iterator[tf.Tensor]:
        # epoch after epoch, as `for epoch ...: for x in dataset` would: each epoch's new
        # iterator (and reshuffle) is paid inside the timed window, as it is in a real run
        while True:
            yield from dataset

    it = batches()
    losses: list[tf.Tensor] = []
    data_wait_s = 0.0
    t_start = 0.0
    loss = None
    for i in range(warmup + steps):
        if i == warmup:  # steady state starts: fetching the loss waits for the warm-up steps
            if loss is not None:
                float(loss)
            t_start, data_wait_s = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        batch = next(it)
        data_wait_s += time.perf_counter() - t0
        loss = train_step(batch)
        losses.append(loss)  # no float(): that would wait for the device every step
    float(loss)  # the last step has finished once its loss is on the host
    window_s = time.perf_counter() - t_start
    gpus = tf.config.get_visible_devices("GPU")
    gpu_name = (
        tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
    )
    return hand_figures(
        "tf",
        steps,
        warmup,
        b,
        window_s,
        data_wait_s,
        [float(v) for v in losses],
        device="/GPU:0" if gpus else "/CPU:0",
        gpu_name=gpu_name,
        version=tf.__version__,
        threads=tf.config.threading.get_intra_op_parallelism_threads(),
    )


def main(argv: list[str] | None = None) -> None:
    handwritten_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
