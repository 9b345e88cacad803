"""The GPU check (`python -m launch gpu-check`): its CPU rehearsal runs every step's code, a
step cut at its time limit keeps what finished, and the list of GPU test files is complete."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from helpers import REPO, launch

from denoisebench.bench import gpu_check, gpu_reports, gpu_shared, gpu_steps


def test_gpu_test_files_list_every_file_with_gpu_tests():
    marked = sorted(
        f"tests/{p.name}"
        for p in (REPO / "tests").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.gpu", p.read_text(), re.MULTILINE)
    )
    assert marked == sorted(gpu_steps.GPU_TEST_FILES)


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "check"
    proc = launch("gpu-check", "--cpu-rehearsal", "--framework", "torch", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["finished"] and result["rehearsal"]
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == [step.name for step in gpu_check.STEPS]
    assert {s["status"] for s in steps.values()} == {"ok"}, steps
    # each step measured something, with the command that measured it
    assert all(s["commands"] for s in steps.values())
    assert steps["environment"]["figures"]["torch"]["version"]
    assert steps["bench"]["figures"]["table"][0]["suite img/s"] > 0
    options = [row["option"] for row in steps["fast-paths"]["figures"]["table"]]
    assert options[0] == "float32 (faithful)" and options[-1] == "tuned mode"
    assert set(steps["profiler"]["figures"]["raw"]["torch"]) == {"on", "off"}
    assert steps["batch-sweep"]["figures"]["16"]["table"][0]["suite img/s"] > 0
    assert steps["paper"]["figures"]["tuned"]["epochs_done"] == 1
    # the shared-gpu step for real (gpu_shared.py): one device with batch 16 against torchrun's
    # 2 gloo ranks with batch 8, exact mode, 2 epochs: the final weights agree to 1e-9
    # (measured: 9e-17), and no speed figure is taken
    shared = steps["shared-gpu"]["figures"]
    assert shared["problems"] == [] and len(shared["epochs"]) == 2
    assert shared["max_weight_diff"] <= gpu_shared.WEIGHT_ATOL
    assert shared["shared_run"]["strategy"] == "ddp" and shared["shared_run"]["device"] == "2 x cpu"
    assert shared["note"] == gpu_shared.REHEARSAL_NOTE
    assert (
        len(steps["shared-gpu"]["commands"]) == 2
        and "--gpus 2" in steps["shared-gpu"]["commands"][1]
    )
    assert not any("throughput" in key for key in shared)
    assert "aten::" in (out / "top_ops.txt").read_text()
    # what comes back from a GPU node: at most 8 files, one folder
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)
    md = (out / "gpu_check.md").read_text()
    for step in gpu_check.STEPS:
        assert f"## {step.title} ({step.name}: ok)" in md
    assert "python -m launch bench --paths" in md


def test_a_step_cut_by_the_budget_keeps_the_summary(tmp_path, monkeypatch, capsys):
    # The cut step never ends on its own (a real subprocess that sleeps), so the budget, not
    # this machine's speed, decides that it is cut: a real bench step may end within any
    # budget on a fast enough CPU. The cut step keeps bench's own report.
    def quick(r, ctx, res, argvs):
        res.figures = {"printed": r.run(argvs[0]).output.strip()}

    fake = {
        "environment": {
            "commands": lambda ctx: [[ctx.python, "-c", "print('ready')"]],
            "report": quick,
        },
        "bench": {"commands": lambda ctx: [[ctx.python, "-c", "import time; time.sleep(120)"]]},
    }
    planted = [dataclasses.replace(step, **fake.get(step.name, {})) for step in gpu_check.STEPS]
    monkeypatch.setattr(gpu_check, "STEPS", planted)
    out = tmp_path / "check"
    argv = ["--cpu-rehearsal", "--framework", "torch", "--only", "environment", "--only", "bench"]
    assert gpu_check.main([*argv, "--budget-s", "6", "--out", str(out)]) == 1
    steps = {s["name"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert steps["environment"]["status"] == "ok"
    assert steps["environment"]["figures"] == {"printed": "ready"}
    assert steps["bench"]["status"] == "timeout"
    assert steps["bench"]["reason"].startswith("cut after")
    assert steps["paper"]["status"] == "skipped"
    assert "| bench | timeout |" in (out / "gpu_check.md").read_text()
    log = (out / "log.txt").read_text()
    assert "$ python -c 'import time; time.sleep(120)'" in log
    assert "cut at its time limit" in log
    assert f"1 of {len(gpu_check.STEPS)} steps not ok" in capsys.readouterr().out


def test_step_limits_share_what_is_left_by_need():
    needs = [step.need_s for step in gpu_check.STEPS]
    total = sum(needs)
    # a budget covering every need: each step may take more than it needs
    assert gpu_check.step_limit_s(2 * total, needs[1], total) == pytest.approx(2 * needs[1])
    # a short budget: the same proportion for every step, so the last one still gets its part
    last = gpu_check.step_limit_s(0.5 * needs[-1], needs[-1], needs[-1])
    assert last == pytest.approx(0.5 * needs[-1])
    # never below the floor, never above what is left
    assert gpu_check.step_limit_s(100.0, 1.0, total) == gpu_check.MIN_STEP_S
    assert gpu_check.step_limit_s(10.0, 1.0, total) == 10.0


def test_each_step_names_the_sizes_its_commands_read(tmp_path):
    """Step.sizes says which sizes a step's commands read: set only those to the GPU's, and
    they are the GPU's commands; set any one of them alone, and they change."""
    gpu, tiny = gpu_steps.GPU_SIZES, gpu_steps.REHEARSAL_SIZES
    fields = {f.name for f in dataclasses.fields(gpu_steps.Sizes)}
    assert all(getattr(gpu, f) != getattr(tiny, f) for f in fields)
    assert {f for step in gpu_check.STEPS for f in step.sizes} == fields

    def commands(step, **sizes):
        ctx = gpu_steps.Context(
            dataclasses.replace(tiny, **sizes), ["torch", "tf"], tmp_path, tmp_path
        )
        return step.commands(ctx)

    for step in gpu_check.STEPS:
        at_gpu = {f: getattr(gpu, f) for f in fields}
        assert commands(step, **{f: at_gpu[f] for f in step.sizes}) == commands(step, **at_gpu)
        for f in step.sizes:
            assert commands(step, **{f: at_gpu[f]}) != commands(step), (step.name, f)


def test_without_a_gpu_it_says_so_and_names_the_rehearsal(tmp_path):
    from denoisebench.measure.environment import gpu_info

    if gpu_info().get("gpus"):
        pytest.skip("this machine has a GPU")
    proc = launch("gpu-check", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "no NVIDIA GPU found" in proc.stderr and "--cpu-rehearsal" in proc.stderr


def test_bad_step_name_is_refused(tmp_path):
    proc = launch("gpu-check", "--cpu-rehearsal", "--only", "nope", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "--only nope: not a step" in proc.stderr


def test_paper_lines_give_a_whole_run_figure_only_for_a_finished_run():
    """Issue 33: the paper's run is run to the end, not projected from a cut run."""
    figures = {
        "faithful": {
            "wall_s": 60.0, "epochs_done": 100, "epochs": 100, "returncode": 0,
            "train_time_s": 50.0, "eval_time_s": 5.0, "throughput_steady_img_s": 50_000.0,
            "gpu_energy_j": 12_000.0, "test_psnr_db": 30.0,
        },
        "tuned": {"wall_s": 30.0, "epochs_done": 10, "epochs": 100, "returncode": None,
                  "cut": True},
    }  # fmt: skip
    faithful, tuned = gpu_reports.paper_lines(figures, gpu_steps.GPU_SIZES)
    assert "25,000 images x 100 epochs" in faithful and "takes 60 s on this machine" in faithful
    assert "50 s of it training steps" in faithful and "12.0 kJ" in faithful
    assert tuned == (
        "tuned: not finished (cut at its time limit after 10 of 100 epochs, 30 s): "
        "no whole-run figure"
    )


def test_the_paper_run_gets_its_whole_need_before_the_others_share_the_rest():
    """At the default budget (shorter than every need together) the paper's run still gets
    its need with the margin, wherever it stands, and the steps before it leave it that."""
    paper = next(s for s in gpu_check.STEPS if s.name == "paper")
    assert paper.whole and [s.name for s in gpu_check.STEPS if s.whole] == ["paper"]
    budget = 480.0
    assert sum(s.need_s for s in gpu_check.STEPS) > budget  # the case that matters
    want = gpu_check.WHOLE_MARGIN * paper.need_s
    assert gpu_check.step_limits(budget, [paper]) == want
    i = gpu_check.STEPS.index(paper)
    left = budget
    for k in range(i):  # every step before it takes its whole limit
        left -= gpu_check.step_limits(left, gpu_check.STEPS[k:])
    assert left >= want
    assert gpu_check.step_limits(left, gpu_check.STEPS[i:]) == want
    # a step after it shares only what the paper's run leaves
    tests = gpu_check.STEPS[1]  # above the floor either way
    assert gpu_check.step_limits(budget, gpu_check.STEPS[1:]) < gpu_check.step_limit_s(
        budget, tests.need_s, sum(s.need_s for s in gpu_check.STEPS[1:])
    )


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "0", "-1"])
def test_a_budget_that_is_not_a_number_of_seconds_is_refused_and_nothing_is_touched(
    tmp_path, capsys, budget
):
    """`--budget-s nan` passed `<= 0` and went on to overwrite an earlier check's results; a
    bad budget is refused (exit 2, one line) before the output folder is touched."""
    out = tmp_path / "check"
    out.mkdir()
    (out / "gpu_check.json").write_text("{}\n")
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--cpu-rehearsal", f"--budget-s={budget}", "--out", str(out)])
    assert exc.value.code == 2
    assert f"--budget-s {float(budget)}: must be a number of seconds > 0" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json"]
    assert (out / "gpu_check.json").read_text() == "{}\n"


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "check"
    out.write_text("mine\n")
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--cpu-rehearsal", "--out", str(out)])
    assert exc.value.code == 2
    assert f"--out {out}: a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "mine\n"


def test_pytest_stopped_before_its_tests_is_named_with_its_cause(tmp_path):
    """A real pytest refusing a conftest's hook (as pytest without pytest-xdist refused the
    project's, issue 34): the step's summary said only 'no tests ran in 1.21s'."""
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text("def pytest_no_such_hook():\n    pass\n")
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-p",
         "no:randomly", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 3, run.stdout[-2000:]
    cause = gpu_reports.pytest_cause(run.stdout + run.stderr, run.returncode)
    assert cause.startswith("pluggy._manager.PluginValidationError: unknown hook")
    assert "pytest_no_such_hook" in cause
    assert gpu_reports.pytest_cause("1 passed in 0.1s", 0) is None
    said = "ERROR: usage: python -m pytest [options]\npython -m pytest: error: unrecognized arguments: -n"
    assert (
        gpu_reports.pytest_cause(said, 4) == "python -m pytest: error: unrecognized arguments: -n"
    )
