"""The tightest TensorFlow training loop for this model: the benchmark's strict baseline.

    python -m denoisebench.bench.tight_tf --images train_u8.npy [--batch-size 64] [--steps 60]
        [--warmup 10] [--widths 32,64,128] [--kernel 3] [--lr 1e-3] [--beta1 0.9]
        [--beta2 0.999] [--eps 1e-7] [--sigma 0.2] [--loss mae] [--device cpu|gpu]
        [--precision float32|bfloat16|float16] [--xla] [--tf32] [--no-autotune]
        [--threads N] [--inter-threads N] [--seed 0]

The fastest code a TensorFlow user would plausibly write for this experiment, written without any
of the suite's code (no model, helpers or settings from denoisebench; only the command line
the two tight loops share, tight_args.py), so that it can judge the
suite's trainer: a Keras Sequential of Conv2D / Conv2DTranspose with 'same' padding, every
training image converted to float and placed on the device once, one `tf.function` step that
gathers its batch from those images by index, draws Gaussian noise, and applies Adam; one
shuffled order per epoch made on the device; the losses fetched once at the end. The images
come as data (a uint8 NHWC .npy file, written by the benchmark from the suite's training
split); the settings come as flags (the benchmark passes the run's).

Prints one JSON line: img/s over `--steps` steps after `--warmup` steps (clock read after the
last loss reached the host), and the losses.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from denoisebench.bench.tight_args import parse, tight_parser


def main(argv: list[str] | None = None) -> None:
    p = tight_parser(__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    p.add_argument("--xla", action="store_true", help="jit_compile the step")
    p.add_argument("--no-autotune", action="store_true", help="TF_CUDNN_USE_AUTOTUNE=0")
    p.add_argument("--inter-threads", type=int, default=0, help="inter-op threads (0: default)")
    args = parse(p, argv)
    if args.no_autotune:
        os.environ["TF_CUDNN_USE_AUTOTUNE"] = "0"

    import keras
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(args.tf32)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    device = "/GPU:0" if gpus and args.device == "gpu" else "/CPU:0"
    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{args.precision}")
    keras.utils.set_random_seed(args.seed)

    widths = [int(w) for w in args.widths.split(",")]
    k = args.kernel
    with tf.device(device):
        images = tf.constant(np.load(args.images).astype(np.float32) / 255.0)
        n, b = int(images.shape[0]), args.batch_size
        if b > n:
            p.error(f"--batch-size {b} is larger than the {n} images in {args.images}")
        layers: list[keras.layers.Layer] = [keras.Input(images.shape[1:])]
        for w in widths:
            layers.append(keras.layers.Conv2D(w, k, strides=2, padding="same", activation="relu"))
        for w in [*widths[-2::-1], int(images.shape[-1])]:
            last = w == int(images.shape[-1])
            layers.append(
                keras.layers.Conv2DTranspose(
                    w, k, strides=2, padding="same",
                    activation="sigmoid" if last else "relu",
                    dtype="float32" if last else None,  # a float32 output under mixed precision
                )
            )  # fmt: skip
        model = keras.Sequential(layers)
        opt = keras.optimizers.Adam(args.lr, beta_1=args.beta1, beta_2=args.beta2, epsilon=args.eps)
        if args.precision == "float16":
            opt = keras.mixed_precision.LossScaleOptimizer(opt)
        loss_fn = keras.losses.MeanAbsoluteError() if args.loss == "mae" else keras.losses.MSE

        @tf.function(jit_compile=args.xla)
        def step(idx: tf.Tensor) -> tf.Tensor:
            clean = tf.gather(images, idx)
            noise = tf.random.normal(tf.shape(clean), stddev=args.sigma)
            noisy = tf.clip_by_value(clean + noise, 0.0, 1.0)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(clean, model(noisy, training=True)))
                scaled = opt.scale_loss(loss) if args.precision == "float16" else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per_epoch = n // b
        losses = []
        order = tf.random.shuffle(tf.range(n))
        t_start = 0.0
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                if losses:
                    losses[-1].numpy()  # the warm-up steps have finished
                t_start = time.perf_counter()
            j = i % per_epoch
            if j == 0 and i > 0:
                order = tf.random.shuffle(tf.range(n))
            losses.append(step(order[j * b : (j + 1) * b]))
        values = [float(v) for v in tf.stack(losses).numpy()]  # waits for the last step
        window_s = time.perf_counter() - t_start
    print(
        json.dumps(
            {
                "framework": "tf",
                "img_s": args.steps * b / window_s,
                "data_wait_fraction": 0.0,  # the batch is an index into device memory
                "window_s": window_s,
                "steps": args.steps,
                "warmup": args.warmup,
                "batch_size": b,
                "losses": values,
                "device": device,
                "version": tf.__version__,
                "threads": tf.config.threading.get_intra_op_parallelism_threads(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
