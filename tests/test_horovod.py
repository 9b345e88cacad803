"""--engine horovod and `python -m launch horovod-build`.

The build's pieces are checked directly (the edits, the error summary, the cache key, the
command horovodrun runs). The tests marked `horovod` train through `python -m launch` under
horovodrun with 2 Gloo workers on the smoke profile; they need the wheel, which conftest.py
starts building in the background when the session begins (about 5 minutes on 2 cores, then
cached) and runs these tests last, waiting for it (`horovod_built`). Without a working build they
skip with the build's error, or fail where DENOISEBENCH_REQUIRE_HOROVOD=1 (CI).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    EXACT,
    INJECTED_FAULT,
    REPO,
    assert_failed_fast_on_the_fault,
    assert_same_training,
    launch,
)

from denoisebench.cluster import horovod_build as hb
from denoisebench.cluster.horovodrun import workers
from denoisebench.core.failures import read_failures
from denoisebench.core.placement import horovod_env, node_placements
from denoisebench.core.records import read_json, read_jsonl
from launch.__main__ import main
from launch.commands import Topology, build_horovod_node_cmd, build_horovodrun_cmd

EPOCH1 = ["--profile", "smoke", "--epochs", "1"]
HOROVOD = ["--engine", "horovod", "--gpus", "2", "--batch-size", "8"]


def test_horovodrun_command_starts_n_gloo_workers_of_the_usual_trainer():
    argv, env = build_horovodrun_cmd(
        "tf", Path("/r/run1"), Topology(devices=2, cpu_threads=1), resume=True, base_env={}
    )
    assert argv[:3] == [sys.executable, "-m", "denoisebench.cluster.horovodrun"]
    assert argv[3:5] == ["--record-failures-in", "/r/run1/tf"]  # the wrapper's own option
    assert argv[5:10] == ["-np", "2", "-H", "localhost:2", "--gloo"]
    assert workers(argv[5:]) == 2  # what the wrapper reads from them
    assert argv[-4:] == ["-m", "denoisebench.tf_backend.train", "/r/run1", "--resume"]
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_the_node_launcher_command_names_every_host_and_this_node():
    """Across nodes every node runs the node launcher with its own rank (no horovodrun, which
    would SSH to the other hosts); the worker is the framework's usual trainer."""
    topo = Topology(devices=2, nodes=2, node_rank=1, master_addr="n9", master_port=20032,
                    hosts=("n9", "n10"), cpu_threads=1)  # fmt: skip
    argv, env = build_horovod_node_cmd("torch", Path("/r/run1"), topo, resume=True, base_env={})
    assert argv[:5] == [sys.executable, "-m", "denoisebench.cluster.horovod_nodes",
                        "--record-failures-in", "/r/run1/torch"]  # fmt: skip
    cut = argv.index("--")
    assert argv[5:cut] == ["--hosts", "n9,n10", "--node-rank", "1", "--per-node", "2",
                           "--master-addr", "n9", "--master-port", "20032"]  # fmt: skip
    trainer = [sys.executable, "-m", "denoisebench.torch_backend.train", "/r/run1", "--resume"]
    assert argv[cut + 1 :] == trainer
    assert env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="every node's host"):
        build_horovod_node_cmd("tf", Path("/r"), replace(topo, hosts=("n9",)))


WORKER = """import json, os, signal, sys, time
rank = os.environ["HOROVOD_RANK"]
horovod = {k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")}
with open(os.path.join(sys.argv[1], "worker-" + rank), "w") as f:
    json.dump({"pid": os.getpid(), "env": horovod}, f)
if rank == sys.argv[2]:
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""
"""A stand-in worker: it leaves its pid and Horovod variables, and the rank named by its second
argument kills itself with SIGKILL (as the out-of-memory killer would); the others wait."""


def start_node_launcher(tmp_path: Path, killed_rank: str) -> subprocess.Popen:
    """Node 1 of n9,n10 with 2 stand-in workers (ranks 2 and 3): no rendezvous to serve."""
    (tmp_path / "torch").mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "denoisebench.cluster.horovod_nodes",
         "--record-failures-in", str(tmp_path / "torch"), "--hosts", "n9,n10", "--node-rank", "1",
         "--per-node", "2", "--master-addr", "n9", "--master-port", "20032",
         "--", sys.executable, "-c", WORKER, str(tmp_path), killed_rank],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_workers(tmp_path: Path, ranks: list[str]) -> dict[str, dict]:
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"worker-{r}").exists() for r in ranks):
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    time.sleep(0.2)  # their files written in full
    return {r: json.loads((tmp_path / f"worker-{r}").read_text()) for r in ranks}


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()[-60:]


def test_a_worker_killed_on_a_node_ends_its_node_names_it_and_stops_the_others(tmp_path):
    """The node launcher's workers get the variables of their slots; one SIGKILLed ends the
    node's launcher within STOP_S (its peer stopped, not left running), with one line naming it,
    and its failure recorded for it (it could not record its own)."""
    t0 = time.monotonic()
    proc = start_node_launcher(tmp_path, killed_rank="3")
    workers_seen = wait_for_workers(tmp_path, ["2", "3"])
    assert proc.wait(timeout=40) == 1
    assert time.monotonic() - t0 < 40
    err = proc.stderr.read()
    assert "horovod: torch rank 3 on n10 ended (killed by SIGKILL)" in err, err
    assert gone(workers_seen["2"]["pid"])
    env = {r: w["env"] for r, w in workers_seen.items()}
    assert [(e["HOROVOD_LOCAL_RANK"], e["HOROVOD_CROSS_RANK"], e["HOROVOD_SIZE"]) for e in
            (env["2"], env["3"])] == [("0", "1", "4"), ("1", "1", "4")]  # fmt: skip
    assert {e["HOROVOD_HOSTNAME"] for e in env.values()} == {"n10"}
    assert env["2"]["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == "n9"
    assert env["2"]["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "20032"
    failures = read_failures(tmp_path / "torch")
    assert [(f["process"], f.get("killed_by")) for f in failures] == [("torch rank 3", "SIGKILL")]


def test_a_stop_signal_reaches_every_worker_of_the_node(tmp_path):
    """SIGTERM to the node launcher is passed on to its workers (which record the stop
    themselves); it exits 128 + 15 once they ended, and records no failure."""
    proc = start_node_launcher(tmp_path, killed_rank="none")
    workers_seen = wait_for_workers(tmp_path, ["2", "3"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert proc.stderr.read() == ""  # quiet: the launcher above names the signal
    assert all(gone(w["pid"]) for w in workers_seen.values())
    assert read_failures(tmp_path / "torch") == []


def test_only_rank_0_serves_the_rendezvous():
    """A submitit task per device: node 0's other tasks share its node rank, and must leave the
    job's port to rank 0 (they took it first and ended the job with 'Address already in use')."""
    import socket

    from denoisebench.cluster.horovod_nodes import serve_rendezvous

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for place in node_placements(("n9", "n10"), 0, 2, "n9", port)[1:]:
        with serve_rendezvous(place), socket.socket() as probe:
            probe.bind(("", port))  # free: rank 1 serves nothing


@pytest.mark.horovod
def test_each_slot_gets_the_variables_horovodrun_would_give_it(horovod_built):
    """horovod_env over a node's places equals what horovodrun's Gloo launcher exports for the
    same slots (its own plan, get_host_assignments; create_slot_env_vars), node by node."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.gloo_run import create_slot_env_vars

    hosts = ("n9", "n10", "n11")
    plan = get_host_assignments(parse_hosts("n9:2,n10:2,n11:2"), 6)
    ours = [horovod_env(p) for k in range(3) for p in node_placements(hosts, k, 2, "n9", 20032)]
    for slot, env in zip(plan, ours, strict=True):
        theirs = {k: str(v) for k, v in create_slot_env_vars(slot).items()}
        assert {k: env[k] for k in theirs} == theirs
        assert (env["HOROVOD_GLOO_RENDEZVOUS_ADDR"], env["HOROVOD_CONTROLLER"]) == ("n9", "gloo")


def test_without_the_build_the_launch_names_the_build_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hb, "installed_bindings", lambda: {"torch"})
    assert main([*EPOCH1, "--framework", "both", *HOROVOD, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tf binding" in err and "horovod-build" in err
    assert list(tmp_path.iterdir()) == []


def fake_source(root: Path) -> Path:
    """The three files the edits change, with the text they change (0.28.1's)."""
    for edit in hb.EDITS:
        path = root / edit.path
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else "# before\n"
        path.write_text(text + edit.old + "\n# after\n")
    return root


def test_edits_change_the_source_and_stop_on_text_they_do_not_find(tmp_path):
    src = fake_source(tmp_path / "a")
    hb.apply_edits(src)
    torch_cmake = (src / "horovod/torch/CMakeLists.txt").read_text()
    assert "CMAKE_CXX_STANDARD 17" in torch_cmake and "CMAKE_CXX_STANDARD 14" not in torch_cmake
    assert "PYTORCH_LINKER_LIBS compatible17_gloo" in torch_cmake
    xla = (src / "horovod/tensorflow/xla_mpi_ops.cc").read_text()
    assert "#if TENSORFLOW_VERSION >= 2006000000 && HAVE_GPU\n" in xla
    with pytest.raises(hb.BuildError, match=r"horovod/torch/CMakeLists.txt: .* 0 times"):
        hb.apply_edits(src)  # already applied: the text is gone


def test_a_failed_build_names_the_error_and_its_compiler_line():
    log = "\n".join(
        [
            "[ 40%] Building CXX object horovod/torch/CMakeFiles/pytorch.dir/mpi_ops_v2.cc.o",
            "cd /b/horovod/torch && /usr/bin/c++ -DHAVE_GLOO=1 -std=c++14 -o x.o -c /h/mpi_ops_v2.cc",
            "In file included from /site/torch/include/torch/extension.h:6,",
            "/site/torch/all.h:5:2: error: #error C++17 or later compatible compiler is required",
            "gmake[2]: *** [horovod/torch/CMakeFiles/pytorch.dir/build.make:76: x.o] Error 1",
        ]
    )
    summary = hb.failure_summary(log)
    assert "first error: /site/torch/all.h:5:2: error: #error C++17" in summary
    assert "compiler line: cd /b/horovod/torch && /usr/bin/c++" in summary
    assert "no error line found" in hb.failure_summary("configuring\nstopped")


def test_the_cache_is_outside_the_repository_and_keyed_by_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hb.cache_root() == tmp_path / "denoisebench" / "horovod"
    key = hb.cache_key({"torch": "2.13.0+cpu", "tensorflow": "2.21.0"})
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    # no '+': Horovod's CMake reads the source path (below the key) as a regular expression
    assert key.startswith(f"horovod-0.28.1_torch-2.13.0-cpu_tf-2.21.0_{py}_")
    assert key != hb.cache_key({"torch": "2.12.0", "tensorflow": "2.21.0"})


def test_the_build_requirements_are_declared_and_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {r.split(">")[0].split("=")[0] for r in project["optional-dependencies"]["horovod"]}
    pins = {
        line.split("==")[0].lower()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    assert declared <= set(hb.BUILD_REQUIREMENTS) <= pins


# Training under horovodrun: these need the wheel (conftest.py builds it and runs them last).


@pytest.fixture(scope="session")  # once, on the worker that runs its xdist group
def horovod_run(tmp_path_factory, horovod_built) -> tuple[Path, str]:
    """Both frameworks under horovodrun, 2 workers with batch 8, in float64 like `single`
    (helpers.EXACT): the run and its output."""
    root = tmp_path_factory.mktemp("horovod")
    proc = launch(*EPOCH1, *HOROVOD, *EXACT, "--results", str(root), "--run-id", "hvd")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return root / "hvd", out


@pytest.mark.horovod
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_two_horovod_workers_equal_one_device_with_twice_the_batch(horovod_run, single, framework):
    run, out = horovod_run
    fw_dir = run / framework
    assert f"cluster.horovodrun --record-failures-in {fw_dir} -np 2 -H localhost:2 --gloo" in out
    assert f"-m denoisebench.{framework}_backend.train {run}" in out
    assert f"[{framework}] horovod on 2" in out and "global batch 16 (8 per device)" in out
    summary = read_json(run / framework / "summary.json")
    assert (summary["strategy"], summary["engine"]) == ("horovod", "horovod")
    assert (summary["world_size"], summary["processes"], summary["global_batch"]) == (2, 2, 16)
    assert_same_training(run, single, framework)
    rows = read_jsonl(run / framework / "steps.jsonl")  # each worker's rows, gathered by rank 0
    assert sorted({(r["rank"], r["step"]) for r in rows}) == [
        (k, s) for k in (0, 1) for s in range(9)
    ]
    assert all(r["batch_size"] == 8 and r["replicas"] == 1 for r in rows)


@pytest.mark.horovod
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_a_crashing_horovod_worker_fails_the_job_fast_with_its_error(
    horovod_built, tmp_path, framework
):
    t0 = time.monotonic()
    proc = launch(
        "--profile", "smoke", "--framework", framework, *HOROVOD,
        "--results", str(tmp_path), "--run-id", "crash",
        env=INJECTED_FAULT,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    worker = "rank" if framework == "torch" else "worker"
    process = f"{framework} {worker} 1"
    assert_failed_fast_on_the_fault(proc, elapsed, tmp_path / "crash" / framework, process)
    assert [e["epoch"] for e in read_jsonl(tmp_path / "crash" / framework / "epochs.jsonl")] == [0]


@pytest.mark.horovod
def test_a_horovod_worker_killed_by_sigkill_is_named_as_the_cause(horovod_built, tmp_path):
    """The killed worker records nothing itself; the horovodrun wrapper records it, so the
    summary names it, not its peer's "Horovod has been shut down"."""
    proc = launch(
        "--profile", "smoke", "--framework", "torch", *HOROVOD,
        "--results", str(tmp_path), "--run-id", "killed",
        env={"DENOISEBENCH_FAULT": "1:11:kill"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = read_json(tmp_path / "killed" / "torch" / "summary.json")
    assert (summary["status"], summary["failed_process"]) == ("failed", "torch rank 1")
    assert summary["error"].startswith("killed by SIGKILL")
    assert all(k["process"] == "torch rank 0" for k in summary["knock_on_errors"])


@pytest.mark.horovod
def test_horovod_and_native_runs_side_by_side_in_the_report(horovod_run, single, tmp_path):
    """The report's rows of one setup differ by engine: Horovod beside DDP on 2 ranks (and
    the one-device runs)."""
    from denoisebench.report.build import build_report

    ddp = launch(
        *EPOCH1, "--framework", "torch", "--gpus", "2", "--batch-size", "8",
        "--results", str(tmp_path), "--run-id", "ddp",
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    _report, csvs = build_report([single, horovod_run[0], tmp_path / "ddp"], baseline_images=0)
    speed = csvs["speed"]
    rows = {(r.framework, r.engine, r.devices, r.batch_per_device) for r in speed.itertuples()}
    assert {("torch", "horovod", 2, 8), ("torch", "native", 2, 8), ("tf", "horovod", 2, 8)} <= rows
    assert {("torch", "native", 1, 16), ("tf", "native", 1, 16)} <= rows
    assert speed["throughput_steady_img_s_median"].notna().all()
