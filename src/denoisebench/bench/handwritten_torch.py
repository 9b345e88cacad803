"""The plain PyTorch training loop a user would write by hand, timed: the benchmark's baseline.

    python -m denoisebench.bench.handwritten_torch [--profile default] [--batch-size 64]
        [--steps 60] [--warmup 10] [--set SECTION.KEY=VALUE]

Prints one JSON line: img/s over the steady window, the data-wait fraction, the losses.
`python -m denoisebench.bench` runs it beside the suite's trainer (torch_backend/train.py), with the
same network (the natural PyTorch layers the suite trains, model_torch.build_net: padding 1,
output padding 1; a user's model, not flipped into Keras' orientation), optimizer, loss, data,
noise and batch. It is deliberately the shortest idiomatic
loop: a DataLoader over a TensorDataset, no per-step logging, no per-step `loss.item()`.
The only lines beyond that pin the speed settings the suite pins (config.RuntimeConfig), so
the two runs differ in their loops, not in precision or kernel choice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from denoisebench.bench.suite import hand_figures, handwritten_main
from denoisebench.core.config import Config
from denoisebench.data.images import load_images, make_split
from denoisebench.torch_backend.model import (
    add_noise,
    autocast,
    build_net,
    loss_fn,
    memory_format,
    pick_device,
)


def pin_runtime(cfg: Config) -> None:
    """The config's speed settings, set here as a user would (PyTorch's defaults differ: TF32
    in convolutions is on), so the comparison is of loops, not of precision. Written apart
    from the suite's trainer on purpose: this loop is what it is measured against."""
    rt = cfg.runtime
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = rt.tf32
    torch.backends.cudnn.benchmark = rt.cudnn_autotune and not cfg.train.deterministic
    torch.set_num_threads(rt.intra_op_threads or torch.get_num_threads())
    if rt.inter_op_threads and rt.inter_op_threads != torch.get_num_interop_threads():
        torch.set_num_interop_threads(rt.inter_op_threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    """Train `warmup` + `steps` steps; time the last `steps` (img/s, data-wait fraction)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    pin_runtime(cfg)
    device = pick_device(cfg.train.device)
    images = load_images(cfg.data, cfg.model.image_size, seed=cfg.train.seed).images
    train = images[make_split(len(images), cfg.data).train]  # uint8 NHWC

    torch.manual_seed(cfg.train.seed)  # first draw: the suite's initial weights (native init)
    fmt = memory_format(cfg.runtime.channels_last)
    # the natural PyTorch network (padding 1, output padding 1), as a PyTorch user writes it
    model = build_net(cfg.model).to(device, memory_format=fmt)
    if cfg.runtime.torch_compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.train.lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        eps=cfg.train.eps,
    )
    criterion = loss_fn(cfg.train.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.runtime.precision == "float16")
    b = cfg.train.batch_size
    loader = DataLoader(
        TensorDataset(torch.from_numpy(train)), batch_size=b, shuffle=True, drop_last=True
    )
    generator = torch.Generator(device).manual_seed(cfg.train.seed)

    def batches() -> Iterator[list[torch.Tensor]]:
        # epoch after epoch, as `for epoch ...: for x in loader` would: each epoch's new
        # iterator (and reshuffle) is paid inside the timed window, as it is in a real run
        while True:
            yield from loader

    it = batches()
    losses: list[torch.Tensor] = []
    data_wait_s = 0.0
    t_start = 0.0
    for i in range(warmup + steps):
        if i == warmup:  # steady state starts: the device has finished the warm-up steps
            sync(device)
            t_start, data_wait_s = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        (x,) = next(it)
        data_wait_s += time.perf_counter() - t0
        clean = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
        clean = clean.contiguous(memory_format=fmt)
        noisy = add_noise(clean, cfg.noise, generator).contiguous(memory_format=fmt)
        with autocast(device, cfg.runtime.precision):
            out = model(noisy)
        loss = criterion(out.float(), clean)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach())  # no .item(): that would wait for the device every step
    sync(device)
    window_s = time.perf_counter() - t_start
    return hand_figures(
        "torch",
        steps,
        warmup,
        b,
        window_s,
        data_wait_s,
        [float(v) for v in losses],
        device=str(device),
        gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        version=torch.__version__,
        threads=torch.get_num_threads(),
    )


def main(argv: list[str] | None = None) -> None:
    handwritten_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
