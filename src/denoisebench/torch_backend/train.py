"""PyTorch trainer for the denoising autoencoder, single device or DistributedDataParallel.

Launched by `python -m launch` (which writes the run folder and its config.json first):

    python -m denoisebench.torch_backend.train results/<run-id> [--resume]            # one device
    torchrun --nproc-per-node 4 -m denoisebench.torch_backend.train results/<run-id>  # DDP
    horovodrun -np 4 -H localhost:4 --gloo python -m denoisebench.torch_backend.train DIR  # Horovod

Under torchrun (RANK in the environment) it runs DDP: NCCL on GPUs, gloo on CPUs. Under
horovodrun (HOROVOD_RANK) Horovod averages the gradients instead (horovod_engine.py). Every rank
holds the training images on its device as uint8; each step takes one global batch from the
shared epoch order, draws its noise from a generator seeded by (seed, epoch) on every rank,
and trains on its own slice (distributed.py states the rule). Only rank 0 writes the results
folder; every rank's step timings are gathered into it. A checkpoint is written at the end of
every epoch (a copy of the state, written by rank 0's record writer while the next epoch
trains: trainer/writer.py); --resume continues from it and reproduces the uninterrupted run.
Rank 0 holds the test set on its device for the whole run and evaluates there (evaluation.py).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.util
import itertools
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from denoisebench.core.config import (
    Config,
    ConfigError,
    check_device_support,
    speed_label,
)
from denoisebench.core.diskspace import disk_full
from denoisebench.core.distributed import maybe_inject_fault, replica_slice
from denoisebench.core.placement import GpuPlace, gpu_place, read_placement
from denoisebench.core.spec import shared_weights
from denoisebench.measure.gpus import nvml_indices
from denoisebench.torch_backend.evaluation import TestSet
from denoisebench.torch_backend.lost_peers import naming_lost_peers
from denoisebench.torch_backend.model import (
    add_noise,
    autocast,
    build_model,
    get_weights,
    image_metrics,
    loss_fn,
    memory_format,
    param_dtype,
    pick_device,
    set_weights,
)
from denoisebench.trainer.process import damaged_checkpoint, trainer_main
from denoisebench.trainer.session import EpochResult, Session, World

FRAMEWORK = "torch"


def scores_on_device(device: torch.device) -> bool:
    """Whether each epoch's PSNR and SSIM are computed on the device: on a GPU, with
    pytorch-msssim. On a CPU the host's threaded NumPy version is as fast (2,000 images on 2
    cores: 5.0 s an epoch's evaluation either way)."""
    return device.type == "cuda" and importlib.util.find_spec("pytorch_msssim") is not None


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    device: torch.device,
    cfg: Config,
) -> tuple[StepFn, torch.amp.GradScaler]:
    """One training step (forward in the run's precision, backward, Adam) -> the loss.

    float16 scales the loss (GradScaler); bfloat16 and float32 need no scaling. The loss is
    computed in the images' dtype (float32, or float64 with runtime.precision=float64) from the
    output either way, as the float32 run computes it."""
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.runtime.precision == "float16")

    def step(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with autocast(device, cfg.runtime.precision, cache=not cfg.runtime.cuda_graphs):
            out = model(noisy)
        loss = criterion(out.to(clean.dtype), clean)
        scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step, scaler


class GraphedStep:
    """A training step captured once in a CUDA graph and replayed (runtime.cuda_graphs).

    The pattern of PyTorch's "whole network capture": the first `warmup` steps run eagerly on
    `stream`, a side stream (real training steps; cuDNN picks its kernels and Adam builds its
    state), the next one is captured on that stream from static input buffers, and every later
    one copies its batch into those buffers and replays the graph: one launch per step instead
    of dozens. One stream for warm-up and capture, so libraries that create handles lazily per
    stream have them before capture starts. Adam must be `capturable` (its step counts live on
    the device). Under DDP (NCCL >= 2.9.6 captures the all-reduces) PyTorch's CUDA notes ask for
    three more things, done by the trainer: NCCL's async error handling off before the process
    group starts, DDP constructed on `stream`, and at least 11 eager DDP steps before capture.
    """

    def __init__(
        self,
        step: StepFn,
        optimizer: torch.optim.Optimizer,
        stream: torch.cuda.Stream,
        warmup: int = 3,
    ) -> None:
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        self.calls = 0
        self.stream = stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def capture_step(self) -> int:
        """The call (from 0) that captures the graph: the capture's time lands in that step,
        so it and the eager calls before it are warm-up."""
        return self.warmup

    def __call__(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.step(noisy, clean)
            torch.cuda.current_stream().wait_stream(self.stream)
            return loss
        if self.graph is None:
            static_noisy, static_clean = noisy.clone(), clean.clone()
            self.optimizer.zero_grad(set_to_none=True)  # backward fills the graph's own grads
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                static_loss = self.step(static_noisy, static_clean)
            self.static = (static_noisy, static_clean, static_loss)
        assert self.static is not None
        static_noisy, static_clean, static_loss = self.static
        static_noisy.copy_(noisy)
        static_clean.copy_(clean)
        self.graph.replay()
        return static_loss


class StepClock:
    """Per-step times without making the host wait for the device after every step.

    CUDA: an event is recorded after each step and all are read once at the end of the epoch,
    so the host keeps queueing work (a sync per step would cost the launch pipeline, and is a
    large part of a step this small on a fast GPU). CPU: PyTorch's CPU ops have finished when
    they return, so the host clock is the step's time.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks (waits for the device first)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self.marks)]
        return [b - a for a, b in itertools.pairwise(self.marks)]


def on_host(obj: Any) -> Any:
    """A copy of a state dict's tensors on the host (nested dicts and lists followed; other
    values as they are): what the checkpoint writes while the next epoch changes the weights."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: on_host(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(on_host(v) for v in obj)
    return obj


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: the last checkpoint stays whole if this fails,
    and nothing of the failed one is left (torch.save reports a full disk as a RuntimeError:
    it is raised as the OSError it is)."""
    tmp = path.with_suffix(".tmp")
    try:
        # through a file object closed here, also on failure: torch.save's own writer can keep
        # a failed file open, and an unlinked file that is still open keeps its space
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full(e, tmp)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise


class StepTracer:
    """torch.profiler over `profiler.trace_steps` steps after the `profiler.warmup_steps` first
    ones (`folder` None: off). Writes trace.json (open in Perfetto or chrome://tracing) and
    top_ops.txt (operators by self time on the device, or the CPU without one) into `folder`."""

    def __init__(self, cfg: Config, folder: Path | None, device: torch.device) -> None:
        self.folder, self.cuda, self.written = folder, device.type == "cuda", False
        self.prof: torch.profiler.profile | None = None
        n, warm = cfg.profiler.trace_steps, cfg.profiler.warmup_steps
        self.first, self.end, self.done = warm, warm + n, 0
        if not n or folder is None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            # steps before `warm` are not recorded; the one before the trace warms the profiler
            schedule=torch.profiler.schedule(
                wait=max(warm - 1, 0), warmup=min(warm, 1), active=n, repeat=1
            ),
            on_trace_ready=self._write,
        )
        self.prof.start()

    def _write(self, prof: torch.profiler.profile) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.folder / "trace.json"))
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40)
        (self.folder / "top_ops.txt").write_text(table + "\n")
        self.written = True
        last = min(self.end, self.done) - 1
        partial = f" (partial: the run ended before step {self.end})" if last < self.end - 1 else ""
        print(f"[torch] trace of steps {self.first}-{last}{partial}: {self.folder}", flush=True)

    def step(self) -> None:
        if self.prof:
            self.done += 1
            self.prof.step()

    def close(self) -> None:
        if self.prof:
            self.prof.stop()  # a trace still recording is written as it is
            if not self.written:
                print(f"[torch] no trace: the run ended before step {self.first}", flush=True)


def apply_runtime(cfg: Config) -> dict[str, Any]:
    """Pin every setting that changes speed (config.RuntimeConfig) and return what is in effect."""
    rt = cfg.runtime
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = rt.tf32
    torch.backends.cudnn.allow_tf32 = rt.tf32
    torch.backends.cudnn.benchmark = rt.cudnn_autotune and not cfg.train.deterministic
    if rt.intra_op_threads:
        torch.set_num_threads(rt.intra_op_threads)
    if rt.inter_op_threads:
        torch.set_num_interop_threads(rt.inter_op_threads)
    return {
        "mode": speed_label(cfg),  # faithful, tuned (the --mode), or custom
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "cudnn_autotune": torch.backends.cudnn.benchmark,
        "torch_compile": rt.torch_compile,
        "xla": None,
        "precision": rt.precision,
        "channels_last": rt.channels_last,
        "cuda_graphs": rt.cuda_graphs,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "deterministic": cfg.train.deterministic,
    }


def sync(device: torch.device) -> None:
    """Wait for the device, so a clock read after it measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train `cfg` into run_dir/torch/ and return its summary fields (on rank 0)."""
    # set by horovodrun and torchrun respectively
    strategy = (
        "horovod" if "HOROVOD_RANK" in os.environ else "ddp" if "RANK" in os.environ else "single"
    )
    device, rank, ranks, gpu = init_process(cfg, strategy)
    shared = gpu.speed_reason if gpu else None  # ranks share a GPU: a correctness check
    world = World.of(
        cfg,
        rank=rank,
        processes=ranks,
        replicas=ranks,
        strategy=strategy,
        device=device_label(device, strategy, ranks, gpu),
        # CUDA events on a GPU (StepClock); on the CPU a step has finished when it returns
        step_clock="cuda_events" if device.type == "cuda" else "host",
        runtime=apply_runtime(cfg) | (gpu.runtime_fields() if gpu else {}),
    )
    if shared and rank == 0:
        print(f"[torch] notice: {shared} (gloo: NCCL refuses two ranks on one GPU)", flush=True)
    session = Session(FRAMEWORK, cfg, run_dir, world)
    gpus = nvml_indices([device.index or 0]) if device.type == "cuda" else []
    try:
        # a collective that fails names the ranks that gave no sign after it (lost_peers)
        with session.running(gpus), naming_lost_peers(strategy, rank):
            summary = _train(session, device, resume)
            if strategy == "ddp":
                # free the DDP model now: its reducer holds the process group and the last
                # all-reduce's work objects, and left to the interpreter's exit their gloo
                # threads are torn down after Python is gone (std::terminate, exit code -6,
                # about one run in fifteen on a 2-core machine)
                gc.collect()
            if strategy != "single":
                # every rank waits for rank 0 to finish writing: tearing the gloo group down
                # while a peer still holds its connections aborts that peer (also exit code -6)
                barrier(strategy, device)
        return summary
    finally:
        if strategy == "ddp" and dist.is_initialized():
            dist.destroy_process_group()
        elif strategy == "horovod":
            horovod_engine().shutdown()


def device_label(device: torch.device, strategy: str, ranks: int, gpu: GpuPlace | None) -> str:
    """summary.json's `device`: 'cuda:0', '2 x cuda', or where ranks share each GPU
    (runtime.share_gpus) '2 ranks on cuda, 2 per GPU'."""
    if strategy == "single":
        return str(device)
    if gpu is not None and gpu.speed_reason:
        return f"{ranks} ranks on cuda, {gpu.ranks_per_gpu} per GPU"
    return f"{ranks} x {device.type}"


def horovod_engine() -> ModuleType:
    """The Horovod pieces (horovod_engine.py), imported only under horovodrun."""
    from denoisebench.torch_backend import horovod_engine

    return horovod_engine


def init_process(cfg: Config, strategy: str) -> tuple[torch.device, int, int, GpuPlace | None]:
    """Join the job (torchrun's process group: NCCL on GPUs, gloo on CPUs and on GPUs that
    ranks share, runtime.share_gpus; or Horovod's): (this rank's device, its rank, the ranks,
    its GPU's place under DDP, else None). The group's set-up and every collective wait
    runtime.collective_timeout_s for a peer; on NCCL the watchdog then aborts the group
    (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default, off only for CUDA graphs)."""
    if strategy == "single":
        return pick_device(cfg.train.device), 0, 1, None
    if strategy == "horovod":
        return (*horovod_engine().init_process(cfg), None)
    gpu = None
    if torch.cuda.is_available() and cfg.train.device != "cpu":
        # the GPU this rank sees as its own (the only one, or its local rank's), or shares with
        # the node's other ranks, and the backend that can serve it (placement.GpuPlace)
        place = read_placement(os.environ)
        gpu = gpu_place(place, torch.cuda.device_count(), os.environ, cfg.runtime.share_gpus)
        torch.cuda.set_device(gpu.ordinal)
    if gpu and cfg.runtime.cuda_graphs:
        # capturing NCCL all-reduces needs DDP's async error handling off (see GraphedStep)
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
    timeout = datetime.timedelta(seconds=cfg.runtime.collective_timeout_s)
    dist.init_process_group(backend=gpu.backend if gpu else "gloo", timeout=timeout)
    device = torch.device("cuda", gpu.ordinal) if gpu else torch.device("cpu")
    return device, dist.get_rank(), dist.get_world_size(), gpu


def barrier(strategy: str, device: torch.device) -> None:
    """Every rank waits here for the others."""
    if strategy == "horovod":
        horovod_engine().barrier()
    else:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def all_gather(strategy: str, obj: Any, ranks: int) -> list[Any]:
    """Every rank's `obj`, on every rank, in rank order."""
    if strategy == "horovod":
        return horovod_engine().all_gather(obj)
    gathered: list[Any] = [None] * ranks
    dist.all_gather_object(gathered, obj)
    return gathered


def _train(session: Session, device: torch.device, resume: bool) -> dict[str, Any]:
    """Build, restore, train epoch by epoch, finish: the run, top to bottom."""
    cfg, strategy = session.cfg, session.world.strategy
    check_device(cfg, device)
    data = session.load_data()
    ckpt_path = session.fw_dir / "checkpoints" / "last.pt"
    state = None
    if resume and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise damaged_checkpoint(ckpt_path, e) from e
    net = build(cfg, device, strategy, session.world.lr, state)
    session.begin(
        state["epoch"] if state else 0,
        state["wall_time_s"] if state else 0.0,
        # every rank's host: each node's first rank samples its run conditions
        hosts=all_gather(strategy, socket.gethostname(), session.world.processes)
        if strategy != "single"
        else None,
    )
    # uint8 NHWC, on the device once, flipped in height and width for raw_model.net
    images = torch.from_numpy(data.train_u8).to(device).flip(1, 2)
    # rank 0 evaluates: its test set on the device once, scored there (evaluation.py)
    metrics = image_metrics if scores_on_device(device) else None
    tests = TestSet(data, cfg, device, metrics) if session.rec else None
    dtype = param_dtype(cfg.runtime.precision)
    tracer = StepTracer(cfg, session.fw_dir / "trace" if session.rec else None, device)
    for epoch, order in session.epochs():
        if strategy != "single":
            # rank 0 evaluated and checkpointed after the last epoch while the others went on:
            # start the clock together, or their first all-reduce's wait counts as training
            barrier(strategy, device)
        result = run_epoch(session, net, images, order, epoch, device, tracer, dtype)
        if strategy != "single":  # every rank's rows, epoch time and profile, to every rank
            result = EpochResult.merge(all_gather(strategy, result, session.world.processes))
        session.end_epoch(
            epoch,
            result,
            evaluate=lambda: tests.scores(net.raw, net.criterion),  # rank 0, which has them
            # a copy of the state now, written by the record writer while training goes on
            save=lambda done, wall_s: partial(
                save_checkpoint, ckpt_path, on_host(net.state(done, wall_s))
            ),
        )
    tracer.close()
    return session.finish(
        get_weights(net.raw),
        tests.sample_outputs(net.raw) if tests else None,  # the report's image grid
        sum(p.numel() for p in net.raw.parameters()),
    )


def check_device(cfg: Config, device: torch.device) -> None:
    """Refuse settings this device cannot run, naming the key."""
    if cfg.runtime.cuda_graphs and device.type != "cuda":
        raise ConfigError(
            f"runtime.cuda_graphs needs CUDA devices; this run is on {device.type} "
            "(set runtime.cuda_graphs=false)"
        )
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        check_device_support(cfg, torch.cuda.get_device_name(device), capability)


@dataclass
class Net:
    """What one rank trains with: the canonical model, what the steps run, and their state."""

    raw: torch.nn.Module
    """The canonical model: evaluation, weights and checkpoints."""
    optimizer: torch.optim.Optimizer
    criterion: Any
    step: StepFn
    """One training step on (noisy, clean) NCHW -> its loss (GraphedStep with CUDA graphs)."""
    scaler: torch.amp.GradScaler
    capture_step: int | None
    """The step that captures the CUDA graph, None without one."""

    def state(self, epochs_done: int, wall_time_s: float) -> dict[str, Any]:
        """The checkpoint: weights, Adam's state, the float16 loss scale, where the run is."""
        return {
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "wall_time_s": wall_time_s,
        }


def build(
    cfg: Config, device: torch.device, strategy: str, lr: float, state: dict[str, Any] | None
) -> Net:
    """The model (restored from `state`, a checkpoint, before DDP is built: its broadcast then
    copies equal values on every rank), DDP, torch.compile, Adam (Horovod's distributed
    optimizer under horovodrun, its state restored and broadcast from rank 0), the step."""
    ddp = strategy == "ddp"
    torch.manual_seed(cfg.train.seed)  # native init draws from the global generator
    # CUDA graphs: warm-up and capture run on this stream, and DDP is built on it (GraphedStep)
    graph_stream = torch.cuda.Stream(device) if cfg.runtime.cuda_graphs else None
    raw = build_model(cfg.model).to(device, param_dtype(cfg.runtime.precision))
    if cfg.train.init == "shared":
        set_weights(raw, shared_weights(cfg.model, cfg.train.seed))
    raw = raw.to(memory_format=memory_format(cfg.runtime.channels_last))
    if state is not None:
        raw.load_state_dict(state["model"])
    # training runs the natural network on images flipped once (model_torch's flip identity):
    # no pads, crops or flips in the step; evaluation and the weights use raw, canonical
    model: torch.nn.Module = raw.net
    if ddp:
        if graph_stream is not None:
            # DDP's constructor broadcasts rank 0's weights on graph_stream: it must wait for the
            # default stream's copies (to(device), channels_last, the restored checkpoint), and
            # the default stream for the broadcast (PyTorch's CUDA-graph notes: wait_stream
            # before building DDP on a side stream)
            graph_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(graph_stream) if graph_stream else contextlib.nullcontext():
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if graph_stream is not None:
            torch.cuda.current_stream(device).wait_stream(graph_stream)
    if cfg.runtime.torch_compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        eps=cfg.train.eps,
        capturable=cfg.runtime.cuda_graphs,  # step counts on the device, for graph replay
    )
    if strategy == "horovod":
        optimizer = horovod_engine().distributed_optimizer(optimizer, model)
    criterion = loss_fn(cfg.train.loss)
    step, scaler = make_step(model, optimizer, criterion, device, cfg)
    capture_step = None
    if graph_stream is not None:
        step = GraphedStep(step, optimizer, graph_stream, warmup=11 if ddp else 3)
        capture_step = step.capture_step
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:  # float16 loss scale (checkpoints from before it lack it)
            scaler.load_state_dict(state["scaler"])
    if strategy == "horovod":
        horovod_engine().broadcast_start(raw, optimizer)
    return Net(raw, optimizer, criterion, step, scaler, capture_step)


def run_epoch(
    session: Session,
    net: Net,
    images: torch.Tensor,
    order: np.ndarray,
    epoch: int,
    device: torch.device,
    tracer: StepTracer,
    dtype: torch.dtype,
) -> EpochResult:
    """One epoch's training steps on this rank: each takes its global batch from `order`,
    draws the whole global batch's noise and trains on this rank's slice of it."""
    cfg, prof, rank = session.cfg, session.prof, session.world.rank
    # the same generator on every rank: noise depends only on (seed, epoch), not on the
    # number of devices, and a resumed run draws it again identically
    generator = torch.Generator(device).manual_seed(cfg.train.seed * 100_003 + epoch)
    fmt = memory_format(cfg.runtime.channels_last)
    b = cfg.train.batch_size
    mine = replica_slice(rank, b)
    order_t = torch.from_numpy(order).to(device)  # once per epoch: no copy per step
    losses = torch.empty(len(order_t), device=device)  # fetched once, after the epoch
    waits: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    mark = prof.window_start() if prof else None
    clock = StepClock(device)
    t_epoch = time.perf_counter()
    clock.mark()
    first = session.first_step(epoch)
    show = None if session.rec else True
    for i in tqdm(range(len(order_t)), desc=f"torch epoch {epoch + 1}", leave=False, disable=show):
        t0 = time.perf_counter()
        maybe_inject_fault(range(rank, rank + 1), first + i)
        idx = order_t[i]
        waits.append(time.perf_counter() - t0)
        clean = images[idx].permute(0, 3, 1, 2).to(dtype) / 255
        noisy = add_noise(clean, cfg.noise, generator)  # the whole global batch's noise
        if not cfg.runtime.cuda_graphs:
            # set_to_none, torch's default (Horovod's DistributedOptimizer takes no argument)
            net.optimizer.zero_grad()
        losses[i] = net.step(
            noisy[mine].contiguous(memory_format=fmt), clean[mine].contiguous(memory_format=fmt)
        )
        clock.mark()
        tracer.step()
    step_times = clock.durations()  # waits for the device: the epoch's work is done
    train_time = time.perf_counter() - t_epoch
    devices, host = prof.window_end(mark) if prof and mark else ([], None)
    for d in devices:  # the caching allocator's own view, beside NVML's
        d["alloc_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        d["reserved_peak_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    rows = session.step_rows(epoch, losses.tolist(), step_times, waits)
    return EpochResult(rows, train_time, devices, [host] if host else [], session.node_conditions())


@record  # under torchrun, the failing rank's traceback goes into torchrun's failure summary
def main(argv: list[str] | None = None) -> None:
    trainer_main(FRAMEWORK, train, argv, __doc__)


if __name__ == "__main__":
    main()
