"""Issue 26's probes, each a test: two resumes of one run at once, hostile SLURM values, run ids
that leave --results, records' file modes under a umask, damaged arrays in the report; and
issue 34's config values past their bounds (core/bounds.py), through the launcher."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, refused_slurm_launch

from denoisebench.core.config import ConfigError
from denoisebench.core.records import RUN_ID_RULE, atomic_write_text, read_json, read_jsonl
from denoisebench.core.runlock import RunLocked, read_lock_holder, take_run_lock
from denoisebench.report.build import write_report
from denoisebench.report.discover import damage
from launch.__main__ import main
from launch.sbatch import render_sbatch
from launch.slurm import SlurmRequest, time_minutes

# a few short epochs: 44 training images, 2 steps of 16
SMOKE = ["--profile", "smoke", "--framework", "torch", "--limit", "48"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def start(*args: str, env: dict[str, str] | None = None, umask: int = 0o022) -> subprocess.Popen:
    """`python -m launch ARGS` in the background, under `umask`."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch", *args],
        cwd=REPO,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(umask),
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_until(condition, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.1)


# --- 1. one owner per run folder ----------------------------------------------------------------


def test_two_resumes_at_once_the_second_is_refused_and_the_records_stay_whole(tmp_path):
    """The probe: SIGTERM a 6-epoch run after epoch 2, then --resume it twice at once. The
    second is refused by name (exit 2, one line) and the run ends with each epoch once."""
    run = tmp_path / "t"
    slow = {**ENV, "DENOISEBENCH_EVAL_DELAY_S": "2"}  # the resume is still training when ...
    first = start(*SMOKE, "--epochs", "6", "--results", str(tmp_path), "--run-id", "t", env=slow)
    epochs = run / "torch" / "epochs.jsonl"
    wait_until(lambda: len(read_jsonl(epochs)) >= 2, "epoch 2", first)
    first.send_signal(signal.SIGTERM)
    code, _out, err = finish(first)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert read_json(run / "torch" / "summary.json")["status"] == "interrupted"

    resumed = start("--resume", str(run), env=slow)
    holder = lambda: read_lock_holder(run, "torch").get("pid")  # noqa: E731
    wait_until(lambda: holder() == resumed.pid, "the lock", resumed)
    second = start("--resume", str(run))  # ... this one starts
    code, out, err = finish(second, timeout=120)
    assert code == 2, out + err
    line = err.strip()
    assert "\n" not in line and line.startswith(f"error: {run} is in use by PID {resumed.pid} on ")
    assert socket.gethostname() in line and " since " in line
    assert resumed.poll() is None  # the refusal left the owner alone

    code, _out, err = finish(resumed)
    assert code == 0, err[-3000:]
    summary = read_json(run / "torch" / "summary.json")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 6
    assert [r["epoch"] for r in read_jsonl(epochs)] == [0, 1, 2, 3, 4, 5]
    steps = read_jsonl(run / "torch" / "steps.jsonl")
    assert len({(r["epoch"], r["step"], r["rank"]) for r in steps}) == len(steps)  # no doubles
    # the lock is free again: a later resume is not refused for it
    with take_run_lock(run, "torch"):
        pass


def test_a_launcher_killed_outright_takes_its_trainer_with_it_and_the_run_resumes(tmp_path):
    """SIGKILL the launcher mid-run: its trainer gets SIGTERM (the parent-death signal), records
    'interrupted' and exits, instead of training on without the run's lock; --resume then
    finishes the run."""
    run = tmp_path / "k"
    slow = {**ENV, "DENOISEBENCH_EVAL_DELAY_S": "2"}  # epochs go on while the test acts
    launcher = start(*SMOKE, "--epochs", "4", "--results", str(tmp_path), "--run-id", "k",
                     env=slow)  # fmt: skip
    epochs = run / "torch" / "epochs.jsonl"
    wait_until(lambda: len(read_jsonl(epochs)) >= 1, "epoch 1", launcher)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    assert len(children) == 1, children  # the trainer (a plain run: no torchrun)
    trainer = int(children[0])
    launcher.kill()
    finish(launcher)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{trainer}").exists() and b"zombie" not in _proc_state(trainer):
        assert time.monotonic() < deadline, "the trainer outlived its launcher"
        time.sleep(0.1)
    summary = read_json(run / "torch" / "summary.json")
    assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM")
    code, _out, err = finish(start("--resume", str(run), env=ENV))
    assert code == 0, err[-3000:]
    summary = read_json(run / "torch" / "summary.json")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 4


def _proc_state(pid: int) -> bytes:
    """/proc/PID/status's State line ('Z (zombie)' once it exited, unreaped); b'' when gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return b""
    return next((line for line in status.splitlines() if line.startswith(b"State:")), b"")


HOLDER = """
import subprocess, sys, time
from pathlib import Path
from denoisebench.core.runlock import take_run_lock
lock = take_run_lock(Path(sys.argv[1]), "torch", owner="test holder")
child = subprocess.Popen(["sleep", "120"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_dead_owner_never_blocks_and_its_children_do_not_inherit_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunLocked) as e:
            take_run_lock(tmp_path, "torch")
        assert f"PID {holder.pid} on {socket.gethostname()}" in str(e.value)
        assert "(test holder)" in str(e.value) and "\n" not in str(e.value)
        holder.kill()  # no clean-up of any kind: the kernel drops the flock
        holder.wait()
        assert psutil.pid_exists(child)  # its child lives on, without the lock
        with take_run_lock(tmp_path, "torch") as lock:
            assert read_lock_holder(tmp_path, "torch")["pid"] == os.getpid()
            assert lock.paths == [tmp_path / ".torch.lock"]
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_two_new_runs_with_one_run_id_the_second_is_refused(tmp_path, capsys):
    """What a second new run meets while the first holds the folder: the folder exists."""
    run = tmp_path / "same"
    run.mkdir()
    with take_run_lock(run, "torch"):
        code = main([*SMOKE, "--results", str(tmp_path), "--run-id", "same"])
    assert code == 2 and "exists; pick another --run-id or --resume it" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == [".torch.lock"]


# --- 2. values that reach a shell or an sbatch script --------------------------------------------

HOSTILE = [
    ("--partition", "gpu\ntouch /tmp/owned"),
    ("--partition", "gpu;touch /tmp/owned"),
    ("--partition", "$(touch /tmp/owned)"),
    ("--partition", "gpu,"),
    ("--account", "proj\n#SBATCH --wrap=x"),
    ("--account", "a b"),
    ("--time", "01:00:00\ntouch /tmp/owned"),
    ("--time", "1 hour"),
    ("--time", "01:00:00:00"),
    ("--time", "١٢"),  # digits, but not ASCII ones
]


@pytest.mark.parametrize(("option", "value"), HOSTILE)
@pytest.mark.parametrize("how", ["--sbatch-out", "--slurm"])
def test_hostile_slurm_values_are_refused_before_anything_is_written(
    tmp_path, capsys, option, value, how
):
    err = refused_slurm_launch(tmp_path, capsys, how, f"{option}={value}")
    assert err.startswith(f"error: {option} {value!r}: expected "), err


def test_results_with_a_newline_are_refused_for_submitit(tmp_path, capsys):
    results = tmp_path / "a\ntouch owned"
    code = main(["--framework", "torch", "--slurm", "--results", str(results)])
    assert code == 2 and "--results" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("partition", "gpu\nx"), ("account", "x'y"), ("time", "$(id)"), ("nodes", 0)],
)
def test_a_slurm_request_refuses_hostile_values(field, value):
    with pytest.raises(ConfigError, match=f"--{'nodes' if field == 'nodes' else field}"):
        SlurmRequest(**{field: value})


EDGY = SlurmRequest(partition="gpu,a100.big_x-1", account="p.r_o-j", time="UNLIMITED", nodes=3)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_rendered_scripts_parse_and_keep_each_value_on_its_line(tmp_path, framework):
    plain = render_sbatch(framework, SlurmRequest())
    script = render_sbatch(framework, EDGY)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert len(script.splitlines()) == len(plain.splitlines()) + 2  # + --partition, --account
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --partition=gpu,a100.big_x-1" in sbatch
    assert "#SBATCH --account=p.r_o-j" in sbatch and "#SBATCH --time=UNLIMITED" in sbatch
    # every #SBATCH line comes before the first command, or sbatch ignores it
    first_command = script.splitlines().index("set -euo pipefail")
    assert all(script.splitlines().index(line) < first_command for line in sbatch)


def test_denoisebench_args_are_words_not_shell_code(tmp_path):
    """The script passes DENOISEBENCH_ARGS on word by word: no command substitution, no
    globbing, no second command; arguments after the script's name keep their quoting."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (fake / "srun").chmod(0o755)
    (tmp_path / "glob-me").touch()
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch("torch", SlurmRequest()))
    hostile = "--data * $(touch owned) `touch owned2`; touch owned3"
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "7",
        "DENOISEBENCH_ARGS": hostile,
    }
    proc = subprocess.run(
        ["bash", str(script), "--profile", "a b"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # srun's words, then the script's own last line: "<time> step ended: exit 0"
    *args, ended = proc.stdout.splitlines()
    assert ended.endswith(" step ended: exit 0")
    assert args[args.index("--auto-resume") + 1 :] == [*hostile.split(), "--profile", "a b"]
    # the script's only mark: slurm-logs/, where it keeps each node's exit status while it runs
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bin",
        "glob-me",
        "job.sbatch",
        "slurm-logs",
    ]
    assert list((tmp_path / "slurm-logs").iterdir()) == []
    empty = {**env, "DENOISEBENCH_ARGS": ""}
    proc = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=empty, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.splitlines()[-2] == "--auto-resume", proc.stderr


def test_slurm_time_formats():
    given = ["30", "10:30", "01:00:00", "00:10:30", "1-2", "1-02:30", "1-02:00:00", "2-0:0:1"]
    expected = [30, 11, 60, 11, 1560, 1590, 1560, 2881]
    assert [time_minutes(t) for t in given] == expected
    SlurmRequest(time="UNLIMITED")  # an sbatch script may ask for no limit ...
    with pytest.raises(ConfigError, match="submitit needs a time limit"):
        time_minutes("unlimited")  # ... submitit may not


# --- 4. run ids ---------------------------------------------------------------------------------

BAD_RUN_IDS = ["/abs/path", "../../x", "a/b", "x" * 300, ".hidden", "-x", "a\nb", "", "..", "a b"]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_run_ids_that_are_not_one_safe_folder_name_are_refused(tmp_path, capsys, run_id):
    results = tmp_path / "results"
    code = main([*SMOKE, "--results", str(results), f"--run-id={run_id}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"error: --run-id {run_id!r}: a run id is {RUN_ID_RULE}"
    assert list(tmp_path.iterdir()) == []
    assert not Path("/abs/path").exists()


def test_good_run_ids_are_taken(tmp_path, capsys):
    for run_id in ("exp1", "2025-01-01_a.b", "x" * 100, "_x"):
        assert main([*SMOKE, "--run-id", run_id, "--print-config"]) == 0
    assert '"profile"' in capsys.readouterr().out


# --- 5. file modes ------------------------------------------------------------------------------

UMASK_WRITE = """
import os, sys
from pathlib import Path
from denoisebench.core.records import atomic_write_text
os.umask(int(sys.argv[2], 8))
atomic_write_text(Path(sys.argv[1]), "x")
"""


@pytest.fixture(scope="module")
def run_022(tmp_path_factory) -> Path:
    """A finished one-epoch torch run, launched under umask 022."""
    root = tmp_path_factory.mktemp("umask")
    code, out, err = finish(
        start(*SMOKE, "--epochs", "1", "--results", str(root), "--run-id", "u", umask=0o022)
    )
    assert code == 0, out[-2000:] + err[-3000:]
    return root / "u"


def test_records_honour_the_umask(run_022, tmp_path):
    records = [
        "launch.json",
        "config.json",
        "split.json",
        "torch/summary.json",
        "torch/environment.json",
        "torch/epochs.jsonl",
        "torch/weights.npz",
        "test_samples.npz",
    ]
    modes = {name: oct((run_022 / name).stat().st_mode & 0o777) for name in records}
    assert modes == dict.fromkeys(records, oct(0o644))
    for umask, mode in (("077", 0o600), ("002", 0o664)):
        path = tmp_path / f"u{umask}.json"
        subprocess.run([sys.executable, "-c", UMASK_WRITE, str(path), umask], check=True)
        assert path.stat().st_mode & 0o777 == mode
    atomic_write_text(tmp_path / "again.json", "y")  # the temporary names never collide
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


# --- 6. damaged arrays --------------------------------------------------------------------------


def test_a_damaged_npz_is_named_and_its_folder_skipped(run_022, tmp_path, capsys):
    good, cut, junk = (tmp_path / name for name in ("good", "cut", "junk"))
    for folder in (good, cut, junk):
        shutil.copytree(run_022, folder)
    samples = (cut / "test_samples.npz").read_bytes()
    (cut / "test_samples.npz").write_bytes(samples[: len(samples) // 2])  # cut off mid-write
    (junk / "torch" / "test_outputs.npz").write_bytes(b"not an npz at all")
    assert damage(good) is None
    assert damage(cut).startswith(f"{cut / 'test_samples.npz'}: BadZipFile")
    assert damage(junk).startswith(f"{junk / 'torch' / 'test_outputs.npz'}: ")

    out = tmp_path / "report"
    write_report([tmp_path], out, tmp_path, baseline_images=0)
    err = capsys.readouterr().err
    assert f"warning: skipping run folder {cut}: {cut / 'test_samples.npz'}" in err
    assert f"warning: skipping run folder {junk}: {junk / 'torch' / 'test_outputs.npz'}" in err
    md = (out / "report.md").read_text()
    assert str(cut / "test_samples.npz") in md and str(junk / "torch" / "test_outputs.npz") in md
    with open(out / "runs.csv", newline="") as f:
        assert {row["folder"] for row in csv.DictReader(f)} == {str(good)}


def test_other_slurm_tasks_follow_their_own_task_0_only(tmp_path):
    """A requeued job's tasks other than 0 train only once task 0 of their own attempt holds
    the run folder; while an older attempt still holds it they stop with the refusal."""
    from denoisebench.cluster.slurm_job import job_attempt, wait_for_owner

    old = job_attempt({"SLURM_JOB_ID": "42"})
    new = job_attempt({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"})
    with take_run_lock(tmp_path, "tf", owner=old):
        wait_for_owner(tmp_path, "tf", old, timeout_s=0)
        with pytest.raises(RunLocked, match=f"task 0 of {new} did not take .* \\({old}\\)"):
            wait_for_owner(tmp_path, "tf", new, timeout_s=0.3)


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(_fd: int, _op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with take_run_lock(tmp_path, "torch"):
        pass
    assert "has no locks" in capsys.readouterr().err


# --- 7 and 8. one line naming the thing, nothing left behind ---------------------------------------


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Run the launcher in-process; it must exit with `code` and print one line, no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--gpus", "0"], "--gpus 0 must be >= 1"),
        (["--nodes", "0"], "--nodes 0 must be >= 1"),
        (
            ["--set", "model.in_channels=1"],
            "model.in_channels must be 3, got 1 (the images are RGB)",
        ),
        (
            ["--set", "train.lr=inf"],
            "train.lr must be a finite number > 0 and <= 3.40282e+38, got inf (a step size",
        ),
    ],
)
def test_bad_launch_values_are_refused_by_name(tmp_path, capsys, extra, says):
    err = refused(capsys, [*SMOKE, *extra, "--results", str(tmp_path), "--run-id", "x"])
    assert says in err
    assert list(tmp_path.iterdir()) == []  # nothing written: the run id is not used up


def test_more_cpu_workers_than_cores_are_refused(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    err = refused(capsys, [*SMOKE, "--gpus", str(cores + 1), "--results", str(tmp_path)])
    assert f"--gpus {cores + 1} with no GPU here" in err and f"at most {cores}" in err
    assert list(tmp_path.iterdir()) == []


def test_results_that_is_a_file_is_named(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    err = refused(capsys, [*SMOKE, "--results", str(afile)])
    assert f"--results {afile}: not a folder" in err


def test_results_on_a_read_only_file_system_is_named(tmp_path, capsys):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount instead
        mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]
        mounted = subprocess.run(mount, capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root, and no read-only mount allowed here")
    else:
        readonly.chmod(0o555)
    try:
        err = refused(capsys, [*SMOKE, "--results", str(readonly), "--no-space-check"])
        assert f"--results {readonly}: cannot create {readonly}/" in err
    finally:
        if mounted:
            subprocess.run(["umount", str(readonly)], check=True)


def test_a_profile_that_is_not_utf8_is_named(tmp_path, capsys):
    profile = tmp_path / "mine.toml"
    profile.write_bytes(b"[train]\nepochs = 1\n# \xff\xfe\n")
    err = refused(capsys, ["--profile", str(profile), "--results", str(tmp_path / "r")])
    assert err.startswith(f"error: {profile}: not UTF-8 text")


@pytest.mark.parametrize("damaged", ["config.json", "launch.json"])
def test_resume_with_a_damaged_record_names_it(run_022, tmp_path, capsys, damaged):
    run = tmp_path / "run"
    shutil.copytree(run_022, run)
    (run / damaged).write_text("{not json")
    err = refused(capsys, ["--resume", str(run)])
    assert err.startswith(f"error: {run / damaged}: cannot read the run's")


def test_report_options_refused_by_value(run_022, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    from denoisebench.report.build import main as report_main

    assert report_main([str(run_022), "--out", str(afile), "--baseline-images", "0"]) == 2
    assert f"--out {afile}: a file, not a folder" in capsys.readouterr().err
    for option, value, says in [
        ("--baseline-images", "-1", "must be >= 0, got -1"),
        ("--target-psnr", "nan", "must be a finite number, got nan"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            report_main([str(run_022), "--out", str(tmp_path / "r"), option, value])
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_csv_cells_that_a_spreadsheet_would_run_are_defused():
    import pandas as pd

    from denoisebench.report.build import csv_safe

    frame = pd.DataFrame({"id": ["=HYPERLINK(1)", "+1+2", "@SUM(A1)", "-x", "-1.5", "ok"]})
    frame["n"] = [-1, 2, 3, 4, 5, 6]
    assert csv_safe(frame)["id"].tolist() == [
        "'=HYPERLINK(1)", "'+1+2", "'@SUM(A1)", "'-x", "-1.5", "ok",
    ]  # fmt: skip
    assert csv_safe(frame)["n"].tolist() == [-1, 2, 3, 4, 5, 6]


def test_a_missing_eurosat_path_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    assert main(["--profile", "paper", "--data", str(tmp_path / "EuroSAT.zip"),
                 "--results", str(tmp_path / "r")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"error: {tmp_path / 'EuroSAT.zip'}: no such file or folder (expected " + (
        "EuroSAT.zip or its folder)"
    )
    assert "docs/usage.md#data" in err[1] and "--data tfds" in err[1] and len(err) == 2
    assert "`python -m launch data eurosat DIR` downloads it" in err[1]
    assert not (tmp_path / "r").exists()


def test_device_gpu_without_a_gpu_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import launch.checks as launcher

    monkeypatch.setattr(launcher, "gpu_info", lambda: {"gpus": None, "reason": "no NVML"})
    err = refused(capsys, [*SMOKE, "--device", "gpu", "--results", str(tmp_path)])
    assert "--device gpu: no GPU here (no NVML); use --device auto" in err
    assert list(tmp_path.iterdir()) == []


def test_results_default_to_denoisebench_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DENOISEBENCH_RESULTS", str(tmp_path / "shared"))
    from launch.options import build_parser

    assert build_parser().parse_args([]).results == tmp_path / "shared"
    monkeypatch.delenv("DENOISEBENCH_RESULTS")
    assert build_parser().parse_args([]).results == REPO / "results"


# --- issue 34 item 5: values with no bound -------------------------------------------------------

CORES = len(os.sched_getaffinity(0))
SEEDS = "(numpy's seed range: np.random.seed, which Keras seeds through)"
UNBOUNDED = [
    (["--set", "runtime.intra_op_threads=10000"],
     [f"runtime.intra_op_threads must be <= {CORES}, got 10000 (at most {CORES} threads: this "
      f"machine has {CORES} cores)"]),
    (["--set", f"runtime.inter_op_threads={CORES + 1}"],
     [f"runtime.inter_op_threads must be <= {CORES}, got {CORES + 1} (at most {CORES} threads"]),
    (["--seed", "-1"], [f"train.seed must be >= 0, got -1 {SEEDS}"]),
    (["--seed", "99999999999999999999999"],
     [f"train.seed must be <= 4,294,967,295, got 99999999999999999999999 {SEEDS}"]),
    (["--seed", str(2**32)], [f"train.seed must be <= 4,294,967,295, got {2**32} {SEEDS}"]),
    (["--set", "data.split_seed=-1"], [f"data.split_seed must be >= 0, got -1 {SEEDS}"]),
    (["--set", "noise.test_seed=-5"], [f"noise.test_seed must be >= 0, got -5 {SEEDS}"]),
    (["--data", "synthetic", "--set", "data.synthetic_images=1000000000"],
     ["data.synthetic_images must be <= ", ", got 1000000000 (the training set needs about ",
      " GiB, this machine has ", " GiB available)"]),
    (["--noise", "poisson", "--set", "noise.peak=1e-300"],
     ["noise.peak must be >= 0.01, got 1e-300 (a white pixel's mean photon count"]),
    (["--epochs", "10000000"], ["train.epochs must be <= 1,000,000, got 10000000 ("]),
    (["--set", "train.batch_size=2000000"], ["train.batch_size must be <= 1,048,576, got 2000000 ("]),
    (["--set", "runtime.collective_timeout_s=1e9"],
     ["runtime.collective_timeout_s must be <= 86,400, got 1000000000.0 ("]),
]  # fmt: skip
"""key=value on the launcher's command line -> what its one line must say (issue 34's probes,
and their neighbours)."""


@pytest.mark.parametrize(("extra", "says"), UNBOUNDED)
def test_values_past_their_bounds_are_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch, extra, says
):
    """Exit 2, one line naming the key, the value, the bound and why, nothing under --results.
    Before the bounds each of these trained (or hung, or died with a numpy traceback): here a
    launch that gets as far as training fails the test at once."""
    import launch.run

    def trained(*args, **kwargs):
        pytest.fail(f"{extra} was not refused: the launcher started training")

    monkeypatch.setattr(launch.run, "train_frameworks", trained)
    results = tmp_path / "results"
    err = refused(capsys, [*SMOKE, *extra, "--results", str(results)])
    assert err.startswith("error: "), err
    for fragment in says:
        assert fragment in err, err
    assert not results.exists() or list(results.iterdir()) == []


def test_the_largest_legal_values_still_train(tmp_path, capsys):
    """Seeds at numpy's top, threads at this machine's cores, the lowest poisson peak: both
    frameworks train an epoch and complete."""
    top = str(2**32 - 1)
    code = main([*SMOKE, "--framework", "both", "--epochs", "1", "--no-report", "--seed", top,
                 "--set", f"data.split_seed={top}", "--set", f"noise.test_seed={top}",
                 "--set", f"runtime.intra_op_threads={CORES}",
                 "--set", f"runtime.inter_op_threads={CORES}",
                 "--noise", "poisson", "--set", "noise.peak=0.01",
                 "--results", str(tmp_path), "--run-id", "top"])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    for framework in ("torch", "tf"):
        summary = read_json(tmp_path / "top" / framework / "summary.json")
        assert summary["status"] == "completed", (framework, summary)
