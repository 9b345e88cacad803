"""Profiler, energy arithmetic and the EPOCH speed/energy fields, checked with known numbers.

Without a GPU the profiler is driven by `FakeNvml`, a stand-in whose counters the test sets,
so every energy figure has an exact expected value. The one test on real NVML is marked `gpu`
and skips with the reason where NVML cannot be loaded.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from denoisebench.core.config import Config, load_config
from denoisebench.core.epochs import Measured, measured_fields, step_stats
from denoisebench.core.spec import ModelSpec
from denoisebench.measure import gpus, profiler
from denoisebench.measure.gpus import nvml_indices
from denoisebench.measure.hardware import peak_flops
from denoisebench.measure.profiler import (
    COUNTER_WRAP,
    Profiler,
    above_idle_j,
    counter_energy_j,
    integrate_power_j,
    maybe_profile,
    percentile,
)
from denoisebench.measure.rapl import rapl_energy_j
from denoisebench.trainer.session import measured

H100 = "NVIDIA H100 80GB HBM3"


# --- a stand-in NVML whose readings the test sets ----------------------------------------------


class NVMLError(Exception):
    """What pynvml raises for a failed or unsupported call (e.g. NVMLError_NotSupported)."""


@dataclass(frozen=True)
class Handle:
    index: int


class FakeNvml:
    """The NVML calls GpuSampler and Profiler make, reading values the test sets per device.

    An energy counter of None raises (NotSupported); `failing` holds (function, device) pairs
    that raise.
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, devices: int = 2) -> None:
        ids = range(devices)
        self.name: dict[int, str | bytes] = {i: H100 for i in ids}
        self.power_mw: dict[int, int] = dict.fromkeys(ids, 100_000)
        self.util_pct: dict[int, int] = dict.fromkeys(ids, 50)
        self.mem_used_bytes: dict[int, int] = dict.fromkeys(ids, 2**30)
        self.temp_c: dict[int, int] = dict.fromkeys(ids, 40)
        self.sm_clock_mhz: dict[int, int] = dict.fromkeys(ids, 1500)
        self.energy_mj: dict[int, int | None] = dict.fromkeys(ids, 1_000_000)
        self.failing: set[tuple[str, int]] = set()

    def _call(self, fn: str, h: Handle) -> int:
        assert isinstance(h, Handle), f"{fn} was given {h!r}, not a handle"
        if (fn, h.index) in self.failing:
            raise NVMLError(f"{fn}: failed on GPU {h.index}")
        return h.index

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        return Handle(index)

    def nvmlDeviceGetName(self, h: Handle) -> str | bytes:
        return self.name[self._call("name", h)]

    def nvmlDeviceGetPowerUsage(self, h: Handle) -> int:
        return self.power_mw[self._call("power", h)]

    def nvmlDeviceGetUtilizationRates(self, h: Handle) -> Any:
        return SimpleNamespace(gpu=self.util_pct[self._call("util", h)], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: Handle) -> Any:
        return SimpleNamespace(used=self.mem_used_bytes[self._call("mem", h)], total=80 * 2**30)

    def nvmlDeviceGetTemperature(self, h: Handle, sensor: int) -> int:
        i = self._call("temp", h)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError(f"sensor {sensor} is not NVML_TEMPERATURE_GPU")
        return self.temp_c[i]

    def nvmlDeviceGetClockInfo(self, h: Handle, clock: int) -> int:
        i = self._call("clock", h)
        if clock != self.NVML_CLOCK_SM:
            raise NVMLError(f"clock {clock} is not NVML_CLOCK_SM")
        return self.sm_clock_mhz[i]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Handle) -> int:
        value = self.energy_mj[self._call("energy", h)]
        if value is None:
            raise NVMLError("NotSupported")
        return value


def wait_for_samples(prof: Profiler, after_s: float, n: int = 3, timeout_s: float = 5.0) -> None:
    """Wait until the sampler thread has read every device `n` times since `after_s`."""
    assert prof.sampler is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(
            sum(t > after_s for t in list(d.times_s)) >= n for d in prof.sampler.devices.values()
        ):
            return
        time.sleep(0.01)
    raise AssertionError(f"the sampler took fewer than {n} samples in {timeout_s}s")


def no_rapl(tmp_path: Path) -> Path:
    return tmp_path / "no-powercap"


# --- pure arithmetic -----------------------------------------------------------------------------


def test_counter_energy_is_the_difference_modulo_2_64():
    assert counter_energy_j(1_000, 3_500) == 2.5
    assert counter_energy_j(7, 7) == 0.0
    assert counter_energy_j(COUNTER_WRAP - 500, 1_500) == 2.0
    assert COUNTER_WRAP == 2**64
    assert counter_energy_j(900, 100, wrap=1_000) == 0.2


def test_integrate_power_of_a_constant_is_power_times_time():
    times, power = [0.0, 1.0, 2.0, 3.0], [100.0] * 4
    assert integrate_power_j(times, power, 0.0, 3.0) == 300.0
    assert integrate_power_j(times, power, 0.5, 2.5) == 200.0


def test_integrate_power_of_a_ramp_is_the_exact_trapezoid():
    times, power = [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 10.0, 20.0, 30.0, 40.0]
    assert integrate_power_j(times, power, 0.0, 4.0) == 0.5 * (0.0 + 40.0) * 4.0  # 80 J


def test_integrate_power_interpolates_at_window_edges_between_samples():
    # Tent 0, 100, 100, 0 W at 0, 1, 2, 3 s, window [0.5, 2.25]: the edges interpolate to
    # 50 W and 75 W, so the trapezoids are 0.5*(50+100)/2 + 1*(100+100)/2 + 0.25*(100+75)/2.
    times, power = [0.0, 1.0, 2.0, 3.0], [0.0, 100.0, 100.0, 0.0]
    assert integrate_power_j(times, power, 0.5, 2.25) == 37.5 + 100.0 + 21.875
    # a window between two samples: 150 W at both edges, 200 W at the peak inside
    assert integrate_power_j([0.0, 2.0, 4.0], [100.0, 200.0, 100.0], 1.0, 3.0) == 350.0


def test_integrate_power_holds_end_values_outside_the_samples():
    # 100 W held over [0, 1], ramp 100 -> 200 W over [1, 2], 200 W held over [2, 4]
    assert integrate_power_j([1.0, 2.0], [100.0, 200.0], 0.0, 4.0) == 100.0 + 150.0 + 400.0
    assert integrate_power_j([1.0], [60.0], 0.0, 0.5) == 30.0


def test_integrate_power_of_no_samples_raises_and_an_empty_window_is_zero():
    with pytest.raises(ValueError, match="no power samples"):
        integrate_power_j([], [], 0.0, 1.0)
    assert integrate_power_j([0.0, 1.0], [100.0, 100.0], 2.0, 2.0) == 0.0


def test_above_idle_subtracts_idle_power_times_duration():
    assert above_idle_j(500.0, 50.0, 4.0) == 300.0
    assert above_idle_j(100.0, 50.0, 4.0) == -100.0  # reported as measured, not clamped
    assert above_idle_j(500.0, None, 4.0) is None


def test_rapl_energy_wraps_modulo_max_range_plus_one():
    assert rapl_energy_j(1_000_000, 3_500_000, 262_143_328_850) == 2.5
    assert rapl_energy_j(900_000, 150_000, 999_999) == 0.25
    # max_energy_range_uj is the largest value the counter reads: max -> 0 is one step
    assert rapl_energy_j(999_999, 0, 999_999) == 1e-6


def test_percentile_is_numpy_linear_and_none_when_empty():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85, rel=1e-12)
    assert percentile([], 50) is None


# --- CUDA ordinals to NVML indices, on a stand-in NVML that knows UUIDs and MIG devices ----------


@dataclass(frozen=True)
class MigHandle:
    parent: int
    index: int


class FakeNvmlIds:
    """The NVML calls nvml_indices makes: GPUs by index and by UUID, MIG devices by UUID."""

    def __init__(self, names: list[str], migs: dict[str, int] | None = None) -> None:
        self.names = names
        self.uuids = [
            f"GPU-{i}a{i}b{i}c{i}d-0000-1111-2222-33334444555{i}" for i in range(len(names))
        ]
        self.migs = migs or {}  # MIG UUID -> parent GPU index

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        return Handle(index)

    def nvmlDeviceGetName(self, h: Handle) -> bytes:
        return self.names[h.index].encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, h: Handle) -> str:
        return self.uuids[h.index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Handle | MigHandle:
        if uuid in self.uuids:
            return Handle(self.uuids.index(uuid))
        if uuid in self.migs:
            return MigHandle(self.migs[uuid], list(self.migs).index(uuid))
        raise NVMLError("Not Found")

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: MigHandle) -> Handle:
        assert isinstance(h, MigHandle), f"{h!r} is not a MIG device handle"
        return Handle(h.parent)

    def nvmlDeviceGetIndex(self, h: Handle | MigHandle) -> int:
        return h.index  # a MIG handle's own index within its GPU, as NVML gives it


FOUR_H100 = [H100] * 4
PCI_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_nvml_indices_follow_an_index_mask():
    nvml = FakeNvmlIds(FOUR_H100)
    assert nvml_indices([0, 1], env={"CUDA_VISIBLE_DEVICES": "2,3"}, nvml=nvml) == [2, 3]
    assert nvml_indices([1], env={"CUDA_VISIBLE_DEVICES": "5, 7"}, nvml=nvml) == [7]
    assert nvml_indices([], env={"CUDA_VISIBLE_DEVICES": "GPU-unknown"}, nvml=nvml) == []


def test_nvml_indices_without_a_mask_are_the_cuda_ordinals():
    nvml = FakeNvmlIds(FOUR_H100)
    assert nvml_indices([0], env={}, nvml=nvml) == [0]
    assert nvml_indices([3, 1], env={"CUDA_VISIBLE_DEVICES": ""}, nvml=nvml) == [3, 1]


def test_nvml_indices_resolve_gpu_uuids_through_nvml():
    nvml = FakeNvmlIds(FOUR_H100)
    g = nvml.uuids
    env = PCI_ORDER | {"CUDA_VISIBLE_DEVICES": f"{g[3]},{g[1]}"}
    assert nvml_indices([0, 1], env=env, nvml=nvml) == [3, 1]
    # CUDA takes a unique prefix of a UUID, and UUIDs and indices mixed
    env = PCI_ORDER | {"CUDA_VISIBLE_DEVICES": f"{g[2][:10]},0"}
    assert nvml_indices([0, 1], env=env, nvml=nvml) == [2, 0]


def test_nvml_indices_map_mig_devices_to_their_gpu():
    migs = {"MIG-11111111-aaaa-bbbb-cccc-000000000001": 2}
    migs["MIG-11111111-aaaa-bbbb-cccc-000000000002"] = 2
    migs["MIG-22222222-aaaa-bbbb-cccc-000000000001"] = 3
    nvml = FakeNvmlIds(FOUR_H100, migs)
    a, b, c = migs
    env = {"CUDA_VISIBLE_DEVICES": f"{c},{a},{b}"}
    # power and energy exist for the whole GPU only: two MIG devices of GPU 2 both read GPU 2
    assert nvml_indices([0, 1, 2], env=env, nvml=nvml) == [3, 2, 2]
    # drivers before R470: MIG-<GPU uuid>/<GPU instance>/<compute instance>
    env = {"CUDA_VISIBLE_DEVICES": f"MIG-{nvml.uuids[1]}/7/0"}
    assert nvml_indices([0], env=env, nvml=nvml) == [1]


def test_nvml_indices_refuse_what_they_cannot_map():
    nvml = FakeNvmlIds(FOUR_H100)
    unknown = "GPU-ffffffff-0000-1111-2222-333344445555"
    with pytest.raises(ValueError, match=rf"CUDA_VISIBLE_DEVICES='{unknown}'.*Not Found"):
        nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": unknown}, nvml=nvml)
    with pytest.raises(ValueError, match=r"MIG-ffff.*CUDA device 0.*Not Found"):
        nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": "MIG-ffff"}, nvml=nvml)
    with pytest.raises(ValueError, match=r"GPUs \[0, 1, 2, 3\] all start with it"):
        nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": "GPU-"}, nvml=nvml)
    with pytest.raises(ValueError, match=r"CUDA device 2 is past the end of CUDA_VISIBLE_DEVICES"):
        nvml_indices([2], env={"CUDA_VISIBLE_DEVICES": "4,5"}, nvml=nvml)
    with pytest.raises(ValueError, match=r"'NoDevFiles' \(CUDA device 0\) is neither"):
        nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, nvml=nvml)


def test_nvml_indices_load_nvml_themselves_and_fall_back_without_it(monkeypatch):
    nvml = FakeNvmlIds(FOUR_H100)
    env = {"CUDA_VISIBLE_DEVICES": nvml.uuids[2]}
    monkeypatch.setattr(gpus, "load_nvml", lambda: (nvml, None))
    assert nvml_indices([0], env=env) == [2]
    # no NVML: the profiler records GPU figures as missing, so the ordinal stands in
    monkeypatch.setattr(gpus, "load_nvml", lambda: (None, "NVML unavailable: test"))
    assert nvml_indices([0], env=env) == [0]


def test_nvml_indices_warn_when_cuda_order_may_differ_from_nvml_order():
    mixed = FakeNvmlIds(["NVIDIA A100-SXM4-80GB", H100])
    with pytest.warns(UserWarning, match="CUDA_DEVICE_ORDER is not PCI_BUS_ID"):
        assert nvml_indices([1], env={}, nvml=mixed) == [1]  # the best guess, flagged
    with pytest.warns(UserWarning, match="NVIDIA A100-SXM4-80GB, NVIDIA H100 80GB HBM3"):
        nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": "1"}, nvml=mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nvml_indices([1], env=PCI_ORDER, nvml=mixed) == [1]  # the orders agree
        assert nvml_indices([0], env={"CUDA_VISIBLE_DEVICES": mixed.uuids[1]}, nvml=mixed) == [1]
        assert nvml_indices([1], env={}, nvml=FakeNvmlIds(FOUR_H100)) == [1]  # one model


# --- the profiler on a stand-in NVML --------------------------------------------------------------


def test_energy_counter_difference_idle_power_and_wrap(tmp_path):
    fake = FakeNvml()
    fake.name[0] = H100.encode()  # older pynvml returns bytes
    fake.power_mw = {0: 50_000, 1: 80_000}
    fake.energy_mj = {0: 1_000_000, 1: COUNTER_WRAP - 500}
    with maybe_profile(
        True,
        devices=[0, 1],
        nvml=fake,
        interval_s=0.02,
        spool=tmp_path / "gpu.jsonl",
        rapl_root=no_rapl(tmp_path),
        min_window_s=60.0,
    ) as prof:
        prof.start_idle(0.2)
        mark = prof.window_start()  # ends the idle window
        fake.energy_mj = {0: 1_250_500, 1: 1_500}
        rows, host = prof.window_end(mark)

    assert prof.idle_power_w == pytest.approx({0: 50.0, 1: 80.0}, rel=1e-12)
    assert [r["device_index"] for r in rows] == [0, 1]
    assert [r["device_name"] for r in rows] == [H100, H100]
    assert [r["energy_j"] for r in rows] == [250.5, 2.0]
    assert [r["energy_method"] for r in rows] == ["nvml_energy_counter"] * 2
    for r in rows:
        assert r["idle_power_w"] == prof.idle_power_w[r["device_index"]]
        assert r["idle_window_s"] == prof.idle_window_s > 0
        assert r["energy_above_idle_j"] == r["energy_j"] - r["idle_power_w"] * r["window_s"]
        assert r["window_s"] == host["window_s"] > 0
        assert r["energy_window_too_short"] is True
        assert r["rank"] == 0
    assert "gpu_reason" not in host


def test_idle_not_measured_leaves_above_idle_missing(tmp_path):
    fake = FakeNvml(devices=1)
    prof = Profiler(devices=[0], nvml=fake, rapl_root=no_rapl(tmp_path))
    prof.start_idle(0)
    assert prof.idle_power_w == {0: None}
    assert prof.idle_reason == "idle power not measured (profile.idle_s = 0)"
    mark = prof.window_start()
    fake.energy_mj[0] = 1_003_000
    [row], _ = prof.window_end(mark)
    assert row["energy_j"] == 3.0
    assert row["idle_power_w"] is None
    assert row["energy_above_idle_j"] is None


def test_idle_power_is_measured_without_holding_the_run(tmp_path):
    """start_idle returns at once (it used to sleep profiler.idle_s); the first window_start
    ends the idle window, and its power is the samples' mean over the window's last `seconds`
    only: a busier moment of the start-up before them is left out. No sampler thread here:
    the samples are the ones taken below, where they are taken."""
    averaged = {}
    for seconds in (0.05, 60.0):
        fake = FakeNvml(devices=1)
        fake.power_mw[0] = 300_000  # the start-up's last work
        prof = Profiler(devices=[0], nvml=fake, rapl_root=no_rapl(tmp_path))
        t0 = time.perf_counter()
        prof.start_idle(seconds)
        assert time.perf_counter() - t0 < 0.5 and prof.idle_power_w == {}  # nothing waited
        time.sleep(0.2)
        fake.power_mw[0] = 50_000  # idle
        assert prof.sampler is not None
        prof.sampler.sample()
        time.sleep(0.1)
        mark = prof.window_start()
        averaged[seconds] = (prof.idle_power_w[0], prof.idle_window_s)
        fake.energy_mj[0] += 10_000
        [row], _ = prof.window_end(mark)
        assert row["idle_power_w"] == prof.idle_power_w[0]
        assert row["idle_window_s"] == prof.idle_window_s
    assert averaged[0.05][0] == pytest.approx(50.0, rel=1e-9)
    assert averaged[0.05][1] == pytest.approx(0.05, rel=1e-9)
    # the whole window from start_idle: 0.2 s moving from 300 to 50 W, 0.1 s at 50 W
    assert 100.0 < averaged[60.0][0] < 250.0 and 0.3 <= averaged[60.0][1] < 60.0


def test_missing_energy_counter_falls_back_to_power_integration(tmp_path):
    fake = FakeNvml()
    fake.energy_mj = {0: 0, 1: None}  # 0 and NotSupported both mean "no counter"
    fake.power_mw = {0: 240_000, 1: 120_000}
    with maybe_profile(
        True,
        devices=[0, 1],
        nvml=fake,
        interval_s=0.02,
        rapl_root=no_rapl(tmp_path),
        min_window_s=0.01,
    ) as prof:
        mark = prof.window_start()
        wait_for_samples(prof, mark.t_s)
        rows, _ = prof.window_end(mark)

    assert mark.energy_mj == {0: None, 1: None}
    for r, watts in zip(rows, [240.0, 120.0], strict=True):
        assert r["energy_method"] == "power_integration"
        assert r["energy_j"] == pytest.approx(watts * r["window_s"], rel=1e-9)
        assert r["energy_window_too_short"] is False
        assert r["energy_above_idle_j"] is None  # idle never measured


def test_no_counter_and_no_power_gives_missing_energy_with_reason(tmp_path):
    fake = FakeNvml(devices=1)
    fake.energy_mj[0] = None
    fake.failing = {("power", 0)}
    prof = Profiler(devices=[0], nvml=fake, rapl_root=no_rapl(tmp_path))
    mark = prof.window_start()
    [row], host = prof.window_end(mark)
    assert row["energy_j"] is None
    assert row["energy_method"] is None
    assert row["energy_above_idle_j"] is None
    assert row["power_mean_w"] is None
    m = Measured([row], [host], 0, 3.0, 67e12, None, 1)
    out = measured_fields([step(0, 0, 0.5)], m)
    assert out["gpu_energy_j"] is None
    assert out["gpu_energy_per_image_j"] is None
    assert out["gpu_energy_reason"] == "a device had no energy counter and no power samples"


def test_energy_window_too_short_flag_follows_min_window(tmp_path):
    flags = []
    for min_window_s in (30.0, 0.001):
        prof = Profiler(
            devices=[0], nvml=FakeNvml(1), rapl_root=no_rapl(tmp_path), min_window_s=min_window_s
        )
        mark = prof.window_start()
        time.sleep(0.01)
        [row], _ = prof.window_end(mark)
        assert row["window_s"] >= 0.01
        flags.append(row["energy_window_too_short"])
    assert flags == [True, False]


def test_window_statistics_come_from_the_samples(tmp_path):
    fake = FakeNvml()
    prof = Profiler(devices=[0, 1], nvml=fake, rapl_root=no_rapl(tmp_path))  # not started

    def set_readings(power_w: float, util: int, mem_gib: int, temp: int, clock: int) -> None:
        fake.power_mw[0] = int(power_w * 1000)
        fake.util_pct[0] = util
        fake.mem_used_bytes[0] = mem_gib * 2**30
        fake.temp_c[0] = temp
        fake.sm_clock_mhz[0] = clock

    # the window edges read values that leave every statistic unchanged whether they count or not
    set_readings(300.0, 40, 1, 50, 1500)
    mark = prof.window_start()
    for reading in [(100.0, 10, 1, 55, 1000), (200.0, 20, 3, 70, 1500), (600.0, 90, 2, 60, 2000)]:
        set_readings(*reading)
        prof.sampler.sample()
    set_readings(300.0, 40, 1, 50, 1500)
    rows, _ = prof.window_end(mark)

    assert rows[0]["samples"] >= 3
    assert {
        k: v for k, v in rows[0].items() if k.endswith(("_w", "_pct", "_gib", "_c", "_mhz"))
    } == {
        "idle_power_w": None,
        "power_mean_w": 300.0,
        "power_max_w": 600.0,
        "util_mean_pct": 40.0,
        "mem_used_max_gib": 3.0,
        "temp_max_c": 70.0,
        "sm_clock_mean_mhz": 1500.0,
    }
    # device 1 kept its defaults
    assert (rows[1]["power_mean_w"], rows[1]["power_max_w"]) == (100.0, 100.0)
    assert (rows[1]["util_mean_pct"], rows[1]["mem_used_max_gib"]) == (50.0, 1.0)
    assert (rows[1]["temp_max_c"], rows[1]["sm_clock_mean_mhz"]) == (40.0, 1500.0)


def test_window_edge_samples_count_in_the_window(tmp_path):
    prof = Profiler(devices=[0], nvml=FakeNvml(1), rapl_root=no_rapl(tmp_path))  # not started
    mark = prof.window_start()
    [row], _ = prof.window_end(mark)
    assert len(prof.sampler.devices[0].rows) == 2
    assert row["samples"] == 2
    assert row["power_mean_w"] == 100.0


def test_a_failing_nvml_call_gives_none_not_zero(tmp_path):
    fake = FakeNvml()
    fake.failing = {("temp", 1), ("clock", 1), ("util", 1), ("mem", 1)}
    prof = Profiler(
        devices=[0, 1], nvml=fake, spool=tmp_path / "gpu.jsonl", rapl_root=no_rapl(tmp_path)
    )
    mark = prof.window_start()
    prof.sampler.sample()
    rows, _ = prof.window_end(mark)
    prof.stop()

    assert rows[0]["temp_max_c"] == 40.0
    assert rows[0]["sm_clock_mean_mhz"] == 1500.0
    assert rows[1]["samples"] >= 1
    for key in ("temp_max_c", "sm_clock_mean_mhz", "util_mean_pct", "mem_used_max_gib"):
        assert rows[1][key] is None, key
    assert rows[1]["power_mean_w"] == 100.0
    spooled = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    dev1 = [r for r in spooled if r["device_index"] == 1]
    assert len(dev1) == 3
    assert all(r["temp_c"] is None and r["sm_clock_mhz"] is None for r in dev1)
    assert all(r["util_pct"] is None and r["mem_used_gib"] is None for r in dev1)
    assert all(r["temp_c"] == 40 and r["sm_clock_mhz"] == 1500 for r in spooled if r not in dev1)


def test_failing_name_call_falls_back_to_a_label(tmp_path):
    fake = FakeNvml()
    fake.failing = {("name", 1)}
    prof = Profiler(devices=[0, 1], nvml=fake, rapl_root=no_rapl(tmp_path))
    assert [d.name for d in prof.sampler.devices.values()] == [H100, "GPU 1"]


def test_sampler_stops_and_spool_keeps_every_sample_when_training_fails(tmp_path):
    spool = tmp_path / "gpu.jsonl"
    with (
        pytest.raises(RuntimeError, match="training failed"),
        maybe_profile(
            True,
            devices=[0, 1],
            nvml=FakeNvml(),
            interval_s=0.02,
            spool=spool,
            rank=3,
            rapl_root=no_rapl(tmp_path),
        ) as prof,
    ):
        assert prof.sampler._thread.is_alive()
        wait_for_samples(prof, 0.0, n=5)
        raise RuntimeError("training failed")

    sampler = prof.sampler
    assert not sampler._thread.is_alive()
    assert sampler.spool is None  # flushed and closed
    taken = {i: list(d.rows) for i, d in sampler.devices.items()}
    time.sleep(5 * sampler.interval_s)
    assert {i: d.rows for i, d in sampler.devices.items()} == taken  # nothing sampled after stop

    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len(spooled) == sum(len(rows) for rows in taken.values()) >= 10
    for i, rows in taken.items():
        assert [r for r in spooled if r["device_index"] == i] == rows
    assert {r["rank"] for r in spooled} == {3}
    assert all(r["power_w"] == 100.0 and r["mem_used_gib"] == 1.0 for r in spooled)


# --- no NVML -----------------------------------------------------------------------------------


def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiler, "load_nvml", lambda: (None, "NVML unavailable: test"))


def test_without_nvml_the_run_goes_on_and_gpu_figures_carry_the_reason(tmp_path, monkeypatch):
    no_nvml(monkeypatch)
    with maybe_profile(True, devices=[0], rapl_root=no_rapl(tmp_path)) as prof:
        assert prof.sampler is None
        prof.start_idle(1.0)  # returns at once: nothing to measure
        assert prof.idle_reason == "NVML unavailable: test"
        mark = prof.window_start()
        devices, host = prof.window_end(mark)
    assert devices == []
    assert host["gpu_reason"] == "NVML unavailable: test"

    cfg = load_config("smoke")
    out = measured_fields([step(0, 0, 0.5), step(1, 0, 0.5)], measured(cfg, [], [host], 1))
    assert out["gpu_energy_j"] is None
    assert out["gpu_energy_above_idle_j"] is None
    assert out["gpu_energy_method"] is None
    assert out["gpu_energy_reason"] == "NVML unavailable: test"
    assert out["mfu"] is None
    assert out["mfu_reason"] == "no GPU: no peak FLOP/s for this device"
    assert out["gpu_power_mean_w"] is None
    assert out["gpu_util_mean_pct"] is None


def test_cpu_only_profiler_says_there_is_no_gpu(tmp_path):
    prof = Profiler(devices=[], rapl_root=no_rapl(tmp_path))
    assert prof.sampler is None
    devices, host = prof.window_end(prof.window_start())
    assert devices == []
    assert host["gpu_reason"] == "no GPU: training on CPU"
    assert host["rss_peak_gib"] > 0
    assert host["cpu_util_pct"] >= 0


def test_explicit_nvml_reason_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(profiler, "load_nvml", lambda: (None, "NVML unavailable: from load"))
    prof = Profiler(devices=[0], nvml=None, nvml_reason="NVML unavailable: test")
    _, host = prof.window_end(prof.window_start())
    assert host["gpu_reason"] == "NVML unavailable: test"


# --- CPU energy from RAPL ----------------------------------------------------------------------


def fake_powercap(root: Path, packages: dict[str, tuple[int, int]]) -> Path:
    """A powercap folder: top-level packages (energy_uj, max_energy_range_uj) and a subdomain."""
    for name, (energy_uj, max_uj) in packages.items():
        (root / name).mkdir(parents=True)
        (root / name / "energy_uj").write_text(f"{energy_uj}\n")
        (root / name / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a core subdomain: already inside package 0, never added
    sub.mkdir()
    (sub / "energy_uj").write_text("5\n")
    (sub / "max_energy_range_uj").write_text("262143328850\n")
    return root


def test_rapl_cpu_energy_sums_packages_and_wraps(tmp_path):
    root = fake_powercap(
        tmp_path / "powercap",
        {"intel-rapl:0": (1_000_000, 262_143_328_850), "intel-rapl:1": (900_000, 999_999)},
    )
    prof = Profiler(devices=[], rapl_root=root)
    assert [p.name for p in prof.rapl] == ["intel-rapl:0", "intel-rapl:1"]
    mark = prof.window_start()
    (root / "intel-rapl:0" / "energy_uj").write_text("3500000\n")  # +2.5 J
    (root / "intel-rapl:1" / "energy_uj").write_text("150000\n")  # wraps: +0.25 J
    (root / "intel-rapl:0:0" / "energy_uj").write_text("99000000\n")  # ignored
    _, host = prof.window_end(mark)
    assert host["cpu_energy_j"] == 2.75
    assert host["cpu_energy_reason"] is None


def test_rapl_missing_folder_gives_missing_cpu_energy_with_reason(tmp_path):
    root = tmp_path / "powercap"
    prof = Profiler(devices=[], rapl_root=root)
    _, host = prof.window_end(prof.window_start())
    assert host["cpu_energy_j"] is None
    assert host["cpu_energy_reason"] == f"no {root} (no RAPL on this machine or kernel)"

    root.mkdir()
    prof = Profiler(devices=[], rapl_root=root)
    _, host = prof.window_end(prof.window_start())
    assert host["cpu_energy_j"] is None
    assert host["cpu_energy_reason"] == f"no package domains under {root}"


def test_rapl_unreadable_counter_gives_missing_cpu_energy_with_reason(tmp_path):
    root = tmp_path / "powercap"
    (root / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # tests run as root: chmod won't do
    prof = Profiler(devices=[], rapl_root=root)
    assert prof.rapl == []
    _, host = prof.window_end(prof.window_start())
    assert host["cpu_energy_j"] is None
    assert host["cpu_energy_reason"].startswith("RAPL not readable: ")
    assert "Is a directory" in host["cpu_energy_reason"]


# --- step statistics, throughput and MFU ------------------------------------------------------------


def step(
    step_index: int, rank: int, step_time_s: float, data_wait_s: float = 0.0, batch: int = 16
) -> dict[str, Any]:
    return {
        "step": step_index,
        "rank": rank,
        "batch_size": batch,
        "step_time_s": step_time_s,
        "data_wait_s": data_wait_s,
    }


# Two ranks, 2 warm-up steps of 9 s each, then 4 steady steps; times are binary fractions.
STEADY = {0: [0.125, 0.25, 0.375, 0.5], 1: [0.625, 0.75, 0.875, 1.0]}  # sums 1.25 s, 3.25 s


def two_rank_steps() -> list[dict[str, Any]]:
    rows = []
    for rank, times in STEADY.items():
        rows += [step(i, rank, 9.0, data_wait_s=5.0) for i in range(2)]
        rows += [step(2 + i, rank, t, data_wait_s=0.0625) for i, t in enumerate(times)]
    return rows


def test_step_stats_exclude_warmup_and_use_the_slowest_rank():
    stats = step_stats(two_rank_steps(), warmup_steps=2)
    steady_times = STEADY[0] + STEADY[1]
    assert stats["steady_steps"] == 4
    # sorted 0.125 .. 1.0 in eighths: p50 halfway between 0.5 and 0.625
    assert stats["step_time_p50_s"] == 0.5625 == np.percentile(steady_times, 50)
    assert stats["step_time_p95_s"] == pytest.approx(0.875 + 0.65 * 0.125, rel=1e-12)
    assert stats["step_time_p95_s"] == float(np.percentile(steady_times, 95))
    assert stats["data_wait_fraction"] == (8 * 0.0625) / 4.5
    # 8 steady rows x 16 images over the slower rank's 3.25 s
    assert stats["throughput_steady_img_s"] == 128 / 3.25
    rank0_times_world = (64 / 1.25) * 2
    assert stats["throughput_steady_img_s"] != pytest.approx(rank0_times_world)
    assert stats["steady_reason"] is None


def test_step_stats_of_an_all_warmup_epoch_are_missing_with_reason():
    stats = step_stats(two_rank_steps(), warmup_steps=10)
    assert stats == {
        "steady_steps": 0,
        "step_time_p50_s": None,
        "step_time_p95_s": None,
        "data_wait_fraction": None,
        "throughput_steady_img_s": None,
        "steady_reason": "every step of this epoch is warm-up",
    }


def smoke_config(warmup_steps: int = 2, tf32: bool = False) -> Config:
    cfg = load_config("smoke")
    return dataclasses.replace(
        cfg,
        runtime=dataclasses.replace(cfg.runtime, tf32=tf32),
        profiler=dataclasses.replace(cfg.profiler, warmup_steps=warmup_steps),
    )


def device_row(rank: int, name: str = H100, energy_j: float = 100.0) -> dict[str, Any]:
    return {
        "rank": rank,
        "device_index": 0,
        "device_name": name,
        "energy_j": energy_j,
        "energy_method": "nvml_energy_counter",
        "energy_above_idle_j": energy_j - 40.0,
        "energy_window_too_short": False,
        "power_mean_w": 250.0,
        "util_mean_pct": 80.0 + 10 * rank,
        "mem_used_max_gib": 4.0 + rank,
    }


def test_default_spec_forward_flops_by_hand():
    # 64x64x3 -> conv 32x32x32 -> 16x16x64 -> 8x8x128, then transposed back 16, 32, 64;
    # a transposed layer costs what its conv mirror does (2 x input pixels x 9 x c_in x c_out).
    k2 = 9
    conv = [(32, 3, 32), (16, 32, 64), (8, 64, 128)]  # (output size, c_in, c_out)
    transposed = [(8, 128, 64), (16, 64, 32), (32, 32, 3)]  # (input size, c_in, c_out)
    by_hand = sum(2 * s * s * k2 * ci * co for s, ci, co in conv + transposed)
    assert by_hand == 41_287_680
    assert ModelSpec().forward_flops_per_image() == by_hand


def test_mfu_against_the_h100_table_fp32_and_tf32():
    steps = two_rank_steps()
    forward = ModelSpec().forward_flops_per_image()
    rows = [device_row(0), device_row(1)]
    hosts = [{"rss_peak_gib": 1.5, "cpu_util_pct": 20.0, "cpu_energy_j": None}] * 2

    m = measured(smoke_config(), rows, hosts, world_size=2)
    assert (m.peak_flops, m.peak_reason) == (67e12, None)
    assert m.flops_per_image == 3 * forward
    assert m.warmup_steps == 2
    out = measured_fields(steps, m)
    throughput = 128 / 3.25
    assert out["throughput_steady_img_s"] == throughput
    assert out["throughput_per_device_img_s"] == throughput / 2
    assert out["model_flops_per_image"] == 3 * forward
    assert out["mfu"] == throughput * (3.0 * forward) / (67e12 * 2)
    assert out["mfu_reason"] is None

    out32 = measured_fields(steps, measured(smoke_config(tf32=True), rows, hosts, world_size=2))
    assert out32["mfu"] == pytest.approx(throughput * 3 * forward / (494.7e12 * 2), rel=1e-12)


def test_measured_fields_energy_and_memory_from_device_rows():
    steps = two_rank_steps()  # 12 rows x 16 images, warm-up included for energy per image
    rows = [device_row(0, energy_j=100.0), device_row(1, energy_j=150.0)]
    rows[1]["energy_window_too_short"] = True
    hosts = [
        {"rss_peak_gib": 1.5, "cpu_util_pct": 20.0, "cpu_energy_j": 30.0},
        {"rss_peak_gib": 2.5, "cpu_util_pct": 40.0, "cpu_energy_j": None, "cpu_energy_reason": "x"},
    ]
    out = measured_fields(steps, measured(smoke_config(), rows, hosts, world_size=2))
    assert out["gpu_energy_j"] == 250.0
    assert out["gpu_energy_above_idle_j"] == 170.0
    assert out["gpu_energy_method"] == "nvml_energy_counter"
    assert out["gpu_energy_reason"] is None
    assert out["gpu_energy_per_image_j"] == 250.0 / 192
    assert out["energy_window_too_short"] is True
    assert out["gpu_power_mean_w"] == 500.0
    assert out["gpu_util_mean_pct"] == 85.0
    assert out["gpu_mem_used_peak_gib"] == 5.0
    assert out["gpu_mem_alloc_peak_gib"] is None  # the allocator's peak was not added
    assert out["host_rss_peak_gib"] == 2.5
    assert out["cpu_util_mean_pct"] == 30.0
    assert out["cpu_energy_j"] is None  # one host had no RAPL: no partial sum
    assert out["cpu_energy_reason"] == "x"


def test_unknown_device_has_no_peak_and_no_mfu():
    peak, reason = peak_flops("Tesla K80", "fp32")
    assert peak is None
    assert (
        reason == "Tesla K80: not in the peak FLOP/s table (src/denoisebench/measure/hardware.py)"
    )
    assert peak_flops("Tesla V100-SXM2-16GB", "tf32") == (
        None,
        "Tesla V100-SXM2-16GB: no tf32 peak in the table",
    )
    assert peak_flops("NVIDIA H100 PCIe", "fp32") == (51.2e12, None)

    rows = [device_row(0, name="Tesla K80")]
    out = measured_fields(two_rank_steps(), measured(smoke_config(), rows, [], world_size=2))
    assert out["mfu"] is None
    assert out["mfu_reason"] == reason


def test_all_warmup_epoch_has_no_mfu_and_says_why():
    out = measured_fields(
        two_rank_steps(), measured(smoke_config(warmup_steps=10), [device_row(0)], [], 2)
    )
    assert out["throughput_steady_img_s"] is None
    assert out["throughput_per_device_img_s"] is None
    assert out["mfu"] is None
    assert out["mfu_reason"] == "every step of this epoch is warm-up"


def test_peak_table_does_not_match_a_different_gpu_by_substring():
    assert peak_flops("NVIDIA L40S", "fp32")[0] != 30.3e12
    assert peak_flops("NVIDIA RTX A1000", "fp32")[0] != 19.5e12


# --- real NVML -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_real_nvml_samples_power_and_energy(tmp_path):
    nvml, reason = profiler.load_nvml()
    if nvml is None:
        pytest.skip(reason)
    with maybe_profile(
        True,
        devices=[0],
        nvml=nvml,
        nvml_reason=reason,
        interval_s=0.1,
        spool=tmp_path / "gpu.jsonl",
        min_window_s=1.0,
    ) as prof:
        mark = prof.window_start()
        time.sleep(1.5)
        [row], host = prof.window_end(mark)
    assert not prof.sampler._thread.is_alive()
    assert row["device_name"]
    assert row["window_s"] >= 1.5
    assert row["samples"] >= 5
    assert row["power_mean_w"] > 0
    assert row["energy_j"] > 0
    assert row["energy_method"] in {"nvml_energy_counter", "power_integration"}
    assert row["energy_window_too_short"] is False
    assert "gpu_reason" not in host
    lines = (tmp_path / "gpu.jsonl").read_text().splitlines()
    assert len(lines) == len(prof.sampler.devices[0].rows)


# --- framework traces (profiler.trace_steps) ----------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_trace_steps_write_the_frameworks_own_trace(tmp_path, framework, capsys):
    import importlib

    from denoisebench.core.config import load_config, parse_overrides

    cfg = load_config(
        "smoke",
        parse_overrides(["train.epochs=1", "profiler.warmup_steps=2", "profiler.trace_steps=2"]),
    )
    importlib.import_module(f"denoisebench.{framework}_backend.train").train(cfg, tmp_path)
    folder = tmp_path / framework / "trace"
    assert f"[{framework}] trace of steps 2-3: {folder}" in capsys.readouterr().out
    if framework == "torch":
        events = json.loads((folder / "trace.json").read_text())["traceEvents"]
        steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
        assert steps == {"ProfilerStep#2", "ProfilerStep#3"}  # exactly the steps asked for
        assert "aten::convolution_backward" in (folder / "top_ops.txt").read_text()
    else:
        assert list(folder.glob("plugins/profile/*/*.xplane.pb"))


def test_trace_longer_than_the_run_says_so(tmp_path, capsys):
    from denoisebench.core.config import load_config, parse_overrides
    from denoisebench.torch_backend import train as train_torch

    cfg = load_config("smoke", parse_overrides(["train.epochs=1", "profiler.trace_steps=1000"]))
    train_torch.train(cfg, tmp_path / "long")  # 9 steps: 5-8 traced, and said to be partial
    out = capsys.readouterr().out
    assert "[torch] trace of steps 5-8 (partial: the run ended before step 1005)" in out
    assert (tmp_path / "long" / "torch" / "trace" / "trace.json").exists()

    late = parse_overrides(["train.epochs=1", "profiler.trace_steps=2", "profiler.warmup_steps=50"])
    train_torch.train(load_config("smoke", late), tmp_path / "late")
    assert "[torch] no trace: the run ended before step 50" in capsys.readouterr().out
    assert not (tmp_path / "late" / "torch" / "trace").exists()
