"""PyTorch trainer for the denoising autoencoder.

Launched by `python -m launch` (which writes the run folder and its config.json first):

    python -m denoisebench.train_torch results/<run-id> [--resume]

The training images live on the device as uint8 once; each step gathers a batch, converts it
to float, and draws fresh noise on the device. A checkpoint is written at the end of every
epoch; --resume continues from it and reproduces the uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from denoisebench.model_torch import add_noise, build_model, loss_fn, pick_device, set_weights
from denoisebench.results import RunRecorder, environment
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


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train `cfg` into run_dir/torch/ and return its summary fields."""
    rec = RunRecorder(run_dir, FRAMEWORK)
    ckpt_path = rec.checkpoint_dir / "last.pt"
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    device = pick_device(cfg.train.device)
    rec.write_environment(environment(FRAMEWORK) | {"device": str(device)})
    rec.summary(status="running", error=None, epochs=cfg.train.epochs, device=str(device))
    try:
        return _train(cfg, run_dir, rec, ckpt_path, device, resume)
    except BaseException as e:
        rec.summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise


def _train(
    cfg: Config,
    run_dir: Path,
    rec: RunRecorder,
    ckpt_path: Path,
    device: torch.device,
    resume: bool,
) -> dict[str, Any]:
    data = prepare_data(cfg, run_dir)
    torch.manual_seed(cfg.train.seed)  # native init draws from the global generator
    model = build_model(cfg.model).to(device)
    if cfg.train.init == "shared":
        set_weights(model, shared_weights(cfg.model, cfg.train.seed))
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.train.lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        eps=cfg.train.eps,
    )
    criterion = loss_fn(cfg.train.loss)

    start_epoch, wall_time_s = 0, 0.0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, wall_time_s = state["epoch"], state["wall_time_s"]
        print(f"[torch] resuming after epoch {start_epoch}", flush=True)
    rec.truncate_after(start_epoch)

    train_images = torch.from_numpy(data.train_u8).to(device)  # uint8, NHWC, on the device once
    n_train = len(train_images)
    step = sum(r["steps"] for r in rec.epochs())
    for epoch in range(start_epoch, cfg.train.epochs):
        # noise of an epoch depends only on (seed, epoch), so a resumed run draws the same noise
        generator = torch.Generator(device).manual_seed(cfg.train.seed * 100_003 + epoch)
        batches = epoch_batches(n_train, cfg.train.batch_size, cfg.train.seed, epoch)
        losses, sizes = [], []
        t_epoch = time.perf_counter()
        for idx in tqdm(batches, desc=f"torch epoch {epoch + 1}", leave=False, disable=None):
            t0 = time.perf_counter()
            clean = train_images[torch.from_numpy(idx).to(device)].permute(0, 3, 1, 2).float() / 255
            noisy = add_noise(clean, cfg.noise, generator)
            loss = criterion(model(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()  # waits for the device, so the step time is real
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
        test_loss, outputs = evaluate(model, data, cfg, device, criterion)
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
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "wall_time_s": wall_time_s,
            },
        )
        rec.summary(epochs_completed=epoch + 1)
        print(epoch_line(record, cfg.train.epochs), flush=True)

    summary = final_summary(
        rec, n_train, wall_time_s, sum(p.numel() for p in model.parameters()), data
    )
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
