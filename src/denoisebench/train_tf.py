"""TensorFlow / Keras 3 trainer for the denoising autoencoder.

Launched by `python -m launch` (which writes the run folder and its config.json first):

    python -m denoisebench.train_tf results/<run-id> [--resume]

Written the way TensorFlow training loops usually are (Orbit-style): variables created under
`strategy.scope()`, one `tf.function` step run with `strategy.run`, the loss averaged over the
global batch. The training images live on the device as uint8 once; noise is drawn on the
device with stateless random ops seeded by (seed, step), so a resumed run draws the same noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from denoisebench.config import Config, load_resolved
from denoisebench.experiment import (
    USER_ERRORS,
    RunData,
    epoch_batches,
    epoch_line,
    epoch_record,
    final_summary,
    prepare_data,
)
from denoisebench.model_tf import add_noise, build_model, loss_fn, pick_device, set_weights
from denoisebench.results import RunRecorder, environment
from denoisebench.spec import shared_weights

FRAMEWORK = "tf"


def evaluate(model: Any, data: RunData, cfg: Config, criterion: Any) -> tuple[float, np.ndarray]:
    """Test loss and the outputs (NHWC float32) on the fixed noisy test split."""
    outputs, total = [], 0.0
    n = len(data.test_noisy)
    for i in range(0, n, cfg.train.eval_batch_size):
        noisy = data.test_noisy[i : i + cfg.train.eval_batch_size]
        clean = data.test_clean[i : i + cfg.train.eval_batch_size]
        out = model(noisy, training=False)
        total += float(criterion(clean, out)) * len(noisy)
        outputs.append(out.numpy())
    return total / n, np.concatenate(outputs)


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train `cfg` into run_dir/tf/ and return its summary fields."""
    rec = RunRecorder(run_dir, FRAMEWORK)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    device = pick_device(cfg.train.device)
    rec.write_environment(environment(FRAMEWORK) | {"device": device})
    rec.summary(status="running", error=None, epochs=cfg.train.epochs, device=device)
    try:
        with tf.device(device):
            return _train(cfg, run_dir, rec, resume)
    except BaseException as e:
        rec.summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise


def _train(cfg: Config, run_dir: Path, rec: RunRecorder, resume: bool) -> dict[str, Any]:
    data = prepare_data(cfg, run_dir)
    strategy = tf.distribute.get_strategy()  # the default (one device) strategy
    with strategy.scope():
        tf.keras.utils.set_random_seed(cfg.train.seed)  # native init draws from Keras' seed
        model = build_model(cfg.model)
        if cfg.train.init == "shared":
            set_weights(model, shared_weights(cfg.model, cfg.train.seed))
        optimizer = tf.keras.optimizers.Adam(
            learning_rate=cfg.train.lr,
            beta_1=cfg.train.beta1,
            beta_2=cfg.train.beta2,
            epsilon=cfg.train.eps,
        )
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        wall_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    criterion = loss_fn(cfg.train.loss)
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, epoch=epoch_var, wall_time_s=wall_var
    )
    manager = tf.train.CheckpointManager(checkpoint, str(rec.checkpoint_dir), max_to_keep=1)
    if resume and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()
        print(f"[tf] resuming after epoch {int(epoch_var.numpy())}", flush=True)
    start_epoch = int(epoch_var.numpy())
    rec.truncate_after(start_epoch)

    train_images = tf.constant(data.train_u8)  # uint8, NHWC, on the device once
    n_train = len(data.train_u8)
    global_batch = cfg.train.batch_size

    @tf.function(reduce_retracing=True)
    def train_step(idx: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        def step_fn(idx: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
            clean = tf.cast(tf.gather(train_images, idx), tf.float32) / 255.0
            noisy = add_noise(clean, cfg.noise, seed)
            with tf.GradientTape() as tape:
                out = model(noisy, training=True)
                # mean over this replica's batch, divided by the replicas so the sum is the mean
                loss = criterion(clean, out) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per_replica = strategy.run(step_fn, args=(idx, seed))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    step = sum(r["steps"] for r in rec.epochs())
    wall_time_s = float(wall_var.numpy())
    for epoch in range(start_epoch, cfg.train.epochs):
        batches = epoch_batches(n_train, global_batch, cfg.train.seed, epoch)
        losses, sizes = [], []
        t_epoch = time.perf_counter()
        for idx in tqdm(batches, desc=f"tf epoch {epoch + 1}", leave=False, disable=None):
            t0 = time.perf_counter()
            seed = tf.constant([cfg.train.seed, step], dtype=tf.int64)
            loss_value = float(train_step(tf.constant(idx), seed))  # waits for the device
            dt = time.perf_counter() - t0
            losses.append(loss_value)
            sizes.append(len(idx))
            rec.step(
                {
                    "framework": FRAMEWORK,
                    "epoch": epoch,
                    "step": step,
                    "batch_size": len(idx),
                    "loss": loss_value,
                    "step_time_s": dt,
                }
            )
            step += 1
        train_time = time.perf_counter() - t_epoch

        t_eval = time.perf_counter()
        test_loss, outputs = evaluate(model, data, cfg, criterion)
        record = epoch_record(
            FRAMEWORK,
            epoch,
            losses,
            sizes,
            train_time,
            time.perf_counter() - t_eval,
            test_loss,
            outputs,
            data,
        )
        wall_time_s += time.perf_counter() - t_epoch
        rec.epoch(record)
        epoch_var.assign(epoch + 1)
        wall_var.assign(wall_time_s)
        manager.save()
        rec.summary(epochs_completed=epoch + 1)
        print(epoch_line(record, cfg.train.epochs), flush=True)

    summary = final_summary(rec, n_train, wall_time_s, int(model.count_params()), data)
    rec.summary(**summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run-id>, holding config.json")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    try:
        train(load_resolved(args.run_dir / "config.json"), args.run_dir, resume=args.resume)
    except USER_ERRORS as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
