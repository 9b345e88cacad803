"""Energy counted once across ranks: each CPU package of each host, and each physical GPU, once
in an epoch's figures, whichever rank read it (core.epochs.cpu_energy_once, once_per_gpu).

Every rank reads its whole host's RAPL packages and the whole of each GPU it drives, so summing
the ranks' rows counts a shared counter once per rank. The rows as data first, then a real
2-rank torchrun on CPU whose RAPL counter is a fake powercap tree (DENOISEBENCH_RAPL_ROOT) that
this test advances at a known rate while the run trains.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from denoisebench.core.config import load_config
from denoisebench.core.epochs import cpu_energy_once, measured_fields, once_per_gpu
from denoisebench.core.records import read_json, read_jsonl
from denoisebench.measure.gpus import gpu_identity
from denoisebench.measure.profiler import Profiler
from denoisebench.measure.rapl import RAPL_ROOT_ENV
from denoisebench.trainer.session import measured

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"


def host_row(rank: int, host: str, packages: dict[str, float]) -> dict[str, Any]:
    """A profiler host row as Profiler.window_end writes it (the figures that matter here)."""
    return {
        "rank": rank,
        "host": host,
        "window_s": 10.0,
        "cpu_util_pct": 50.0,
        "rss_peak_gib": 1.0,
        "cpu_energy_j": sum(packages.values()),
        "cpu_energy_packages_j": packages,
        "cpu_energy_reason": None,
    }


def gpu_row(rank: int, host: str, gpu_id: str | None, index: int, energy_j: float) -> dict:
    return {
        "rank": rank,
        "host": host,
        "device_index": index,
        "gpu_id": gpu_id,
        "device_name": H100,
        "energy_j": energy_j,
        "energy_method": "nvml_energy_counter",
        "energy_above_idle_j": energy_j - 10.0,
        "power_mean_w": energy_j / 10.0,
        "util_mean_pct": 50.0,
    }


def steps(ranks: int) -> list[dict[str, Any]]:
    return [
        {"step": s, "rank": r, "batch_size": 8, "step_time_s": 0.5, "data_wait_s": 0.0}
        for r in range(ranks)
        for s in range(4)
    ]


def fields(devices: list[dict], hosts: list[dict], ranks: int) -> dict[str, Any]:
    """The EPOCH record's energy fields of these profiler rows (no warm-up steps)."""
    cfg = load_config("smoke")
    cfg = replace(cfg, profiler=replace(cfg.profiler, warmup_steps=0))
    return measured_fields(steps(ranks), measured(cfg, devices, hosts, world_size=ranks))


def test_two_ranks_on_one_node_count_its_cpu_packages_once():
    # both ranks read the node's two packages over (almost) the same window
    rank0 = host_row(0, "n9", {"intel-rapl:0": 100.0, "intel-rapl:1": 80.0})
    rank1 = host_row(1, "n9", {"intel-rapl:0": 100.5, "intel-rapl:1": 80.5})
    assert cpu_energy_once([rank1, rank0]) == 180.0  # rank 0's reading, not 361
    assert fields([], [rank0, rank1], 2)["cpu_energy_j"] == 180.0
    # a second node's packages are its own: once each as well
    rank2 = host_row(2, "n10", {"intel-rapl:0": 70.0, "intel-rapl:1": 60.0})
    rank3 = host_row(3, "n10", {"intel-rapl:0": 71.0, "intel-rapl:1": 61.0})
    assert cpu_energy_once([rank0, rank1, rank2, rank3]) == 180.0 + 130.0
    # rows without their packages: one reading of the whole host each
    bare = [{k: v for k, v in r.items() if k != "cpu_energy_packages_j"} for r in (rank0, rank1)]
    assert cpu_energy_once(bare) == 180.0
    # a process without a reading: missing, never a partial sum
    rank1_blind = rank1 | {"cpu_energy_j": None, "cpu_energy_reason": "RAPL not readable"}
    assert cpu_energy_once([rank0, rank1_blind]) is None


def test_each_physical_gpu_is_counted_once_by_its_identity_not_its_index():
    uuid = "GPU-1a2b3c4d"
    # two ranks driving one GPU (MIG slices of it, or sharing it): one GPU's energy
    shared = [gpu_row(0, "n9", uuid, 0, 200.0), gpu_row(1, "n9", uuid, 0, 201.0)]
    out = fields(shared, [], 2)
    assert out["gpu_energy_j"] == 200.0
    assert out["gpu_energy_above_idle_j"] == 190.0
    assert out["gpu_power_mean_w"] == 20.0
    # two ranks each confined to its own GPU (SLURM's device cgroup): both see NVML index 0,
    # and are two GPUs
    confined = [gpu_row(0, "n9", "GPU-aaaa", 0, 200.0), gpu_row(1, "n9", "GPU-bbbb", 0, 150.0)]
    assert fields(confined, [], 2)["gpu_energy_j"] == 350.0
    assert [d["rank"] for d in once_per_gpu([*confined, *shared][::-1])] == [0, 0, 1]
    # no identity from NVML: each row is its own GPU (never merged on a guess)
    unknown = [gpu_row(0, "n9", None, 0, 200.0), gpu_row(1, "n9", None, 0, 150.0)]
    assert fields(unknown, [], 2)["gpu_energy_j"] == 350.0


def test_the_profiler_rows_carry_host_gpu_identity_and_packages(tmp_path):
    class Nvml:
        NVML_TEMPERATURE_GPU, NVML_CLOCK_SM = 0, 1

        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
            return i

        def nvmlDeviceGetUUID(self, h: int) -> bytes:
            return f"GPU-{h:04d}".encode()  # older pynvml: bytes

        def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
            return 5_000

        def __getattr__(self, name: str) -> Any:  # every other reading: not supported
            def unsupported(*_: Any) -> Any:
                raise RuntimeError(f"{name}: NotSupported")

            return unsupported

    class NoUuid(Nvml):
        def nvmlDeviceGetUUID(self, h: int) -> bytes:
            raise RuntimeError("NotSupported")

        def nvmlDeviceGetPciInfo(self, h: int) -> Any:
            return type("Pci", (), {"busId": b"00000000:3B:00.0"})()

    assert gpu_identity(Nvml(), 3) == "GPU-0003"
    assert gpu_identity(NoUuid(), 3) == "pci:00000000:3B:00.0"
    root = tmp_path / "powercap" / "intel-rapl:0"
    root.mkdir(parents=True)
    (root / "energy_uj").write_text("1000000\n")
    (root / "max_energy_range_uj").write_text("262143328850\n")
    prof = Profiler(devices=[1], nvml=Nvml(), rapl_root=root.parent)
    mark = prof.window_start()
    (root / "energy_uj").write_text("3000000\n")
    [device], host = prof.window_end(mark)
    assert (device["host"], device["gpu_id"]) == (socket.gethostname(), "GPU-0001")
    assert host["host"] == socket.gethostname()
    assert host["cpu_energy_packages_j"] == {"intel-rapl:0": 2.0} and host["cpu_energy_j"] == 2.0


WATTS = 10.0


def advance_counter(energy: Path, stop: threading.Event) -> None:
    """A RAPL package drawing WATTS: energy_uj rewritten every 10 ms, atomically (a reader
    opens either the old file or the new one)."""
    t0, tmp = time.monotonic(), energy.with_name(".energy_uj.tmp")
    while not stop.wait(0.01):
        tmp.write_text(f"{int((time.monotonic() - t0) * WATTS * 1e6)}\n")
        os.replace(tmp, energy)


def test_a_two_rank_run_on_one_node_reads_its_cpu_energy_once(tmp_path):
    """A real torchrun of 2 gloo ranks on this machine, its RAPL counter a fake package that
    draws 10 W: each epoch's cpu_energy_j is one rank's reading (rank 0's), not the two ranks'
    sum. The run's conditions are sampled once, by rank 0 (the node's first rank)."""
    package = tmp_path / "powercap" / "intel-rapl:0"
    package.mkdir(parents=True)
    (package / "energy_uj").write_text("0\n")
    (package / "max_energy_range_uj").write_text("262143328850\n")
    stop = threading.Event()
    writer = threading.Thread(target=advance_counter, args=(package / "energy_uj", stop))
    writer.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "launch", "--profile", "smoke", "--framework", "torch",
             "--epochs", "2", "--gpus", "2", "--batch-size", "8",
             "--results", str(tmp_path), "--run-id", "two"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**os.environ, RAPL_ROOT_ENV: str(package.parent), "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
    finally:
        stop.set()
        writer.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "two" / "torch"
    epochs, hosts = read_jsonl(folder / "epochs.jsonl"), read_jsonl(folder / "hosts.jsonl")
    assert len(epochs) == 2
    for e in epochs:
        rows = sorted((h for h in hosts if h["epoch"] == e["epoch"]), key=lambda h: h["rank"])
        assert [h["rank"] for h in rows] == [0, 1]
        assert {h["host"] for h in rows} == {socket.gethostname()}
        readings = [h["cpu_energy_j"] for h in rows]
        assert all(r > 0 for r in readings), readings
        assert e["cpu_energy_j"] == readings[0]  # rank 0's reading of the one package
        # ... which is about 10 W over the epoch's window, not twice that
        assert e["cpu_energy_j"] < 1.5 * WATTS * rows[0]["window_s"] + 0.5, (e, rows)
        assert e["cpu_energy_j"] < 0.75 * sum(readings)
    summary = read_json(folder / "summary.json")
    [node] = summary["conditions"]["hosts"]
    assert node["host"] == socket.gethostname()
    assert node["samples"] == summary["conditions"]["samples"] >= 1
    assert (folder / "conditions.jsonl").exists()
    assert not list(folder.glob("conditions.*.jsonl"))  # rank 1 shares the node: no sampler
