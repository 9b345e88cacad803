"""Sweeps: framework x devices x batch size, each element trained into its own run folder.

A sweep profile (profiles/sweeps/<name>.toml) names a base run profile, the values to sweep, and
overrides for every element:

    [sweep]
    profile = "default"
    frameworks = ["torch", "tf"]
    devices = [1, 2]
    batch_sizes = [32, 64]      # per device, as --batch-size

    [set]                       # as --set section.key=value, for every element
    "train.epochs" = 3

`python -m launch --sweep default` (or a path to a TOML file) runs the elements here one after the other, or
with --slurm submits them as job arrays (one array per framework and device count, since the
tasks per node differ). Each element writes results/<sweep-id>/<framework>-<N>dev-b<B>/.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoisebench.core.config import PROFILES_DIR, ConfigError

FRAMEWORK_CHOICES = ("torch", "tf")
SWEEPS_DIR = PROFILES_DIR / "sweeps"


@dataclass(frozen=True)
class SweepElement:
    framework: str
    devices: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.devices}dev-b{self.batch_size}"


@dataclass(frozen=True)
class Sweep:
    profile: str
    frameworks: tuple[str, ...]
    devices: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    overrides: tuple[str, ...]
    """section.key=value strings, applied to every element."""

    def elements(self) -> list[SweepElement]:
        return [
            SweepElement(f, d, b)
            for d in self.devices
            for b in self.batch_sizes
            for f in self.frameworks
        ]


def _int_list(raw: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    values = raw.get(key)
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    ):
        raise ConfigError(
            f"{where}: [sweep].{key} must be a non-empty list of integers >= 1, got {values!r}"
        )
    return tuple(values)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep profile; errors name the file and the key."""
    given = Path(path)
    path = given if given.suffix == ".toml" or "/" in str(given) else SWEEPS_DIR / f"{given}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.toml")))
        raise ConfigError(f"sweep {path}: no such file (sweeps in {SWEEPS_DIR}: {known})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - {"sweep", "set"})
    if unknown or "sweep" not in raw:
        raise ConfigError(
            f"{path}: a sweep has a [sweep] table and an optional [set] table; found {sorted(raw)}"
        )
    sweep = raw["sweep"]
    extra = sorted(set(sweep) - {"profile", "frameworks", "devices", "batch_sizes"})
    if extra:
        raise ConfigError(
            f"{path}: unknown key(s) [sweep].{', '.join(extra)}; known: profile, "
            "frameworks, devices, batch_sizes"
        )
    frameworks = sweep.get("frameworks", list(FRAMEWORK_CHOICES))
    if (
        not isinstance(frameworks, list)
        or not frameworks
        or any(f not in FRAMEWORK_CHOICES for f in frameworks)
    ):
        raise ConfigError(
            f"{path}: [sweep].frameworks must list torch and/or tf, got {frameworks!r}"
        )
    overrides = tuple(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in raw.get("set", {}).items()
    )
    return Sweep(
        profile=str(sweep.get("profile", "default")),
        frameworks=tuple(frameworks),
        devices=_int_list(sweep, "devices", str(path)),
        batch_sizes=_int_list(sweep, "batch_sizes", str(path)),
        overrides=overrides,
    )
