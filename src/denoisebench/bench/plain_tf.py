"""A plain TensorFlow / Keras script for the denoising job, written apart from the suite (it
imports nothing of denoisebench and is run as a file, not as a module of the package):

    python src/denoisebench/bench/plain_tf.py DATA [--epochs 3] [--batch-size 128]
        [--test-images 200] [--seed 0] [--weights denoiser.keras]

The job: the 64x64 RGB JPEGs in DATA's class folders (DATA/<class>/*.jpg), a seeded split
into train and --test-images test images, Gaussian noise of sigma 0.2 clipped to [0, 1], a
convolutional autoencoder (three stride-2 3x3 convolutions of 32, 64 and 128 channels with
ReLU, three stride-2 transposed convolutions back to 3 channels, sigmoid out; 'same' padding),
Adam (lr 1e-3, betas 0.9/0.999, eps 1e-7) on the mean absolute error, --epochs passes of
shuffled full batches with `model.fit`; after each epoch the test loss, PSNR and SSIM on one
fixed noisy copy of the test images, one line; at the end the model saved to --weights.
`bench whole-run` times it against the suite's whole run of the same job (whole_run.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

SIGMA = 0.2
EVAL_BATCH = 256


def load_images(folder: Path) -> np.ndarray:
    """Every DATA/<class>/*.jpg, sorted by path, as uint8 (N, 64, 64, 3)."""
    files = sorted(str(f) for f in folder.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"{folder}: no <class>/*.jpg files")

    def decode(file: tf.Tensor) -> tf.Tensor:
        # the accurate integer DCT: the same pixels as libjpeg's default (Pillow)
        raw = tf.io.read_file(file)
        return tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")

    ds = tf.data.Dataset.from_tensor_slices(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def build_model() -> keras.Sequential:
    """64x64 -> 8x8 -> 64x64 ('same' padding: stride 2 halves, and doubles back, exactly)."""
    down, up = keras.layers.Conv2D, keras.layers.Conv2DTranspose
    layers: list[keras.layers.Layer] = [keras.Input((64, 64, 3))]
    layers += [down(f, 3, strides=2, padding="same", activation="relu") for f in (32, 64, 128)]
    layers += [up(f, 3, strides=2, padding="same", activation="relu") for f in (64, 32)]
    layers.append(up(3, 3, strides=2, padding="same", activation="sigmoid"))
    return keras.Sequential(layers)


def add_noise(clean: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(clean + tf.random.normal(tf.shape(clean), stddev=SIGMA), 0.0, 1.0)


class TestScores(keras.callbacks.Callback):
    """After each epoch: test loss (MAE), mean PSNR and SSIM, one line."""

    def __init__(self, noisy: np.ndarray, clean: np.ndarray, epochs: int) -> None:
        super().__init__()
        self.test = tf.data.Dataset.from_tensor_slices((noisy, clean)).batch(EVAL_BATCH)
        self.n, self.epochs, self.t0 = len(clean), epochs, time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        sums = np.zeros(3)
        for noisy, clean in self.test:
            sums += [float(x) for x in self.score(noisy, clean)]
        mae, psnr, ssim = sums[0] / (self.n * 64 * 64 * 3), sums[1] / self.n, sums[2] / self.n
        print(
            f"epoch {epoch + 1}/{self.epochs}: train loss {logs['loss']:.4f}, test loss "
            f"{mae:.4f}, PSNR {psnr:.2f} dB, SSIM {ssim:.4f} ({time.perf_counter() - self.t0:.1f} s)",
            flush=True,
        )

    @tf.function(reduce_retracing=True)
    def score(self, noisy: tf.Tensor, clean: tf.Tensor) -> tuple[tf.Tensor, ...]:
        out = self.model(noisy, training=False)
        return (
            tf.reduce_sum(tf.abs(out - clean)),
            tf.reduce_sum(tf.image.psnr(out, clean, max_val=1.0)),
            tf.reduce_sum(tf.image.ssim(out, clean, max_val=1.0)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder of class folders of 64x64 JPEGs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=Path("denoiser.keras"))
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_tensor_float_32_execution(False)  # float32, not TF32
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"

    images = load_images(args.data)
    order = np.random.default_rng(args.seed).permutation(len(images))
    train = images[order[args.test_images :]]
    test_clean = images[order[: args.test_images]].astype(np.float32) / 255
    test_noisy = add_noise(test_clean).numpy()  # one fixed noisy copy, scored every epoch
    print(f"tf {tf.__version__} on {device}: {len(train)} train / {len(test_clean)} test")

    batches = (
        tf.data.Dataset.from_tensor_slices(train)
        .shuffle(len(train), seed=args.seed)
        .batch(args.batch_size, drop_remainder=True)  # full batches only
        .map(lambda x: tf.cast(x, tf.float32) / 255, num_parallel_calls=tf.data.AUTOTUNE)
        .map(lambda x: (add_noise(x), x), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    model = build_model()
    adam = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    # XLA off: Keras' "auto" would compile the step with it wherever there is a GPU
    model.compile(optimizer=adam, loss="mae", jit_compile=False)
    scores = TestScores(test_noisy, test_clean, args.epochs)
    # shuffle=False: the dataset shuffles itself (Keras would ignore the flag and warn)
    model.fit(batches, epochs=args.epochs, verbose=0, callbacks=[scores], shuffle=False)
    model.save(args.weights)
    print(f"weights: {args.weights}")


if __name__ == "__main__":
    main()
