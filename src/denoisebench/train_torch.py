"""PyTorch trainer for the denoising autoencoder, single device or DistributedDataParallel.

Launched by `python -m launch` (which writes the run folder and its config.json first):

    python -m denoisebench.train_torch results/<run-id> [--resume]            # one device
    torchrun --nproc-per-node 4 -m denoisebench.train_torch results/<run-id>  # DDP

Under torchrun (RANK in the environment) it runs DDP: NCCL on GPUs, gloo on CPUs. Every rank
holds the training images on its device as uint8; each step takes one global batch from the
shared epoch order, draws its noise from a generator seeded by (seed, epoch) on every rank,
and trains on its own slice (distributed.py states the rule). Only rank 0 writes the results
folder; every rank's step timings are gathered into it. A checkpoint is written at the end of
every epoch; --resume continues from it and reproduces the uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from denoisebench.config import Config, load_resolved
from denoisebench.distributed import maybe_inject_fault
from denoisebench.experiment import (
    SAMPLE_IMAGES,
    USER_ERRORS,
    RunData,
    announce,
    epoch_batches,
    epoch_line,
    epoch_record,
    final_summary,
    measured,
    prepare_data,
    run_profiler,
)
from denoisebench.model_torch import (
    add_noise,
    build_model,
    get_weights,
    loss_fn,
    pick_device,
    set_weights,
)
from denoisebench.profiler import Profiler, nvml_indices
from denoisebench.results import RunRecorder
from denoisebench.spec import shared_weights

FRAMEWORK = "torch"


def to_nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x).to(device).permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: RunData, cfg: Config, device: torch.device, criterion: Any
) -> tuple[float, np.ndarray]:
    """Test loss and the outputs (NHWC float32) on the fixed noisy test split."""
    model.eval()
    outputs, total = [], 0.0
    n = len(data.test_noisy)
    for i in range(0, n, cfg.train.eval_batch_size):
        noisy = to_nchw(data.test_noisy[i : i + cfg.train.eval_batch_size], device)
        clean = to_nchw(data.test_clean[i : i + cfg.train.eval_batch_size], device)
        out = model(noisy)
        total += criterion(out, clean).item() * len(noisy)
        outputs.append(out.permute(0, 2, 3, 1).cpu().numpy())
    model.train()
    return total / n, np.concatenate(outputs)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def raise_on_sigterm() -> None:
    """torchrun and SLURM stop workers with SIGTERM: turn it into an exception, so the run
    folder is marked failed instead of the process vanishing mid-epoch."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


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
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "cudnn_autotune": torch.backends.cudnn.benchmark,
        "torch_compile": rt.torch_compile,
        "xla": None,
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
    ddp = "RANK" in os.environ  # set by torchrun
    if ddp:
        use_cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ["LOCAL_RANK"])
        if use_cuda:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
    else:
        rank, world_size, device = 0, 1, pick_device(cfg.train.device)
    is_main = rank == 0
    runtime = apply_runtime(cfg)

    rec = RunRecorder(run_dir, FRAMEWORK) if is_main else None
    world = {
        "world_size": world_size,
        "processes": world_size,
        "global_batch": cfg.train.batch_size * world_size,
        "lr": cfg.train.lr * (world_size if cfg.train.scale_lr else 1),
        "strategy": "ddp" if ddp else "single",
        "device": str(device) if not ddp else f"{world_size} x {device.type}",
        "runtime": runtime,
    }
    if rec:
        announce(rec, cfg, world)
    gpus = nvml_indices([device.index or 0]) if device.type == "cuda" else []
    try:
        with run_profiler(cfg, run_dir, FRAMEWORK, gpus, rank) as prof:
            summary = _train(cfg, run_dir, rec, device, rank, world, resume, ddp, prof)
        if ddp:
            # every rank waits for rank 0 to finish writing: tearing the gloo group down while
            # a peer still holds its connections aborts that peer (seen as exit code -6)
            dist.barrier()
        return summary
    except BaseException as e:
        if rec:
            rec.summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: Config,
    run_dir: Path,
    rec: RunRecorder | None,
    device: torch.device,
    rank: int,
    world: dict[str, Any],
    resume: bool,
    ddp: bool,
    prof: Profiler | None,
) -> dict[str, Any]:
    world_size, global_batch = world["world_size"], world["global_batch"]
    data = prepare_data(cfg, run_dir, is_main=rec is not None)
    torch.manual_seed(cfg.train.seed)  # native init draws from the global generator
    raw_model = build_model(cfg.model).to(device)
    if cfg.train.init == "shared":
        set_weights(raw_model, shared_weights(cfg.model, cfg.train.seed))
    model = (
        DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
        if ddp
        else raw_model
    )
    if cfg.runtime.torch_compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=world["lr"],
        betas=(cfg.train.beta1, cfg.train.beta2),
        eps=cfg.train.eps,
    )
    criterion = loss_fn(cfg.train.loss)

    ckpt_path = Path(run_dir) / FRAMEWORK / "checkpoints" / "last.pt"
    start_epoch, wall_time_s = 0, 0.0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, wall_time_s = state["epoch"], state["wall_time_s"]
        if rec:
            print(f"[torch] resuming after epoch {start_epoch}", flush=True)
    if rec:
        rec.truncate_after(start_epoch)

    train_images = torch.from_numpy(data.train_u8).to(device)  # uint8, NHWC, on the device once
    n_train = len(train_images)
    b = cfg.train.batch_size
    mine = slice(rank * b, (rank + 1) * b)
    step = start_epoch * (n_train // global_batch)
    if prof:
        prof.measure_idle(cfg.profiler.idle_s)
    for epoch in range(start_epoch, cfg.train.epochs):
        # the same generator on every rank: noise depends only on (seed, epoch), not on the
        # number of devices, and a resumed run draws it again identically
        generator = torch.Generator(device).manual_seed(cfg.train.seed * 100_003 + epoch)
        batches = epoch_batches(n_train, global_batch, cfg.train.seed, epoch)
        # the epoch's whole order goes to the device once: no host-to-device copy per step
        order = torch.from_numpy(np.stack(batches)).to(device)
        rows: list[dict[str, Any]] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        mark = prof.window_start() if prof else None
        t_epoch = time.perf_counter()
        for idx_t in tqdm(
            order, desc=f"torch epoch {epoch + 1}", leave=False, disable=None if rec else True
        ):
            t0 = time.perf_counter()
            maybe_inject_fault(rank, step)
            t_data = time.perf_counter()
            clean = train_images[idx_t].permute(0, 3, 1, 2).float() / 255
            noisy = add_noise(clean, cfg.noise, generator)  # the whole global batch's noise
            loss = criterion(model(noisy[mine]), clean[mine])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks here
            optimizer.step()
            loss_value = loss.item()  # waits for the device, so the step time is real
            rows.append(
                {
                    "framework": FRAMEWORK,
                    "epoch": epoch,
                    "step": step,
                    "rank": rank,
                    "replicas": 1,
                    "batch_size": b,
                    "loss": loss_value,
                    "step_time_s": time.perf_counter() - t0,
                    "data_wait_s": t_data - t0,
                }
            )
            step += 1
        sync(device)
        train_time = time.perf_counter() - t_epoch
        devices, host = prof.window_end(mark) if prof and mark else ([], None)
        for d in devices:  # the caching allocator's own view, beside NVML's
            d["alloc_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            d["reserved_peak_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        hosts = [host] if host else []

        if ddp:  # every rank's rows, epoch time and profile, to rank 0
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, (rows, train_time, devices, hosts))
            rows = [r for g in gathered for r in g[0]]
            train_time = max(g[1] for g in gathered)  # the job is as fast as its slowest rank
            devices = [d for g in gathered for d in g[2]]
            hosts = [h for g in gathered for h in g[3]]
        if rec is None:
            continue
        t_eval = time.perf_counter()
        test_loss, outputs = evaluate(raw_model, data, cfg, device, criterion)
        record = epoch_record(
            FRAMEWORK,
            epoch,
            rows,
            train_time,
            time.perf_counter() - t_eval,
            test_loss,
            outputs,
            data,
            measured(cfg, devices, hosts, world_size) if prof else None,
        )
        wall_time_s += time.perf_counter() - t_epoch
        rec.epoch(record, rows, devices, hosts)
        save_checkpoint(
            ckpt_path,
            {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "wall_time_s": wall_time_s,
            },
        )
        rec.summary(epochs_completed=epoch + 1)
        print(epoch_line(record, cfg.train.epochs), flush=True)

    if rec is None:
        return {}
    rec.write_weights(get_weights(raw_model))
    with torch.no_grad():  # the report's image grid: outputs for the saved test samples
        raw_model.eval()
        sample = to_nchw(data.test_noisy[:SAMPLE_IMAGES], device)
        rec.write_outputs(raw_model(sample).permute(0, 2, 3, 1).cpu().numpy())
    parameters = sum(p.numel() for p in raw_model.parameters())
    summary = final_summary(rec, wall_time_s, parameters, data, world)
    rec.summary(**summary)
    return summary


@record  # under torchrun, the failing rank's traceback goes into torchrun's failure summary
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results/<run-id>, holding config.json")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    try:
        train(load_resolved(args.run_dir / "config.json"), args.run_dir, resume=args.resume)
    except USER_ERRORS as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
