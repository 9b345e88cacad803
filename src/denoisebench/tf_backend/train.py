"""TensorFlow / Keras 3 trainer for the denoising autoencoder, one device or several.

Launched by `python -m launch` (which writes the run folder and its config.json first):

    python -m denoisebench.tf_backend.train results/<run-id> [--resume]              # one device
    python -m denoisebench.tf_backend.train results/<run-id> --devices 4             # MirroredStrategy
    TF_CONFIG='{...}' python -m denoisebench.tf_backend.train results/<run-id>       # multi-worker
    horovodrun -np 2 -H localhost:2 --gloo python -m denoisebench.tf_backend.train DIR  # Horovod

Written the way TensorFlow training loops usually are (Orbit-style): variables created under
`strategy.scope()`, the input distributed with `strategy.distribute_datasets_from_function`,
one `tf.function` step run with `strategy.run`, each replica's loss divided by
`num_replicas_in_sync` so the all-reduced gradient is that of the global batch's mean loss.
Without GPUs, `--devices N` makes N logical CPU devices. Every replica draws the global batch's
noise with stateless ops seeded by (seed, step) and trains on its own slice (distributed.py
states the rule), so a resumed run, or a run on another device count, draws the same noise.
Under horovodrun (HOROVOD_RANK) each worker trains one device and Horovod averages the
gradients (horovod_engine.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from denoisebench.core.config import (
    Config,
    ConfigError,
    check_device_support,
    speed_label,
)
from denoisebench.core.diskspace import disk_full
from denoisebench.core.distributed import (
    maybe_inject_fault,
    replica_slice,
    tf_worker_index,
)
from denoisebench.core.spec import shared_weights
from denoisebench.measure.gpus import nvml_indices
from denoisebench.tf_backend.evaluation import TestSet
from denoisebench.tf_backend.model import (
    adam,
    add_noise,
    build_model,
    get_weights,
    image_metrics,
    input_dtype,
    loss_fn,
    pick_device,
    set_weights,
)
from denoisebench.trainer.process import damaged_checkpoint, trainer_main
from denoisebench.trainer.session import EpochResult, Session, World

FRAMEWORK = "tf"


def build_strategy(
    devices: int, choice: str, timeout_s: float | None = None
) -> tuple[tf.distribute.Strategy, str, str]:
    """(strategy, its name, device description). Must run before any other TensorFlow work.
    `timeout_s`: how long a MultiWorkerMirroredStrategy collective waits for its peers
    (runtime.collective_timeout_s; None: TensorFlow's default, no limit)."""
    device = pick_device(choice)  # also turns on GPU memory growth
    if "TF_CONFIG" in os.environ:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        return strategy, "multi_worker_mirrored", device
    if devices <= 1:
        return tf.distribute.OneDeviceStrategy(device), "single", device
    gpus = tf.config.list_physical_devices("GPU")
    if device.startswith("/GPU"):
        if len(gpus) < devices:
            raise RuntimeError(f"--devices {devices}, but TensorFlow sees {len(gpus)} GPU(s)")
        names = [f"/GPU:{i}" for i in range(devices)]
    else:
        # N logical CPU devices, so the distributed code path runs on machines without GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )
        names = [f"/CPU:{i}" for i in range(devices)]
    return tf.distribute.MirroredStrategy(names), "mirrored", f"{devices} x {names[0][1:4]}"


def apply_runtime(cfg: Config) -> dict[str, Any]:
    """Pin every setting that changes speed (config.RuntimeConfig) and return what is in effect.

    Runs before any other TensorFlow call: thread counts cannot change once the runtime is up.
    """
    rt = cfg.runtime
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(rt.tf32)
    autotune = rt.cudnn_autotune and not cfg.train.deterministic
    os.environ["TF_CUDNN_USE_AUTOTUNE"] = "1" if autotune else "0"
    if rt.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(rt.intra_op_threads)
    if rt.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(rt.inter_op_threads)
    return {
        "mode": speed_label(cfg),  # faithful, tuned (the --mode), or custom
        "tf32_matmul": tf.config.experimental.tensor_float_32_execution_enabled(),
        "tf32_conv": tf.config.experimental.tensor_float_32_execution_enabled(),
        "cudnn_autotune": autotune,
        "torch_compile": None,
        "xla": rt.xla,
        "precision": rt.precision,
        "channels_last": None,  # TensorFlow's convolutions are NHWC already
        "cuda_graphs": None,
        # 0 means TensorFlow's default: as many threads as cores
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "deterministic": cfg.train.deterministic,
    }


def tf_gpu_indices(strategy: tf.distribute.Strategy) -> list[int]:
    """TensorFlow's numbers of the GPUs this worker's replicas run on."""
    return [
        int(d.rsplit(":", 1)[1]) for d in strategy.extended.worker_devices if "GPU" in d.upper()
    ]


def reset_memory_peaks(gpus: list[int]) -> None:
    for i in gpus:
        tf.config.experimental.reset_memory_stats(f"GPU:{i}")


def memory_peaks_gib(gpus: list[int]) -> list[float]:
    """TensorFlow's own peak allocation on each GPU (not other processes' memory)."""
    return [tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] / 2**30 for i in gpus]


def add_allocator_peaks(devices: list[dict[str, Any]], gpus: list[int]) -> None:
    """TensorFlow's own peaks beside NVML's rows, one row per GPU. No rows (profiler off, or
    NVML unavailable while TensorFlow sees GPUs): nothing to add them to."""
    if not devices:
        return
    for d, peak in zip(devices, memory_peaks_gib(gpus), strict=True):
        d["alloc_peak_gib"] = peak
        d["reserved_peak_gib"] = None


def scores_on_device(gpus: list[int]) -> bool:
    """Whether each epoch's PSNR and SSIM are computed on the device: on GPUs. On a CPU the
    host's threaded NumPy version is faster (2,000 images on 2 cores: an epoch's evaluation
    took 3.4 s with it and 16.8 s with tf.image.ssim's 11x11 window)."""
    return bool(gpus)


class StepTracer:
    """TensorFlow's profiler over `profiler.trace_steps` steps after the
    `profiler.warmup_steps` first ones (`folder` None: off), written to `folder` for
    TensorBoard's profile plugin (`tensorboard --logdir <folder>`, with
    tensorboard-plugin-profile installed)."""

    def __init__(self, cfg: Config, folder: Path | None) -> None:
        self.folder = folder
        n, warm = cfg.profiler.trace_steps, cfg.profiler.warmup_steps
        self.start_at, self.stop_at = warm, warm + n
        self.done, self.running = 0, False
        self.enabled = bool(n) and folder is not None
        self.steps = f"{warm}-{warm + n - 1}"
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.enabled and self.done == self.start_at and not self.running:
            assert self.folder is not None
            self.folder.mkdir(parents=True, exist_ok=True)
            tf.profiler.experimental.start(str(self.folder))
            self.running = True

    def step(self) -> None:
        if not self.enabled:
            return
        self.done += 1
        if self.running and self.done == self.stop_at:
            tf.profiler.experimental.stop()
            self.running = False
            print(f"[tf] trace of steps {self.steps}: {self.folder}", flush=True)
        self._maybe_start()

    def close(self) -> None:
        if self.running:
            tf.profiler.experimental.stop()
            self.running = False
            print(f"[tf] partial trace (the run ended before step {self.stop_at})", flush=True)
        elif self.enabled and self.done < self.start_at:
            print(f"[tf] no trace: the run ended before steps {self.steps} began", flush=True)


def train(cfg: Config, run_dir: Path, resume: bool = False, devices: int = 1) -> dict[str, Any]:
    """Train `cfg` into run_dir/tf/ and return its summary fields (on the chief)."""
    runtime = apply_runtime(cfg)
    if "HOROVOD_RANK" in os.environ:  # set by horovodrun: one device per worker
        strategy, name, device, worker, workers = horovod_engine().join(
            cfg.train.device, cfg.runtime.collective_timeout_s
        )
        replicas = workers
    else:
        strategy, name, device = build_strategy(
            devices, cfg.train.device, cfg.runtime.collective_timeout_s
        )
        worker, workers = tf_worker_index()
        replicas = strategy.num_replicas_in_sync
    gpus = tf_gpu_indices(strategy)
    world = World.of(
        cfg,
        rank=worker,
        processes=workers,
        replicas=replicas,
        strategy=name,
        device=device if workers == 1 else f"{workers} workers, {replicas} replicas",
        # TensorFlow waits for a GPU once an epoch (see run_epoch): steps are host intervals
        step_clock="host_dispatch" if gpus else "host",
        runtime=runtime,
    )
    session = Session(FRAMEWORK, cfg, run_dir, world, every_process_saves=True)
    with session.running(nvml_indices(gpus)):
        return _train(session, strategy, gpus, resume)


def horovod_engine() -> ModuleType:
    """The Horovod pieces (horovod_engine.py), imported only under horovodrun."""
    from denoisebench.tf_backend import horovod_engine

    return horovod_engine


def _train(
    session: Session, strategy: tf.distribute.Strategy, gpus: list[int], resume: bool
) -> dict[str, Any]:
    """Build, restore, train epoch by epoch, finish: the run, top to bottom."""
    cfg, world = session.cfg, session.world
    hvd = horovod_engine() if world.strategy == "horovod" else None
    check_devices(cfg, gpus, world.world_size)
    data = session.load_data()
    net = build(cfg, strategy, world.lr)
    ckpt = Checkpoints(net, session.fw_dir / "checkpoints", world)
    if resume:
        ckpt.restore()
    session.begin(
        int(net.epoch.numpy()),
        float(net.wall_time_s.numpy()),
        # every worker's host: each node's first worker samples its run conditions
        hosts=gather_per_worker(strategy, world, socket.gethostname()),
    )
    images = on_each_device(strategy, data.train_u8)  # uint8, NHWC, on the devices once
    # the chief evaluates: its test set on its first device once, scored there (evaluation.py)
    metrics = image_metrics if scores_on_device(gpus) else None
    first_device = strategy.extended.worker_devices[0]
    tests = TestSet(data, cfg, first_device, metrics) if session.rec else None
    if hvd:  # rank 0's weights and Adam state on every worker; its slice; averaged gradients
        hvd.broadcast_start([*net.model.variables, *net.optimizer.variables])
        train_step = make_train_step(cfg, strategy, net, world.rank, hvd.average)
    else:
        train_step = make_train_step(cfg, strategy, net)
    tracer = StepTracer(cfg, session.fw_dir / "trace" if session.rec else None)
    for epoch, order in session.epochs():
        # the epoch's whole order goes to each device once, as the PyTorch trainer does; each
        # step picks its row inside the step. (A distributed tf.data iterator handing out one
        # row a step cost 45% of the step time on a 2-core CPU: 270 against 500 img/s.)
        order_t = on_each_device(strategy, order)
        if world.processes > 1:
            # the chief evaluated and saved between epochs while the others went on: start
            # the epoch's clock together, or their first collective's wait counts as training
            gather_per_worker(strategy, world, None)
        result = run_epoch(session, strategy, train_step, images, order_t, epoch, gpus, tracer)
        gathered = gather_per_worker(strategy, world, result.to_json())
        net.epoch.assign(epoch + 1)
        session.end_epoch(
            epoch,
            EpochResult.merge([EpochResult.from_json(g) for g in gathered]),
            evaluate=lambda: tests.scores(net.model, net.criterion),  # the chief, which has them
            save=ckpt.save,
        )
    tracer.close()
    ckpt.close()
    outputs = tests.sample_outputs(net.model) if tests else None  # the report's image grid
    return session.finish(get_weights(net.model), outputs, int(net.model.count_params()))


def check_devices(cfg: Config, gpus: list[int], replicas: int) -> None:
    """Refuse settings these devices cannot run, naming the key."""
    if cfg.runtime.xla and replicas > 1:
        # on CPU devices XLA has no collectives at all (b/194942685); on GPUs Keras turns XLA
        # off itself under tf.distribute (keras-team/keras#18716) and LossScaleOptimizer with
        # jit_compile under MirroredStrategy is reported broken (keras-team/keras#21366)
        raise ConfigError(
            f"runtime.xla with {replicas} TensorFlow replicas is not supported: XLA runs on one "
            "device only here (the tuned mode turns it off for several devices); set "
            "runtime.xla=false or use one device"
        )
    physical = tf.config.list_physical_devices("GPU")
    for i in gpus:
        details = tf.config.experimental.get_device_details(physical[i])
        if details.get("compute_capability"):
            name = details.get("device_name", physical[i].name)
            check_device_support(cfg, name, tuple(details["compute_capability"]))


@dataclass
class Net:
    """What this worker trains with, created under the strategy's scope."""

    model: Any
    optimizer: Any
    criterion: Any
    replicas: int
    epoch: tf.Variable
    """Finished epochs, saved with the checkpoint."""
    wall_time_s: tf.Variable
    """The run's wall time so far, saved with the checkpoint."""


def build(cfg: Config, strategy: tf.distribute.Strategy, lr: float) -> Net:
    """The model, Adam and the run's counters, as the strategy's (mirrored) variables."""
    with strategy.scope():
        tf.keras.utils.set_random_seed(cfg.train.seed)  # native init draws from Keras' seed
        model = build_model(cfg.model, precision=cfg.runtime.precision)
        if cfg.train.init == "shared":
            set_weights(model, shared_weights(cfg.model, cfg.train.seed))
        optimizer = adam(cfg.train, lr, cfg.runtime.precision)
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        wall_time_s = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    replicas = strategy.num_replicas_in_sync
    return Net(model, optimizer, loss_fn(cfg.train.loss), replicas, epoch, wall_time_s)


class Checkpoints:
    """The last epoch's checkpoint. Every worker saves (saving may need collectives); only the
    chief's copy, in `folder`, is kept: the others write into a temporary folder, removed by
    close()."""

    def __init__(self, net: Net, folder: Path, world: World) -> None:
        self.folder, self.wall_time_s = folder, net.wall_time_s
        self.save_dir = (
            folder if world.is_main else Path(tempfile.mkdtemp(prefix=f"tf-worker{world.rank}-"))
        )
        self.checkpoint = tf.train.Checkpoint(
            model=net.model, optimizer=net.optimizer, epoch=net.epoch, wall_time_s=net.wall_time_s
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.save_dir), max_to_keep=1
        )

    def restore(self) -> None:
        """Every worker restores the chief's last checkpoint, if there is one."""
        latest = tf.train.latest_checkpoint(str(self.folder))
        if latest:
            try:
                self.checkpoint.restore(latest).assert_consumed()
            except Exception as e:  # TensorFlow's readers fail in many ways (OpError,
                # IndexError on a truncated data file, AssertionError from assert_consumed)
                raise damaged_checkpoint(Path(latest), e) from e

    def save(self, _epochs_done: int, wall_time_s: float) -> None:
        """The run's state now (the epoch counter is set by the loop before evaluating)."""
        self.wall_time_s.assign(wall_time_s)
        save_checkpoint(self.manager, self.save_dir)

    def close(self) -> None:
        if self.save_dir != self.folder:
            shutil.rmtree(self.save_dir, ignore_errors=True)


def on_each_device(strategy: tf.distribute.Strategy, array: np.ndarray) -> Any:
    """One copy of `array` on each of this worker's devices. value_fn is not called under the
    replica's device scope, so each copy is placed explicitly."""
    local_devices = strategy.extended.worker_devices

    def value_fn(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        with tf.device(local_devices[ctx.replica_id_in_sync_group % len(local_devices)]):
            return tf.identity(array)

    return strategy.experimental_distribute_values_from_function(value_fn)


def make_train_step(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    net: Net,
    first_replica: int = 0,
    all_reduce: Callable[[list[tf.Tensor]], list[tf.Tensor]] | None = None,
) -> Any:
    """The distributed step: each replica picks the step's global batch from the epoch's order,
    draws the whole global batch's noise (stateless, seeded by (seed, step)), and trains on its
    slice; the all-reduced gradient is that of the global batch's mean loss.

    Under Horovod the strategy holds this worker's one replica: `first_replica` (its rank) picks
    its slice, and `all_reduce` averages the gradients over the workers."""
    b, replicas = cfg.train.batch_size, net.replicas
    dtype = input_dtype(cfg.runtime.precision)
    model, optimizer, criterion = net.model, net.optimizer, net.criterion

    def update(noisy: tf.Tensor, clean: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            out = model(noisy, training=True)
            # this replica's mean; divided by the replicas, the all-reduced sum is the global
            # batch's mean
            loss = criterion(clean, out) / replicas
            scaled = optimizer.scale_loss(loss)  # float16: loss scaling; else the loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if all_reduce is not None:
            grads = all_reduce(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss * replicas

    if cfg.runtime.xla:
        # XLA compiles the model's update only; picking the batch and drawing its noise stay
        # outside it. Inside jit_compile the stateless random ops draw other values than
        # outside (max abs difference 4.09 for stateless_normal, seen on CPU) and
        # stateless_poisson has no XLA kernel at all: kept outside, an XLA run trains on
        # exactly the eager run's noise. One replica only (refused above for several): a
        # nested tf.function cannot hold the cross-replica gradient sum (merge_call)
        update = tf.function(update, jit_compile=True)

    @tf.function
    def train_step(images: Any, order: Any, i: tf.Tensor, seed: tf.Tensor) -> Any:
        def step_fn(
            images: tf.Tensor, order: tf.Tensor, i: tf.Tensor, seed: tf.Tensor
        ) -> tf.Tensor:
            replica = first_replica + tf.distribute.get_replica_context().replica_id_in_sync_group
            global_idx = order[i]  # the step's global batch, from the epoch's order on the device
            clean = tf.cast(tf.gather(images, global_idx), dtype) / 255.0
            noisy = add_noise(clean, cfg.noise, seed)  # the whole global batch's noise
            mine = replica_slice(replica, b)
            return update(noisy[mine], clean[mine])

        return strategy.run(step_fn, args=(images, order, i, seed))

    return train_step


def run_epoch(
    session: Session,
    strategy: tf.distribute.Strategy,
    train_step: Any,
    images: Any,
    order: Any,
    epoch: int,
    gpus: list[int],
    tracer: StepTracer,
) -> EpochResult:
    """One epoch's training steps on this worker's replicas."""
    cfg, prof, world = session.cfg, session.prof, session.world
    mine = range(world.rank * world.local_replicas, (world.rank + 1) * world.local_replicas)
    first = session.first_step(epoch)
    steps = session.steps_per_epoch
    losses: list[Any] = []  # each step's per-replica losses, fetched after the epoch
    step_times: list[float] = []
    waits: list[float] = []
    reset_memory_peaks(gpus)
    mark = prof.window_start() if prof else None
    t_epoch = time.perf_counter()
    show = None if session.rec else True
    for i in tqdm(range(steps), desc=f"tf epoch {epoch + 1}", leave=False, disable=show):
        t0 = time.perf_counter()
        # this worker's replicas: under MirroredStrategy one process holds them all
        maybe_inject_fault(mine, first + i)
        i_t = tf.constant(i, tf.int32)
        t_data = time.perf_counter()
        seed = tf.constant([cfg.train.seed, first + i], tf.int64)
        per_replica = train_step(images, order, i_t, seed)
        losses.append(strategy.experimental_local_results(per_replica))
        if i == steps - 1:
            # the one wait for the devices per epoch: the last step ends when all work has.
            # Fetching every step's loss would stall a GPU's queue after each step; on a GPU
            # the other steps' times are therefore the host's dispatch intervals, and their
            # sum is still the epoch's wall time
            [np.asarray(v) for v in losses[-1]]
        step_times.append(time.perf_counter() - t0)
        waits.append(t_data - t0)
        tracer.step()
    train_time = time.perf_counter() - t_epoch
    means = [float(np.mean([np.asarray(v) for v in local])) for local in losses]
    devices, host = prof.window_end(mark) if prof and mark else ([], None)
    add_allocator_peaks(devices, gpus)
    rows = session.step_rows(epoch, means, step_times, waits)
    return EpochResult(rows, train_time, devices, [host] if host else [], session.node_conditions())


def save_checkpoint(manager: tf.train.CheckpointManager, folder: Path) -> None:
    """manager.save(), and on failure nothing of the new checkpoint left behind (TensorFlow
    writes it into <prefix>_temp* first); a full disk is raised as the OSError it is."""
    try:
        manager.save()
    except Exception as e:
        full = disk_full(e, folder)
        for partial in Path(folder).glob("*_temp*"):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise


def gather_per_worker(strategy: tf.distribute.Strategy, world: World, obj: Any) -> list[Any]:
    """Each worker's JSON-able `obj`, on every worker, in worker order.

    Collectives carry numbers only (int32, not uint8): the object travels as its UTF-8 bytes,
    one int32 each, padded to the longest.
    """
    if world.processes == 1:
        return [obj]
    if world.strategy == "horovod":
        return horovod_engine().all_gather(obj)
    payload = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).astype(np.int32)

    def gather(values: np.ndarray) -> np.ndarray:
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda _ctx: tf.constant(values[None, :])
        )
        # replicas are numbered worker by worker: keep the first replica of each worker
        return strategy.gather(per_replica, axis=0).numpy()[:: world.local_replicas]

    lengths = gather(np.array([len(payload)], dtype=np.int64))[:, 0]
    padded = np.zeros(int(lengths.max()), dtype=np.int32)
    padded[: len(payload)] = payload
    blobs = gather(padded)
    return [
        json.loads(blob[:n].astype(np.uint8).tobytes().decode())
        for blob, n in zip(blobs, lengths, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    trainer_main(FRAMEWORK, train, argv, __doc__, devices_option=True)


if __name__ == "__main__":
    main()
