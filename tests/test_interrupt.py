"""Interrupts and resumes, by fault injection: signals to the launcher, its process group and a
trainer on its own, SIGKILL of a trainer; each asserts what is left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from denoisebench.cluster import horovodrun, torchrun
from denoisebench.core.config import load_config
from denoisebench.core.failures import (
    FAILURES_DIR,
    killed_error,
    killed_unhandled,
    mark_failed,
    mark_interrupted,
    read_failures,
    write_failure,
)
from denoisebench.core.records import (
    RunRecorder,
    atomic_write_json,
    launch_conflicts,
    read_json,
    read_jsonl,
    resume_command,
    write_launch_choices,
)
from launch.__main__ import build_parser, main
from launch.commands import Topology, build_torchrun_cmd
from launch.supervise import StopSignals, first_failure, run_group

# a few seconds an epoch here: 44 training images, 2 steps of 16
SMOKE = ["--profile", "smoke", "--limit", "48"]
FAILURE_FIELDS = ("status", "error", "failed_process", "signal", "resume_command")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


# Each epoch of a 3-epoch run held 2 s after its evaluation (core.distributed
# maybe_delay_after_eval), so the run is still going when a test's signal lands after the first
# epoch: without it a loaded machine could see all 3 epochs finish first (seen once: the summary
# read 'completed').
SLOW_EPOCHS = {**ENV, "DENOISEBENCH_EVAL_DELAY_S": "2"}


def start_launcher(
    results: Path, run_id: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python -m launch` in a session of its own, so its process group can be signalled."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch",
            *SMOKE,
            "--results",
            str(results),
            "--run-id",
            run_id,
            *args,
        ],
        cwd=REPO,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_epoch(proc: subprocess.Popen, summary: Path, timeout: float = 600) -> None:
    """Until the trainer has recorded a finished epoch in `summary`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if read_json(summary).get("epochs_completed", 0) >= 1:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail(f"no finished epoch in {summary} after {timeout}s")


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in out + err, out + err
    return out, err


def failure_fields(summary: dict) -> dict:
    return {k: summary.get(k) for k in FAILURE_FIELDS}


def interrupted_fields(run: Path, framework: str, signal_name: str) -> tuple[dict, int]:
    """The summary's failure fields, and the epochs it says are finished (checked against
    epochs.jsonl: at most one record more, an epoch cut off before its checkpoint)."""
    summary = read_json(run / framework / "summary.json")
    done = summary["epochs_completed"]
    assert done >= 1 and len(read_jsonl(run / framework / "epochs.jsonl")) in (done, done + 1)
    assert failure_fields(summary) == {
        "status": "interrupted",
        "error": None,
        "failed_process": None,
        "signal": signal_name,
        "resume_command": f"python -m launch --resume {run}",
    }
    return summary, done


def assert_completed_with_history(run: Path, framework: str, history: list[dict]) -> None:
    summary = read_json(run / framework / "summary.json")
    assert failure_fields(summary) == {
        "status": "completed",
        "error": None,
        "failed_process": None,
        "signal": None,
        "resume_command": None,
    }
    assert summary["epochs_completed"] == summary["epochs"]
    assert [{k: v for k, v in h.items() if k != "updated"} for h in summary["history"]] == history
    assert all(h["updated"] for h in summary["history"])


# --- signals to the launcher --------------------------------------------------------------


def test_ctrl_c_to_the_process_group_interrupts_quietly(tmp_path):
    """A terminal's Ctrl-C: SIGINT to the launcher and its children at once. The framework
    training is marked interrupted, the one not started yet stays so, the table is printed."""
    run = tmp_path / "cc"
    proc = start_launcher(tmp_path, "cc", "--framework", "both", "--epochs", "30")
    wait_for_epoch(proc, run / "torch" / "summary.json")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    _, done = interrupted_fields(run, "torch", "SIGINT")
    assert not (run / "tf").exists()  # not started: stays as it was
    row = next(line for line in out.splitlines() if line.strip().startswith("torch"))
    assert row.split()[1:3] == ["interrupted", str(done)]
    assert out.rstrip().endswith(
        f"interrupted by SIGINT; continue with: python -m launch --resume {run}"
    )
    assert read_json(run / "launch.json") == {
        "profile": "smoke",
        "mode": None,
        "framework": "both",
        "gpus": None,
        "nodes": None,
        "engine": "native",
        "tf_strategy": "mirrored",
        "cpu_workers": False,
        "repeats": 1,
        "report": None,  # neither --report nor --no-report: replayed by --resume as given
    }


def test_one_ctrl_c_of_a_ddp_run_is_reported_as_one_sigint(tmp_path):
    """Ctrl-C reaches torchrun's ranks as SIGINT, then the launcher passes SIGTERM on: the
    console said both 'interrupted by SIGINT' and torchrun's 'stopped by SIGTERM'."""
    run = tmp_path / "dd"
    proc = start_launcher(tmp_path, "dd", "--framework", "torch", "--gpus", "2", "--epochs", "300")
    wait_for_epoch(proc, run / "torch" / "summary.json")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    assert "[torch] interrupted by SIGINT" in err
    # (torch's own agent still logs that it sends its ranks SIGTERM: a log line, not a verdict)
    assert "stopped by SIGTERM" not in err and "interrupted by SIGTERM" not in out + err


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"]
)
def test_signal_to_the_launcher_alone_interrupts_and_resume_finishes_its_frameworks(
    tmp_path, sig, code
):
    """The launcher passes its signal on; the summary names the launcher's signal. --resume
    then trains the run's own framework (torch only) to the end, and the interruption moves
    into the history."""
    run = tmp_path / "one"
    proc = start_launcher(tmp_path, "one", "--framework", "torch", "--epochs", "3", env=SLOW_EPOCHS)
    wait_for_epoch(proc, run / "torch" / "summary.json")
    os.kill(proc.pid, sig)
    out, err = finish(proc)
    assert proc.returncode == code, out + err
    _, done = interrupted_fields(run, "torch", sig.name)
    if sig != signal.SIGTERM:
        return  # one resume is enough
    resumed = subprocess.run(
        [sys.executable, "-m", "launch", "--resume", str(run)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (run / "tf").exists()  # the run was --framework torch
    assert "[tf]" not in resumed.stdout
    assert_completed_with_history(
        run,
        "torch",
        [
            {
                "status": "interrupted",
                "error": None,
                "failed_process": None,
                "signal": "SIGTERM",
                "epochs_completed": done,
            }
        ],
    )


def test_sigkill_of_the_trainer_then_resume_leaves_no_stale_failure(tmp_path):
    """kill -9 of the trainer: the launcher records the failure for it, by its name; a resume
    that completes clears it from the top level and keeps it in the history."""
    run = tmp_path / "k9"
    killed = (
        "killed by SIGKILL: most often the kernel's out-of-memory killer (see dmesg) or the "
        "batch system's memory limit"
    )
    proc = start_launcher(tmp_path, "k9", "--framework", "torch", "--epochs", "3", env=SLOW_EPOCHS)
    wait_for_epoch(proc, run / "torch" / "summary.json")
    [trainer] = psutil.Process(proc.pid).children()
    trainer.kill()
    out, err = finish(proc)
    assert proc.returncode == 1, out + err
    summary = read_json(run / "torch" / "summary.json")
    assert f"[torch] failed: torch: {killed}" in err  # the hint on the console too
    assert failure_fields(summary) == {
        "status": "failed",
        "error": killed,
        "failed_process": "torch",
        "signal": None,
        "resume_command": None,
    }
    assert main(["--resume", str(run)]) == 0
    assert_completed_with_history(
        run,
        "torch",
        [
            {
                "status": "failed",
                "error": killed,
                "failed_process": "torch",
                "signal": None,
                "epochs_completed": summary["epochs_completed"],
            }
        ],
    )


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_trainer_without_launcher_records_sigterm(tmp_path, framework):
    """A trainer run on its own (as under srun) stopped with SIGTERM: interrupted, exit 143."""
    run = tmp_path / "alone"
    run.mkdir()
    cfg = load_config("smoke", {"data": {"limit": "48"}, "train": {"epochs": "30"}})
    (run / "config.json").write_text(cfg.to_json() + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", f"denoisebench.{framework}_backend.train", str(run)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_epoch(proc, run / framework / "summary.json")
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 143, out + err
    _, done = interrupted_fields(run, framework, "SIGTERM")
    assert f"[{framework}] interrupted by SIGTERM after {done} finished epoch(s)" in err


def test_resume_hints_name_the_installed_command_when_it_was_used(tmp_path):
    """Started as `denoisebench` (from another folder), the launcher, its record and its
    trainer's own line say `denoisebench --resume RUN`: `python -m launch` works only from the
    repository."""
    run = tmp_path / "cmd"
    command = [str(Path(sys.executable).parent / "denoisebench"), *SMOKE, "--framework", "torch"]
    proc = subprocess.Popen(
        [*command, "--epochs", "30", "--results", str(tmp_path), "--run-id", "cmd"],
        cwd=tmp_path,
        env=SLOW_EPOCHS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_epoch(proc, run / "torch" / "summary.json")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    hint = f"denoisebench --resume {run}"
    assert read_json(run / "torch" / "summary.json")["resume_command"] == hint
    assert out.rstrip().endswith(f"interrupted by SIGINT; continue with: {hint}")
    # the trainer's own line: it knows the command from the launcher (records.LAUNCHER_ENV)
    assert f"finished epoch(s); continue with: {hint}\n" in err


# --- the supervisor -----------------------------------------------------------------------


def test_run_group_passes_a_stop_signal_on_then_kills_what_is_left():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        timer.start()
        t0 = time.monotonic()
        result = run_group([(sleeper, ENV), (stubborn, ENV)], ["a", "b"], grace_s=2.0, stop=stop)
        elapsed = time.monotonic() - t0
    assert (result.returncode, result.failed, result.signal) == (130, None, "SIGINT")
    assert elapsed < 15  # SIGTERM, 2 s of grace, SIGKILL: not the sleepers' 60 s
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_children_start_with_sigint_ignored():
    check = "import signal, sys; sys.exit(signal.getsignal(signal.SIGINT) != signal.SIG_IGN)"
    assert run_group([([sys.executable, "-c", check], ENV)], ["c"]).returncode == 0


def test_run_group_names_a_killed_process_before_a_peer_that_failed_with_it():
    """Seen ended in one poll: the one a signal killed is the cause; else the first."""
    assert first_failure([1, -9, None]) == (1, -9)
    assert first_failure([None, 2, 1]) == (1, 2)
    assert first_failure([0, None]) is None
    victim = [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]
    result = run_group([(victim, ENV)], ["tf worker 1"])
    assert (result.failed_process, result.killed_by) == ("tf worker 1", "SIGKILL")
    assert result.failed == "tf worker 1 killed by SIGKILL"


def test_a_killed_process_record_comes_before_the_errors_its_death_caused(tmp_path):
    """The supervisor writes the killed process' record after it noticed the death, later than
    the peer's broken collective; the summary still names the killed one first."""
    write_failure(tmp_path, "torch rank 0", "RuntimeError: Connection reset by peer")
    write_failure(tmp_path, "torch rank 1", killed_error("SIGKILL"), killed_by="SIGKILL")
    assert [f["process"] for f in read_failures(tmp_path)] == ["torch rank 1", "torch rank 0"]
    assert killed_error("SIGSEGV") == "killed by SIGSEGV"
    assert not killed_unhandled("SIGTERM") and killed_unhandled("SIGKILL")


def test_failures_of_several_hosts_are_ordered_without_comparing_their_clocks(
    tmp_path, monkeypatch
):
    """node2's clock runs 60 s behind: its knock-on error looks a minute older than the cause
    on node1. The record that reached the folder first is the cause; the rest go by host, then
    by each host's own clock."""
    clock = {"node1": 1000.0, "node2": 940.0}

    def on(host: str, process: str, error: str, dt: float) -> None:
        monkeypatch.setattr("socket.gethostname", lambda: host)
        monkeypatch.setattr("time.time", lambda: clock[host] + dt)
        write_failure(tmp_path, process, error)

    on("node1", "torch rank 3", "RuntimeError: CUDA out of memory", 0.0)
    on("node2", "torch rank 5", "RuntimeError: Connection reset by peer", 2.0)
    on("node1", "torch rank 2", "RuntimeError: Connection reset by peer", 1.0)
    on("node2", "torch rank 4", "RuntimeError: Connection reset by peer", 1.0)
    failures = read_failures(tmp_path)
    assert [f["process"] for f in failures] == [
        "torch rank 3",
        "torch rank 2",
        "torch rank 4",
        "torch rank 5",
    ]
    assert [f["host"] for f in failures] == ["node1", "node1", "node2", "node2"]
    assert (tmp_path / FAILURES_DIR / ".first").read_text().strip() == "torch-rank-3.json"


def test_only_node_0_writes_the_summary_the_others_a_record_naming_their_host(
    tmp_path, monkeypatch
):
    """Every node's launcher sees its processes fail; a read-modify-write of summary.json from
    each would race. Node 1 records its launcher's line as a failure record naming its host;
    node 0, the one writer, reads it into the summary."""
    import socket

    from launch import run as launch_run

    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    monkeypatch.setattr(launch_run, "framework_cmds", lambda *a, **k: [(failing, ENV)])
    args = build_parser().parse_args(["--resume", str(tmp_path)])
    args.resume = None
    topo = Topology(devices=1, nodes=2, node_rank=1)
    assert launch_run.run_framework("torch", tmp_path, topo, args) == 3
    assert not (tmp_path / "torch" / "summary.json").exists()
    [record] = read_failures(tmp_path / "torch")
    host = socket.gethostname()
    assert record["process"] == f"node 1 ({host})" and record["host"] == host
    assert record["error"] == "torch exited with code 3"
    node0 = Topology(devices=1, nodes=2, node_rank=0)
    monkeypatch.setattr(launch_run, "clear_failures", lambda _fw_dir: None)  # node 1's was later
    assert launch_run.run_framework("torch", tmp_path, node0, args) == 3
    summary = read_json(tmp_path / "torch" / "summary.json")
    assert (summary["status"], summary["failed_process"]) == ("failed", f"node 1 ({host})")


def test_torchrun_wrapper_records_the_rank_a_signal_killed_by_how_it_ended(tmp_path):
    def failure(exitcode: int, when: int) -> ProcessFailure:
        f = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="")
        f.timestamp = when  # torchrun's: whole seconds when it noticed the end
        return f

    # rank 1 killed, rank 0's collective broke in the same second, rank 2 stopped by torchrun
    torchrun.record_killed(
        ChildFailedError("t", {0: failure(1, 100), 1: failure(-9, 100), 2: failure(-15, 100)}),
        tmp_path,
        world=3,
    )
    [record] = read_failures(tmp_path)
    assert (record["process"], record["killed_by"]) == ("torch rank 1", "SIGKILL")
    # a busy machine: rank 0's error file is dated a second before torchrun noticed rank 1's
    # death; how rank 1 ended names it, whatever the order
    torchrun.record_killed(
        ChildFailedError("t", {0: failure(1, 100), 1: failure(-9, 102)}), tmp_path / "late", 2
    )
    [record] = read_failures(tmp_path / "late")
    assert (record["process"], record["killed_by"]) == ("torch rank 1", "SIGKILL")
    # rank 0 failed first on its own; rank 1 was SIGKILLed 30 s after torchrun's SIGTERM
    torchrun.record_killed(
        ChildFailedError("t", {0: failure(1, 100), 1: failure(-9, 130)}), tmp_path / "b", 2
    )
    assert read_failures(tmp_path / "b") == []
    argv, _ = build_torchrun_cmd(tmp_path, Topology(devices=1), run_id="r", base_env={})
    assert torchrun.processes(argv[5:]) == 1  # one rank: named "torch", as it names itself


def test_horovodrun_wrapper_reads_the_first_worker_and_its_signal(tmp_path):
    message = (
        "Horovod detected that one or more processes exited with non-zero status, thus causing "
        "the job to be terminated. The first process to do so was:\nProcess name: 1\nExit code: 137"
    )
    fw_dir = tmp_path / "tf"
    horovodrun.record_killed(message, fw_dir, workers=2)
    [record] = read_failures(fw_dir)
    assert (record["process"], record["killed_by"]) == ("tf worker 1", "SIGKILL")
    assert horovodrun.killing_signal(139) == "SIGSEGV" and horovodrun.killing_signal(1) is None
    horovodrun.record_killed(message.replace("137", "143"), tmp_path / "torch", workers=2)
    assert read_failures(tmp_path / "torch") == []  # SIGTERM: stopped, not killed


def test_submitit_task_records_sigterm_and_passes_it_on(tmp_path, monkeypatch):
    """TrainTask's handler (cluster.slurm_job.record_sigterm): a running run becomes
    interrupted; a completed one stays completed; submitit's own handler still runs."""
    from denoisebench.cluster.slurm_job import record_sigterm

    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        monkeypatch.setenv("SLURM_PROCID", "0")
        for status in ("running", "completed"):
            run = tmp_path / status
            atomic_write_json(run / "torch" / "summary.json", {"status": status})
            record_sigterm("torch", run)
            os.kill(os.getpid(), signal.SIGTERM)
            summary = read_json(run / "torch" / "summary.json")
            if status == "running":
                assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM")
                assert summary["resume_command"] == f"{resume_command(run)} --slurm"
            else:
                assert summary["status"] == "completed"
        assert len(seen) == 2
    finally:
        signal.signal(signal.SIGTERM, before)


# --- the summary's failure fields and history --------------------------------------------


def test_history_keeps_earlier_attempts_and_completion_clears_them(tmp_path):
    rec = RunRecorder(tmp_path, "torch")
    path = tmp_path / "torch" / "summary.json"
    rec.summary(status="running", error=None, epochs=4)
    rec.summary(epochs_completed=1)
    mark_failed(tmp_path, "torch", "torch exited with code -9")
    rec.summary(status="running", error=None, epochs=4)  # resumed
    assert failure_fields(read_json(path)) == {
        "status": "running",
        "error": None,
        "failed_process": None,
        "signal": None,
        "resume_command": None,
    }
    rec.summary(epochs_completed=2)
    mark_interrupted(tmp_path, "torch", "SIGINT", resume_command(tmp_path))
    assert failure_fields(read_json(path)) == {
        "status": "interrupted",
        "error": None,
        "failed_process": None,
        "signal": "SIGINT",
        "resume_command": f"python -m launch --resume {tmp_path}",
    }
    rec.summary(status="running", error=None, epochs=4)
    rec.summary(status="completed", epochs_completed=4)
    summary = read_json(path)
    assert failure_fields(summary)["status"] == "completed"
    assert not any(failure_fields(summary)[k] for k in FAILURE_FIELDS[1:])
    assert [{k: v for k, v in h.items() if k != "updated"} for h in summary["history"]] == [
        {
            "status": "failed",
            "error": "torch exited with code -9",
            "failed_process": "torch exited with code -9",
            "signal": None,
            "epochs_completed": 1,
        },
        {
            "status": "interrupted",
            "error": None,
            "failed_process": None,
            "signal": "SIGINT",
            "epochs_completed": 2,
        },
    ]


def test_a_trainer_that_never_started_is_marked_interrupted_at_epoch_0(tmp_path):
    mark_interrupted(tmp_path, "tf", "SIGHUP", "python -m launch --resume x")
    summary = read_json(tmp_path / "tf" / "summary.json")
    assert summary["epochs_completed"] == 0 and summary["status"] == "interrupted"


def test_resume_command_of_a_repeat_names_the_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "repeat-1").mkdir()
    assert resume_command(tmp_path / "repeat-1") == f"python -m launch --resume {tmp_path}"
    assert resume_command(tmp_path / "x y") == f"python -m launch --resume '{tmp_path}/x y'"
    assert resume_command(tmp_path, "denoisebench") == f"denoisebench --resume {tmp_path}"


# --- --resume replays the launch choices and refuses changes ------------------------------


def completed_run(tmp_path: Path, launch_args: list[str] | None) -> Path:
    """A run folder whose frameworks all completed; launch.json from `launch_args`, or none
    (a run made before launch choices were saved)."""
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.json").write_text(load_config("smoke").to_json() + "\n")
    if launch_args is not None:
        write_launch_choices(run, vars(build_parser().parse_args(launch_args)))
        frameworks = ["torch"]
    else:
        frameworks = ["torch", "tf"]
    for fw in frameworks:
        atomic_write_json(run / fw / "summary.json", {"status": "completed", "framework": fw})
    return run


def test_launch_conflicts_name_option_and_both_values():
    saved = {"framework": "torch", "gpus": None, "cpu_workers": False, "repeats": 1}
    given = {"framework": "torch", "gpus": 1, "cpu_workers": True, "repeats": 2, "other": 3}
    assert launch_conflicts(saved, given) == [
        "--gpus 1 (the run's: none)",
        "--cpu-workers on (the run's: off)",
        "--repeats 2 (the run's: 1)",
    ]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--profile", "paper"], "--profile paper (the run's: smoke)"),
        (["--framework", "both"], "--framework both (the run's: torch)"),
        (["--framework", "tf"], "--framework tf (the run's: torch)"),
        (["--gpus", "2"], "--gpus 2 (the run's: none)"),
        (["--mode", "tuned"], "--mode tuned (the run's: none)"),
        (["--tf-strategy", "multiworker"], "--tf-strategy multiworker (the run's: mirrored)"),
        (["--repeats", "3"], "--repeats 3 (the run's: 1)"),
        (["--epochs", "3", "--set", "train.lr=0.1"], "drop --epochs, --set"),
        (["--data", "synthetic"], "drop --data"),
    ],
)
def test_resume_refuses_what_would_change_the_run_by_name(tmp_path, capsys, options, named):
    run = completed_run(tmp_path, ["--profile", "smoke", "--framework", "torch"])
    assert main(["--resume", str(run), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume continues {run} as it was started; drop ")
    assert named in err and len(err.strip().splitlines()) == 1


def test_resume_replays_the_saved_framework(tmp_path, capsys):
    run = completed_run(tmp_path, ["--profile", "smoke", "--framework", "torch"])
    assert main(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "[torch] already completed" in out and "[tf]" not in out
    assert not (run / "tf").exists()
    # the saved values themselves are accepted
    argv = ["--resume", str(run), "--profile", "smoke", "--framework", "torch", "--repeats", "1"]
    assert main([*argv, "--print-config"]) == 0


def test_resume_of_a_run_without_launch_json_notes_it(tmp_path, capsys):
    run = completed_run(tmp_path, None)
    assert main(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"note: {run} has no launch.json" in out
    assert "[torch] already completed" in out and "[tf] already completed" in out
    assert main(["--resume", str(run), "--profile", "paper"]) == 2
    assert "--profile paper (the run's: smoke)" in capsys.readouterr().err
    assert main(["--resume", str(run), "--profile", "smoke", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["profile"] == "smoke"


def test_the_table_of_an_interrupted_run_shows_its_last_finished_epoch(tmp_path):
    """No `final` record: the quality columns come from the last checkpointed epoch."""
    from denoisebench.core.records import atomic_write_json
    from denoisebench.report.compare import comparison_frame

    fw = tmp_path / "torch"
    fw.mkdir()
    rows = [{"epoch": e, "test_mae": 0.1 - e / 100, "test_psnr_db": 20.0 + e} for e in range(3)]
    (fw / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the third epoch's record was written, its checkpoint was not: two epochs completed
    atomic_write_json(fw / "summary.json", {"status": "interrupted", "epochs_completed": 2})
    row = comparison_frame(tmp_path).iloc[0]
    assert row["status"] == "interrupted" and row["epochs"] == 2
    assert row["test_psnr_db"] == 21.0 and row["test_mae"] == pytest.approx(0.09)


def test_a_stop_signal_during_a_checkpoint_is_raised_after_it():
    """A signal in the middle of torch.save turned into torch's own RuntimeError (a traceback,
    seen once in CI); while an epoch's records and checkpoint are written it is held back and
    raised, as Interrupted, once they are."""
    from denoisebench.core.records import Interrupted
    from denoisebench.trainer.process import raise_on_sigterm, uninterrupted

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    written = []
    try:
        raise_on_sigterm()
        with pytest.raises(Interrupted) as stopped, uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here: held, not raised
            written.append("checkpoint")
        assert written == ["checkpoint"] and stopped.value.signal == "SIGTERM"
        with uninterrupted():  # nothing pending any more
            written.append("next")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_launcher_sees_its_trainer_end_at_once():
    """run_group waited in fixed 0.2 s sleeps, so every launch's end waited up to 0.2 s more
    after its trainer's; it now wakes when a process ends (a pidfd). The bound: a process
    that ends at once is seen long before a 30 s wait would run out."""
    from launch.supervise import _wait_any

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    t0 = time.monotonic()
    _wait_any([proc], 30.0)
    assert time.monotonic() - t0 < 20.0
    assert proc.wait(timeout=5) == 0
