"""Run conditions on every node (measure/conditions_nodes.py): one sampler per node, each node's
summary in summary.json's `conditions.hosts`, the run disturbed when any node was (the reason
naming it), the report's table showing every node, and the job's own processes on any node told
from other load by what they carry (measure/conditions_cpu.JobProcesses), checked on real
processes that are not the sampler's descendants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from helpers import launch

from denoisebench.core.records import RUN_ENV, read_json, read_jsonl
from denoisebench.measure import conditions, conditions_nodes
from denoisebench.measure.conditions import ConditionsSampler
from denoisebench.measure.conditions_cpu import is_job_process, stat_fields
from denoisebench.measure.conditions_nodes import NodeConditions, first_on_host
from denoisebench.measure.conditions_verdict import conditions_fields, nodes_fields, summarize
from denoisebench.report.runs import load_fields
from denoisebench.report.tables import conditions_text
from denoisebench.trainer.session import EpochResult


def rows(other: list[float], cores: int = 2, host: str | None = None) -> list[dict[str, Any]]:
    """One synthetic sampler row per second, others taking other[i] seconds of CPU in it."""
    return [
        {"host": host, "part": 1.0, "dt_s": 1.0, "cores": cores, "machine_cores": cores,
         "load_1m": 1.0, "busy_s": o + 1.0, "steal_s": 0.0, "ours_s": 1.0, "other_s": o}
        for o in other
    ]  # fmt: skip


def node(host: str, other: float) -> dict[str, Any]:
    """A node's summary, others taking `other` of its 2 cores throughout."""
    return {"host": host, **summarize(rows([2 * other] * 10), cores=2, interval_s=1.0)}


# --- which process samples ---------------------------------------------------------------------


def test_the_first_rank_on_each_host_samples_it():
    # torchrun, node-major ranks; TensorFlow's workers in any order; one node
    assert [first_on_host(["n9", "n9", "n10", "n10"], r) for r in range(4)] == [1, 0, 1, 0]
    assert [first_on_host(["n10", "n9", "n10", "n9"], r) for r in range(4)] == [1, 1, 0, 0]
    assert [first_on_host(["a"] * 3, r) for r in range(3)] == [1, 0, 0]


# --- the summary of several nodes ----------------------------------------------------------------


def test_two_nodes_give_two_host_entries_and_one_node_reads_as_before():
    quiet9, quiet10 = node("n9", 0.01), node("n10", 0.02)
    out = nodes_fields([quiet9, quiet10])
    assert [n["host"] for n in out["conditions"]["hosts"]] == ["n9", "n10"]
    assert out["conditions"]["hosts"][1]["other_cpu_share"] == pytest.approx(0.02)
    top = {k: v for k, v in out["conditions"].items() if k != "hosts"}
    assert top == {k: v for k, v in quiet9.items() if k != "host"}  # rank 0's node's figures
    assert (out["disturbed"], out["disturbed_reasons"]) == (False, [])
    # one node: the fields a run of one node always had, and its one entry
    busy = node("n9", 0.45)
    one = nodes_fields([busy])
    before = conditions_fields({k: v for k, v in busy.items() if k != "host"})
    assert one["disturbed_reasons"] == before["disturbed_reasons"] != []
    assert {k: v for k, v in one["conditions"].items() if k != "hosts"} == before["conditions"]
    assert one["conditions"]["hosts"] == [busy]


def test_a_disturbed_node_makes_the_run_disturbed_and_its_reason_names_it():
    out = nodes_fields([node("n9", 0.01), node("n10", 0.45)])
    assert out["disturbed"] is True
    assert out["disturbed_reasons"][0] == (
        "n10: other processes took 45% of the run's 2 cores (threshold 10%)"
    )
    assert all(r.startswith("n10: ") for r in out["disturbed_reasons"])
    assert out["conditions"]["other_cpu_share"] == pytest.approx(0.01)  # rank 0's node's own


def test_each_nodes_summary_reaches_rank_0_through_the_epochs_gather(tmp_path):
    """Four ranks on two hosts: ranks 0 and 2 sample; rank 2's node summary travels in its
    EpochResult (JSON, as TensorFlow's gather carries it) to rank 0, whose summary then has
    both nodes and is disturbed by n10's load."""
    hosts, fw = ["n9", "n9", "n10", "n10"], tmp_path / "torch"
    ranks = [NodeConditions(fw, tmp_path, [], hosts, r) for r in range(4)]
    assert [n.sampler is not None for n in ranks] == [True, False, True, False]
    for n in ranks:
        n.start(resume=False)
        n.stop()  # the rows below stand for what each node's sampler read
    ranks[0].sampler.rows = rows([0.02] * 10, host="n9")  # quiet
    ranks[2].sampler.rows = rows([0.9] * 10, host="n10")  # others took 45% of n10's cores
    parts = [EpochResult([], 1.0, conditions=n.for_gather()) for n in ranks]
    assert [len(p.conditions) for p in parts] == [0, 0, 1, 0]
    merged = EpochResult.merge([EpochResult.from_json(p.to_json()) for p in parts])
    ranks[0].take(merged.conditions)
    out = ranks[0].fields(stop=True)
    assert [n["host"] for n in out["conditions"]["hosts"]] == ["n9", "n10"]
    assert out["disturbed"] is True
    assert out["disturbed_reasons"][0].startswith("n10: other processes took 45%")
    assert [r for r in out["disturbed_reasons"] if r.startswith("n9: ")] == []
    assert ranks[1].fields() == ranks[2].fields() == {}  # only rank 0 writes the summary
    assert sorted(p.name for p in fw.iterdir()) == ["conditions.jsonl", "conditions.n10.jsonl"]


def test_a_resumed_run_keeps_the_nodes_only_an_earlier_attempt_had(tmp_path):
    fw = tmp_path / "tf"
    fw.mkdir()
    earlier = rows([0.9] * 6, host="n11")  # a node the requeued job no longer has
    (fw / "conditions.n11.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    main = NodeConditions(fw, tmp_path, [], ["n9", "n10"], 0)
    main.start(resume=True)
    main.stop()
    main.sampler.rows = rows([0.02] * 10, host="n9")  # this attempt's node, quiet
    out = main.fields(stop=True)
    assert [n["host"] for n in out["conditions"]["hosts"]] == ["n9", "n11"]
    assert out["disturbed_reasons"][0].startswith("n11: other processes took 45%")
    assert conditions_nodes.earlier_nodes(fw, ["n11"]) == {}  # still one of this attempt's


# --- the report ------------------------------------------------------------------------------


def test_the_report_shows_every_node_and_takes_the_worst_nodes_figures():
    fields = nodes_fields([node("n9", 0.01), node("n10", 0.45)])
    text = conditions_text(fields)
    assert text.startswith("n9: other processes 1% of the run's 2 cores (mean)")
    assert " | n10: other processes 45% of the run's 2 cores (mean)" in text
    flat = load_fields(fields)
    assert flat["other_cpu_share"] == pytest.approx(0.45) and flat["disturbed"] is True
    one = nodes_fields([node("n9", 0.01)])
    assert conditions_text(one).startswith("other processes 1% of the run's 2 cores")


# --- the job's processes on any node ---------------------------------------------------------------


def test_the_jobs_processes_are_known_by_marker_job_id_or_command_line(tmp_path):
    run = (tmp_path / "run").resolve()
    run.mkdir()
    python = [sys.executable, "-m", "denoisebench.torch_backend.train"]
    assert is_job_process(["x"], {RUN_ENV: str(run)}, None, run, None)
    assert not is_job_process(["x"], {RUN_ENV: str(tmp_path / "other")}, None, run, None)
    assert is_job_process(["x"], {"SLURM_JOB_ID": "42"}, None, run, "42")
    assert not is_job_process(["x"], {"SLURM_JOB_ID": "43"}, None, run, "42")
    assert not is_job_process(["x"], {"SLURM_JOB_ID": "42"}, None, run, None)
    assert is_job_process([*python, str(run)], {}, None, run, None)
    assert is_job_process([*python, "run"], {}, str(tmp_path), run, None)  # relative to its cwd
    assert not is_job_process([*python, "run"], {}, None, run, None)  # cwd unknown
    assert not is_job_process([*python, str(tmp_path)], {}, None, run, None)  # another folder
    assert not is_job_process(["vim", str(run)], {}, None, run, None)  # not one of its programs
    assert stat_fields("12 (a b) c) S 7 12 12 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 999 10") == (
        7,
        999,
    )


BUSY = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def orphan(env: dict[str, str]) -> int:
    """A busy loop that is not this process's descendant: a shell starts it in the background
    and exits, so it is handed to the machine's reaper, as another node's rank is."""
    out = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "$BUSY" >/dev/null 2>&1 & echo $!'],
        env={**env, "BUSY": BUSY},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def test_the_jobs_processes_outside_the_samplers_tree_are_ours_and_others_are_not(
    tmp_path, monkeypatch
):
    """Processes of the run started as separate process trees (another node's ranks on a
    cluster whose nodes share one /proc): one carrying the run's marker, one the SLURM job's id;
    beside them a busy loop of nobody's and one of another job. The first two are the run's,
    and their CPU time is not other load."""
    run = tmp_path / "run"
    run.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in (RUN_ENV, "SLURM_JOB_ID")}
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    pids: dict[str, int] = {}
    try:
        pids["marked"] = orphan(base | {RUN_ENV: str(run.resolve())})
        pids["job"] = orphan(base | {"SLURM_JOB_ID": "4242"})
        pids["stranger"] = orphan(base)
        pids["other job"] = orphan(base | {"SLURM_JOB_ID": "4243"})
        mine = {p.pid for p in psutil.Process().children(recursive=True)}
        assert not mine & set(pids.values())  # separate trees, not the sampler's
        sampler = ConditionsSampler([], interval_s=0.5, root=os.getpid(), run=run)
        ours = {p.pid for p in sampler.ours()}
        assert {pids["marked"], pids["job"]} <= ours
        assert not {pids["stranger"], pids["other job"]} & ours
        procs = {k: psutil.Process(pid) for k, pid in pids.items()}
        before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
        sampler.start()
        time.sleep(2.0)
        sampler.stop()
        spent = {k: sum(p.cpu_times()[:2]) - before[k] for k, p in procs.items()}
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
    ours_s = sum(r["ours_s"] for r in sampler.rows)
    marked = spent["marked"] + spent["job"]
    assert marked > 0.2, spent  # they ran
    assert ours_s >= 0.8 * marked, (ours_s, spent)  # and their CPU time is the run's
    assert all(r["processes"] >= 3 for r in sampler.rows)  # this process and the two


# --- a real run whose two ranks stand on two hosts ---------------------------------------------

HOSTS_PLANT = """
import os, socket
if "RANK" in os.environ:  # a torchrun rank: the host its rank names
    socket.gethostname = lambda: "node" + os.environ["RANK"]
"""


def test_a_run_of_two_hosts_keeps_both_nodes_conditions(tmp_path):
    """A real 2-rank torchrun whose ranks report two hosts (a sitecustomize on PYTHONPATH
    replaces socket.gethostname in each rank): each rank samples its "node", rank 1's summary
    reaches rank 0 in the epochs' gather, and the summary names both."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(HOSTS_PLANT)
    path = os.pathsep.join(p for p in (str(plant), os.environ.get("PYTHONPATH")) if p)
    proc = launch("--profile", "smoke", "--framework", "torch", "--epochs", "2", "--gpus", "2",
                  "--batch-size", "8", "--results", str(tmp_path), "--run-id", "two",
                  env={"PYTHONPATH": path})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "two" / "torch"
    summary = read_json(folder / "summary.json")
    nodes = summary["conditions"]["hosts"]
    assert [n["host"] for n in nodes] == ["node0", "node1"]
    assert all(n["samples"] >= 1 and n["other_cpu_share"] is not None for n in nodes), nodes
    assert summary["conditions"]["samples"] == nodes[0]["samples"]
    assert all(r.split(": ")[0] in ("node0", "node1") for r in summary["disturbed_reasons"])
    assert conditions.read_rows(folder / "conditions.node1.jsonl")[0]["host"] == "node1"
    assert {r["host"] for r in read_jsonl(folder / "hosts.jsonl")} == {"node0", "node1"}
