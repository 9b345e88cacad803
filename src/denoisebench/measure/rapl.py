"""CPU package energy from Linux RAPL (/sys/class/powercap), where readable.

Each top-level domain `intel-rapl:<k>` is one CPU package (socket) of the host, and its
`energy_uj` counts the energy of the whole package, whatever runs on it: every process on a
host reads the same counters. A process therefore reports its reading per package
(`package_energy_j`, keyed by the domain's folder name), and the epoch counts each package of
each host once (core.epochs.cpu_energy_once), whichever rank took the reading.

`DENOISEBENCH_RAPL_ROOT` points a run at another powercap tree: how the tests give a real
multi-process run a counter they control (RAPL is rarely readable on shared machines).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

RAPL_ROOT = Path("/sys/class/powercap")
RAPL_ROOT_ENV = "DENOISEBENCH_RAPL_ROOT"
"""For tests: the powercap folder to read instead of RAPL_ROOT."""


def rapl_root(env: Mapping[str, str] | None = None) -> Path:
    """The powercap folder a run reads: RAPL_ROOT_ENV's where set, else RAPL_ROOT."""
    env = os.environ if env is None else env
    return Path(env[RAPL_ROOT_ENV]) if env.get(RAPL_ROOT_ENV) else RAPL_ROOT


def rapl_energy_j(start_uj: int, end_uj: int, max_range_uj: int) -> float:
    """Joules between two readings of a RAPL energy_uj counter (wraps at max_energy_range_uj)."""
    return ((end_uj - start_uj) % (max_range_uj + 1)) / 1e6


def rapl_domains(root: Path = RAPL_ROOT) -> tuple[list[Path], str | None]:
    """Readable top-level RAPL package domains, or why there are none."""
    if not root.exists():
        return [], f"no {root} (no RAPL on this machine or kernel)"
    domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not domains:
        return [], f"no package domains under {root}"
    try:
        for d in domains:
            int((d / "energy_uj").read_text())
            int((d / "max_energy_range_uj").read_text())
    except (OSError, ValueError) as e:
        return [], f"RAPL not readable: {e}"
    return domains, None


def read_counters(domains: list[Path]) -> list[int]:
    """Each domain's energy_uj now."""
    return [int((d / "energy_uj").read_text()) for d in domains]


def package_energy_j(domains: list[Path], start_uj: list[int]) -> dict[str, float]:
    """Joules of each package since `start_uj` (read_counters), by the domain's folder name."""
    end = read_counters(domains)
    ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
    return {
        d.name: rapl_energy_j(a, b, r)
        for d, a, b, r in zip(domains, start_uj, end, ranges, strict=True)
    }
