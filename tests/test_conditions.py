"""Run conditions (measure/conditions*.py): the arithmetic on synthetic /proc files and process
snapshots, NVML through a fake, and real sampling beside a CPU hog and beside the run's own work.

The suite runs two pytest workers side by side: no test here asserts that a real run was
undisturbed."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import launch

from denoisebench.core.records import read_json
from denoisebench.measure import conditions, conditions_cpu
from denoisebench.measure.conditions import ConditionsSampler
from denoisebench.measure.conditions_cpu import (
    OursCpu,
    ProcCpu,
    cpu_ticks,
    is_run_program,
    job_cgroup,
    load_1m,
)
from denoisebench.measure.conditions_gpu import GpuConditions, clock_event_names
from denoisebench.measure.conditions_verdict import (
    OTHER_CPU_SHARE_MAX,
    conditions_fields,
    summarize,
)

TICK = os.sysconf("SC_CLK_TCK")
SCHEMA = {
    "samples",
    "interval_s",
    "cores",
    "load_avg_max",
    "load_per_core_max",
    "other_cpu_share",
    "other_cpu_share_max",
    "steal_share",
    "gpu",
    "reasons",
}
GPU_SCHEMA = {
    "sm_clock_ratio_min",
    "sm_clock_ratio_median",
    "throttle_reasons",
    "other_processes",
    "xid_events",
    "ecc_uncorrected",
}


# --- /proc text ------------------------------------------------------------------------------


def stat_text(cpus: dict[int, tuple[int, ...]]) -> str:
    """/proc/stat with one line per CPU: user nice system idle iowait irq softirq steal."""
    total = [sum(v[i] for v in cpus.values()) for i in range(8)]
    lines = ["cpu  " + " ".join(map(str, total)) + " 0 0"]
    lines += [f"cpu{i} " + " ".join(map(str, v)) + " 0 0" for i, v in cpus.items()]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


def test_cpu_ticks_sum_busy_and_steal_of_the_runs_cores_only():
    text = stat_text({0: (100, 10, 20, 500, 7, 3, 2, 5), 1: (1, 1, 1, 1, 1, 1, 1, 1)})
    # busy = user + nice + system + irq + softirq; idle and iowait are not busy
    assert cpu_ticks(text, [0]) == (100 + 10 + 20 + 3 + 2, 5)
    assert cpu_ticks(text, [0, 1]) == (135 + 5, 5 + 1)
    assert cpu_ticks(text, [7]) is None  # a core /proc/stat does not list
    assert load_1m("2.50 1.10 0.70 3/200 1234\n") == 2.5


def test_sampler_turns_proc_ticks_into_seconds_of_other_work(tmp_path):
    """One interval between two readings of synthetic /proc files: busy and steal ticks of the
    run's cores become seconds; other = busy - ours (this process: almost nothing)."""
    (tmp_path / "loadavg").write_text("0.50 0.40 0.30 1/100 1\n")
    (tmp_path / "stat").write_text(stat_text({0: (0,) * 8, 1: (0,) * 8, 2: (0,) * 8}))
    sampler = ConditionsSampler([], interval_s=3600, root=os.getpid(), cpus=[0, 1], proc=tmp_path)
    sampler.start()
    time.sleep(0.5)
    (tmp_path / "loadavg").write_text("5.00 1.00 0.50 1/100 1\n")
    burn = (3 * TICK, 0, TICK, 0, 0, 0, 0, TICK // 10)  # 4 s busy, 0.1 s steal on each core
    (tmp_path / "stat").write_text(stat_text({0: burn, 1: burn, 2: (99 * TICK,) * 8}))
    sampler.stop()
    [row] = sampler.rows
    assert row["busy_s"] == 8.0 and abs(row["steal_s"] - 0.2) < 1e-9  # core 2 is not the run's
    assert row["load_1m"] == 5.0 and row["cores"] == 2
    assert 0 <= row["ours_s"] < 0.5 and row["other_s"] == row["busy_s"] - row["ours_s"]
    c = sampler.fields()["conditions"]
    assert c["samples"] == 1 and c["load_per_core_max"] == 2.5
    assert c["other_cpu_share"] == 1.0  # clamped: 8 s of others' work in ~0.5 s x 2 cores
    assert c["gpu"] is None and c["reasons"]["gpu"] == "no GPU: training on CPU"


# --- the summary and its judgement -----------------------------------------------------------


def rows(other: list[float], steal: float = 0.0, cores: int = 2, part: float = 1.0) -> list[dict]:
    """One synthetic row per second, others taking other[i] seconds of CPU in it."""
    return [
        {"part": part, "dt_s": 1.0, "cores": cores, "machine_cores": cores, "load_1m": 1.0,
         "busy_s": o + 1.0, "steal_s": steal, "ours_s": 1.0, "other_s": o}
        for o in other
    ]  # fmt: skip


def test_other_share_mean_worst_window_and_steal():
    burst = [0.0] * 10 + [1.6] * 5 + [0.0] * 5  # others take 80% of 2 cores for 5 s
    c = summarize(rows(burst, steal=0.02), cores=2, interval_s=1.0)
    assert set(c) >= SCHEMA and c["samples"] == 20 and c["cores"] == 2
    assert abs(c["other_cpu_share"] - 8.0 / 40.0) < 1e-12
    assert abs(c["other_cpu_share_max"] - 0.8) < 1e-12
    assert abs(c["steal_share"] - 0.01) < 1e-12
    fields = conditions_fields(c)
    assert fields["disturbed"] is True
    assert fields["disturbed_reasons"] == [
        "other processes took 20% of the run's 2 cores (threshold 10%)",
        "other processes took 80% of the run's 2 cores in its worst 5 s (threshold 25%)",
    ]


def test_a_quiet_run_is_not_disturbed_and_says_nothing():
    c = summarize(rows([0.02, 0.0, 0.04, 0.0, 0.01, 0.0]), cores=2, interval_s=1.0)
    assert c["other_cpu_share"] < OTHER_CPU_SHARE_MAX
    assert conditions_fields(c) == {"conditions": c, "disturbed": False, "disturbed_reasons": []}


def test_steal_and_load_thresholds_and_their_sentences():
    r = rows([0.0] * 4, steal=0.2)
    for row in r:
        row["load_1m"] = 7.0
    reasons = conditions_fields(summarize(r, cores=2, interval_s=1.0))["disturbed_reasons"]
    assert reasons == [
        "the hypervisor stole 10% of the run's CPU time (threshold 5%)",
        "the 1-minute load average reached 7.0, 3.5 per core of the run's 2 cores (threshold 3 "
        "per core)",
    ]
    for row in r:  # the run has 2 of the machine's 64 cores: the machine's load is not judged
        row["machine_cores"] = 64
    reasons = conditions_fields(summarize(r, cores=2, interval_s=1.0))["disturbed_reasons"]
    assert reasons == ["the hypervisor stole 10% of the run's CPU time (threshold 5%)"]


def test_windows_never_span_two_attempts_and_nothing_is_a_null_with_its_reason():
    # two attempts of 3 s each: a burst in either is judged over its own attempt only
    r = rows([0.0, 0.0, 1.2], part=1.0) + rows([0.0, 0.0, 0.0], part=2.0)
    c = summarize(r, cores=2, interval_s=1.0)
    assert abs(c["other_cpu_share_max"] - 1.2 / 6) < 1e-12 and c["samples"] == 6
    empty = summarize([], cores=2, interval_s=1.0, reasons={"gpu": "no GPU: training on CPU"})
    assert empty["samples"] == 0 and empty["other_cpu_share"] is None
    assert empty["reasons"]["other_cpu_share"].startswith("no samples")
    assert empty["reasons"]["load_per_core_max"].startswith("no samples")
    assert conditions_fields(empty)["disturbed"] is False


# --- whose CPU time is the run's ---------------------------------------------------------------


def test_ours_counts_a_child_reaped_between_samples_once():
    me = (10, 100.0)
    ours = OursCpu()
    assert ours.update({me: ProcCpu(1, 5.0, 0.0)}) == 0.0  # the first snapshot: a baseline
    child = (11, 150.0)
    assert ours.update({me: ProcCpu(1, 5.5, 0.0), child: ProcCpu(10, 2.0, 0.0)}, 120.0) == 2.5
    # the child ran 1 s more and was reaped: the parent's reaped time grows by its 3 s lifetime
    assert ours.update({me: ProcCpu(1, 6.0, 3.0)}, 150.0) == 0.5 + 1.0
    # a helper born and reaped between two samples comes back through the parent, in full
    assert ours.update({me: ProcCpu(1, 6.0, 4.5)}, 160.0) == 1.5


def test_ours_owes_a_zombie_until_its_parent_reaps_it_and_skips_an_old_newcomer():
    me, child = (10, 100.0), (11, 150.0)
    ours = OursCpu()
    ours.update({me: ProcCpu(1, 1.0, 0.0), child: ProcCpu(10, 2.0, 0.0)})
    # the child is gone from the table before the parent reaped it (no growth yet)
    assert ours.update({me: ProcCpu(1, 1.0, 0.0)}, 160.0) == 0.0
    # reaped now: 2.5 s lifetime, 2 s of it already counted
    assert ours.update({me: ProcCpu(1, 1.0, 2.5)}, 170.0) == 0.5
    # a process that joins the run's set but started long before adds nothing of its past
    old = (12, 50.0)
    assert ours.update({me: ProcCpu(1, 1.0, 2.5), old: ProcCpu(1, 40.0, 0.0)}, 180.0) == 0.0
    # one that leaves to a parent that is not ours is not subtracted from anything
    assert ours.update({me: ProcCpu(1, 1.2, 2.5)}, 190.0) == pytest.approx(0.2)


def test_the_runs_programs_are_recognised_by_their_command_lines():
    py = sys.executable
    assert is_run_program([py, "-m", "launch", "--profile", "smoke"])
    assert is_run_program([py, "-u", "-m", "denoisebench.torch_backend.train", "results/x"])
    assert is_run_program([py, "-m", "denoisebench.cluster.torchrun", "--standalone"])
    assert is_run_program(["/venv/bin/torchrun", "--nproc-per-node=2", "train.py"])
    assert is_run_program([py, "/venv/bin/horovodrun", "-np", "2"])
    assert is_run_program([py, "-u", "-m", "submitit.core._submit", "/logs"])
    assert not is_run_program([py, "-m", "pytest", "-n", "2"])
    assert not is_run_program([py, "-c", "import launch"])
    assert not is_run_program([py, "busy.py", "-m", "launch"])  # a script's own arguments
    assert not is_run_program(["bash", "-c", "python -m launch"])


def test_a_slurm_jobs_cgroup_is_found_for_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    task = v2 / "system.slice/slurmstepd.scope/job_42/step_0/user/task_1"
    task.mkdir(parents=True)
    (task / "cgroup.procs").write_text("101\n102\n")
    (v2 / "system.slice/slurmstepd.scope/job_42/step_0/user/task_0").mkdir()
    (v2 / "system.slice/slurmstepd.scope/job_42/step_0/user/task_0/cgroup.procs").write_text("7\n")
    text = "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n"
    folder = job_cgroup("42", text, mount=v2)
    assert folder == v2 / "system.slice/slurmstepd.scope/job_42"
    assert conditions_cpu.cgroup_pids(folder) == {7, 101, 102}
    v1 = tmp_path / "v1"
    (v1 / "cpuset/slurm/uid_1/job_42/step_0").mkdir(parents=True)
    text = "4:memory:/slurm/uid_1/job_42/step_0\n3:cpuset:/slurm/uid_1/job_42/step_0\n"
    assert job_cgroup("42", text, mount=v1) == v1 / "cpuset/slurm/uid_1/job_42"
    assert job_cgroup("43", text, mount=v1) is None


# --- the GPU, through a fake NVML ------------------------------------------------------------


class NVMLError(Exception):
    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


class FakeNvml:
    """One GPU: clocks, clock event bits, processes, XID events and an ECC count, as set."""

    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_ERROR_TIMEOUT = 10
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, pids: list[int], ecc: bool = True) -> None:
        self.clock, self.bits, self.pids, self.xids, self.ecc_count = 1980, 0, pids, [], 0
        self.ecc = ecc

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetMaxClockInfo(self, h: str, clock: int) -> int:
        return 1980

    def nvmlDeviceGetClockInfo(self, h: str, clock: int) -> int:
        return self.clock

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        return self.bits

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=1) for p in self.pids]

    def nvmlDeviceGetSupportedEventTypes(self, h: str) -> int:
        return 0x8 | 0x4

    def nvmlEventSetCreate(self) -> str:
        return "events"

    def nvmlDeviceRegisterEvents(self, h: str, types: int, events: str) -> None:
        assert types == 0x8

    def nvmlEventSetWait(self, events: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0  # never blocks the sampler
        if not self.xids:
            raise NVMLError(10, "Timeout")
        return SimpleNamespace(eventType=0x8, eventData=self.xids.pop(0))

    def nvmlEventSetFree(self, events: str) -> None:
        pass

    def nvmlDeviceGetTotalEccErrors(self, h: str, kind: int, counter: int) -> int:
        if not self.ecc:
            raise NVMLError(3, "Not Supported")
        assert (kind, counter) == (1, 0)  # uncorrected, volatile
        return self.ecc_count


def test_clock_event_bits_are_named_without_idle_and_applications_clocks():
    assert clock_event_names(0x1 | 0x2) == []
    assert clock_event_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert clock_event_names(0x1000) == ["bit_0x1000"]


def test_gpu_conditions_and_their_judgement():
    nvml = FakeNvml(pids=[os.getpid(), 4242])
    gpu = GpuConditions(nvml, [0])
    nvml.clock, nvml.bits, nvml.xids, nvml.ecc_count = 1980, 0x4, [79], 2
    first = gpu.sample(ours={os.getpid()})
    nvml.clock, nvml.bits = 990, 0x40 | 0x1  # idle: its clock is not judged
    second = gpu.sample(ours={os.getpid()})
    nvml.clock, nvml.bits, nvml.pids = 1188, 0x20, [os.getpid()]
    third = gpu.sample(ours={os.getpid()})
    assert first[0]["xids"] == [79] and second[0]["xids"] == [] and third[0]["xids"] == []
    assert [s[0]["ecc_uncorrected_new"] for s in (first, second, third)] == [2, 0, 0]
    assert [s[0]["other_processes"] for s in (first, second, third)] == [1, 1, 0]
    r = [{"part": 1.0, "dt_s": 1.0, "cores": 2, "gpus": s} for s in (first, second, third)]
    c = summarize(r, cores=2, interval_s=1.0, reasons=gpu.reasons, gpu=True)
    g = c["gpu"]
    assert set(g) >= GPU_SCHEMA
    assert abs(g["sm_clock_ratio_min"] - 0.6) < 1e-12
    assert abs(g["sm_clock_ratio_median"] - 0.8) < 1e-12
    assert g["throttle_reasons"] == ["hw_thermal_slowdown", "sw_power_cap", "sw_thermal_slowdown"]
    assert (g["other_processes"], g["xid_events"], g["ecc_uncorrected"]) == (1, 1, 2)
    assert conditions_fields(c)["disturbed_reasons"] == [
        "the GPU was slowed down (hw_thermal_slowdown, sw_thermal_slowdown) (threshold: none of "
        "hw_power_brake_slowdown, hw_slowdown, hw_thermal_slowdown, sw_thermal_slowdown)",
        "1 other process(es) ran on the run's GPU (threshold 0)",
        "the GPU reported 1 XID error(s) (79) (threshold 0)",
        "the GPU counted 2 uncorrected ECC error(s) during the run (threshold 0)",
    ]
    nvml.clock, nvml.bits = 1287, 0x4
    slow = [{"part": 1.0, "dt_s": 1.0, "cores": 2, "gpus": gpu.sample({os.getpid()})}]
    reasons = conditions_fields(summarize(slow, 2, 1.0, gpu.reasons, gpu=True))
    assert reasons["disturbed_reasons"] == [
        "the GPU's median SM clock was 65% of its maximum while busy (threshold 75%)"
    ]


def test_what_nvml_does_not_expose_is_null_with_its_reason():
    class OlderNvml(FakeNvml):
        """An older pynvml: the clock event reasons under their throttle name only."""

        nvmlDeviceGetCurrentClocksEventReasons = None

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: str) -> int:
            return 0x8

    # NVML lists PIDs of another PID namespace (a container): this process is not among them
    gpu = GpuConditions(OlderNvml(pids=[999_999_991], ecc=False), [0])
    r = [{"part": 1.0, "dt_s": 1.0, "cores": 2, "gpus": gpu.sample({os.getpid()})}]
    c = summarize(r, cores=2, interval_s=1.0, reasons=gpu.reasons, gpu=True)
    assert c["gpu"]["throttle_reasons"] == ["hw_slowdown"]
    assert c["gpu"]["other_processes"] is None and c["gpu"]["ecc_uncorrected"] is None
    assert "not this one" in c["reasons"]["other_processes"]
    assert c["reasons"]["ecc_uncorrected"] == "NVML: Not Supported"
    sampler = ConditionsSampler([0], nvml_reason="NVML unavailable: no driver", root=os.getpid())
    c = sampler.fields()["conditions"]
    assert c["gpu"] is None and c["reasons"]["gpu"] == "NVML unavailable: no driver"


# --- real sampling ---------------------------------------------------------------------------

BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"
RUN = """
import json, sys, time

import psutil
from denoisebench.measure.conditions import ConditionsSampler

core, hog = int(sys.argv[1]), psutil.Process(int(sys.argv[2]))
sampler = ConditionsSampler([], interval_s=0.5, cpus=[core])  # its own tree: itself
before = sum(hog.cpu_times()[:2])
sampler.start()
time.sleep(3.0)
sampler.stop()
print(json.dumps({
    "fields": sampler.fields(),
    "hog_s": sum(hog.cpu_times()[:2]) - before,
    "other_s": sum(r["other_s"] for r in sampler.rows),
    "ours": [p.pid for p in sampler.ours()],
}))
"""


def test_a_cpu_hog_beside_the_run_marks_it_disturbed():
    """A stand-in for rank 0 samples one core while a busy loop pinned to that core runs beside
    it (its sibling, not its child: another job)."""
    core = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", BUSY.format(s=30)],
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", RUN, str(core), str(hog.pid)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    out = json.loads(run.stdout)
    fields = out["fields"]
    assert hog.pid not in out["ours"]
    assert out["hog_s"] > 0.3, out  # it ran: at least a tenth of the time on a loaded core
    assert out["other_s"] >= 0.8 * out["hog_s"], out  # and every second of it counts as other
    assert fields["disturbed"] is True
    assert fields["disturbed_reasons"][0].startswith("other processes took "), fields
    assert "of the run's 1 core (threshold 10%)" in fields["disturbed_reasons"][0]


def test_the_runs_own_busy_child_is_not_counted_as_other():
    sampler = ConditionsSampler([], interval_s=0.5, root=os.getpid())
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", BUSY.format(s=2.0)], check=True)  # reaped by us
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.6)
    sampler.stop()
    child_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    ours_s = sum(r["ours_s"] for r in sampler.rows)
    assert child_s > 0.2, child_s
    assert ours_s >= 0.9 * child_s, (ours_s, child_s)  # the child's work is the run's
    for r in sampler.rows:  # hence not in other: busy - ours
        assert abs(r["other_s"] - (r["busy_s"] - r["ours_s"])) < 1e-9


def test_a_resumed_run_keeps_its_earlier_attempts_rows(tmp_path):
    spool = tmp_path / "torch" / "conditions.jsonl"
    first = ConditionsSampler([], spool=spool, interval_s=0.2, root=os.getpid())
    first.start()
    time.sleep(0.5)
    first.stop()
    with open(spool, "a") as f:
        f.write('{"part": 1.0, "dt_s"')  # a line a crash cut short
    resumed = ConditionsSampler([], spool=spool, interval_s=0.2, root=os.getpid())
    resumed.start(resume=True)
    time.sleep(0.3)
    resumed.stop()
    c = resumed.fields()["conditions"]
    assert c["samples"] == len(first.rows) + len(resumed.rows) >= 3
    spooled = conditions.read_rows(spool)
    assert len(spooled) == c["samples"] and len({r["part"] for r in spooled}) == 2
    fresh = ConditionsSampler([], spool=spool, interval_s=0.2, root=os.getpid())
    fresh.start()  # a run that starts from epoch 0 starts its spool again
    fresh.stop()
    assert fresh.fields()["conditions"]["samples"] == len(fresh.rows) == 1


def test_a_run_records_its_conditions_in_the_summary(tmp_path):
    proc = launch("--profile", "smoke", "--framework", "torch", "--epochs", "1",
                  "--results", str(tmp_path), "--run-id", "x")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = Path(tmp_path) / "x" / "torch"
    summary = read_json(folder / "summary.json")
    c = summary["conditions"]
    assert set(c) >= SCHEMA and c["samples"] >= 1 and c["interval_s"] == 1.0
    assert c["cores"] == len(os.sched_getaffinity(0))
    assert 0.0 <= c["other_cpu_share"] <= 1.0 and c["load_avg_max"] is not None
    assert c["gpu"] is None and c["reasons"]["gpu"] == "no GPU: training on CPU"
    assert summary["disturbed"] is bool(summary["disturbed_reasons"])
    rows = conditions.read_rows(folder / "conditions.jsonl")
    assert len(rows) == c["samples"]
    # the launcher and the trainer: the run's tree, found from the trainer by its root
    assert all(r["processes"] >= 2 for r in rows)
