"""Sweeps: the folder and the elements of a sweep profile (framework x devices x batch size),
each element's config resolved before anything runs, and each element's launch options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from denoisebench.core.config import Config, ConfigError, load_config, parse_overrides
from denoisebench.core.records import atomic_write_text, new_run_id
from denoisebench.core.sweep import load_sweep
from launch.folders import mode_target
from launch.options import build_parser


def element_args(
    args: argparse.Namespace, sweep: Any, el: Any, sweep_dir: Path
) -> argparse.Namespace:
    """The launch options of one sweep element: the parser's defaults, the sweep's profile and
    overrides, the element's framework, batch size and devices, the sweep's --mode."""
    el_args = build_parser().parse_args([])
    el_args.profile, el_args.set = sweep.profile, list(sweep.overrides)
    el_args.framework, el_args.batch_size = el.framework, el.batch_size
    el_args.results, el_args.run_id = sweep_dir, el.name
    el_args.gpus = el.devices if el.devices > 1 else None
    el_args.mode, el_args.verbose = args.mode, args.verbose
    return el_args


def prepare_sweep(args: argparse.Namespace) -> tuple[Any, Path, list[Any], dict[str, Config]]:
    """The sweep, its folder (made here, atomically) with sweep.json, its elements and each
    element's config. Every element is resolved first: a bad value stops the sweep before the
    folder exists."""
    sweep = load_sweep(args.sweep)
    sweep_dir = args.results / (args.run_id or new_run_id(f"sweep-{Path(args.sweep).stem}"))
    if sweep_dir.exists():
        raise ConfigError(f"{sweep_dir} exists; pick another --run-id")
    elements = sweep.elements()
    configs = {}
    for el in elements:
        overrides = parse_overrides([*sweep.overrides, f"train.batch_size={el.batch_size}"])
        configs[el.name] = load_config(
            sweep.profile, overrides, args.mode or "", **mode_target(args, el.devices)
        )
    try:  # atomic: of two sweeps started at once with one --run-id, the second stops here
        sweep_dir.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"{sweep_dir} exists; pick another --run-id") from None
    names = [el.name for el in elements]
    text = json.dumps({"sweep": str(args.sweep), "elements": names}, indent=2) + "\n"
    atomic_write_text(sweep_dir / "sweep.json", text)
    return sweep, sweep_dir, elements, configs
