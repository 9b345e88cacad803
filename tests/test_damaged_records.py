"""Run folders whose files parse but hold the wrong things: each is skipped and named, and the
report of the healthy ones is still written (report.discover.damage, core.schema.shape_error);
a folder name that is HTML is shown, not run, in report.md; Ctrl-C ends a report in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers import launch

from denoisebench.core.schema import shape_error
from denoisebench.report.build import write_report
from denoisebench.report.discover import damage


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch torch run of the smoke profile."""
    root = tmp_path_factory.mktemp("finished")
    proc = launch("--profile", "smoke", "--epochs", "1", "--framework", "torch", "--no-report",
                  "--results", str(root), "--run-id", "ok")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "ok"


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    path.write_text(json.dumps(change(record)))


def set_key(key: str, value: object):
    return lambda record: record | {key: value}


DAMAGES = {
    # name: (how the copy is damaged, the file and what the warning says about it)
    "list_line_in_epochs": (
        lambda run: (run / "torch" / "epochs.jsonl").open("a").write("[]\n"),
        "torch/epochs.jsonl", "line 2: a list, not an object",
    ),
    "final_is_text": (
        lambda run: edit_json(run / "torch" / "summary.json", set_key("final", "oops")),
        "torch/summary.json", "'final' is \"oops\", not an object",
    ),
    "config_is_a_list": (
        lambda run: (run / "config.json").write_text("[]"),
        "config.json", "a list, not an object",
    ),
    "figure_is_text": (
        lambda run: edit_json(run / "torch" / "summary.json", set_key("wall_time_s", "slow")),
        "torch/summary.json", "'wall_time_s' is \"slow\", not a number",
    ),
    "final_figure_is_text": (
        lambda run: edit_json(
            run / "torch" / "summary.json",
            lambda s: s | {"final": s["final"] | {"test_psnr_db": "high"}},
        ),
        "torch/summary.json", "'final': 'test_psnr_db' is \"high\", not a number",
    ),
    "flag_is_a_number": (
        lambda run: edit_json(run / "torch" / "summary.json", set_key("disturbed", 1)),
        "torch/summary.json", "'disturbed' is 1, not true or false",
    ),
}  # fmt: skip


def test_each_damaged_copy_is_named_and_the_healthy_run_reported(finished, tmp_path, capsys):
    """Before the check each of these ended `report` in an AttributeError or TypeError
    traceback, with no report for the healthy runs either."""
    good = tmp_path / "good"
    shutil.copytree(finished, good)
    assert damage(good) is None
    for name, (hurt, file, says) in DAMAGES.items():
        copy = tmp_path / name
        shutil.copytree(finished, copy)
        hurt(copy)
        assert damage(copy) == f"{copy / file}: {says}", name
    out = tmp_path / "report"
    write_report([tmp_path], out, tmp_path, baseline_images=0)
    err = capsys.readouterr().err
    for name, (_, file, _) in DAMAGES.items():
        assert f"warning: skipping run folder {tmp_path / name}: {tmp_path / name / file}" in err
    with open(out / "runs.csv", newline="") as f:
        assert {row["folder"] for row in csv.DictReader(f)} == {str(good)}


def test_a_field_may_be_null_and_an_unknown_field_is_left_alone():
    assert shape_error({"wall_time_s": None, "final": None, "new_field": "x"}, "summary") is None
    assert shape_error({"loss": 0.5, "warmup": False, "step": 3}, "step") is None
    assert shape_error({"step": True}, "step") == "'step' is true, not a number"
    assert shape_error(["x"], "epoch") == "a list, not an object"


def test_html_in_a_folder_name_is_shown_not_run_in_report_md(finished, tmp_path):
    """report.html escaped it; report.md carried `<img src=x onerror=...>` raw, which a Markdown
    viewer renders as an image tag that runs its handler."""
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(finished, hostile)
    out = tmp_path / "report"
    write_report([hostile], out, tmp_path, baseline_images=0)
    md = (out / "report.md").read_text()
    assert "&lt;img src=x onerror=alert(1)>" in md
    assert "<img" not in md


def test_ctrl_c_while_the_baselines_run_ends_the_report_in_one_line(finished, tmp_path):
    """SIGINT during `report` while BM3D ran printed a 15-frame KeyboardInterrupt traceback."""
    import os
    import signal
    import subprocess
    import sys

    from helpers import REPO

    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "report", str(finished), "--out", str(tmp_path / "r"),
         "--baseline-images", "64"],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},  # BM3D runs, not cached
        # SIGINT as a terminal leaves it: an xdist worker may ignore it, and an ignored signal
        # stays ignored in its children (the report then ran to its end, exit 0, in CI)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    for line in proc.stdout:  # the baselines have started
        if line.startswith("baselines: ") and line.rstrip().endswith("..."):
            break
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert err.strip().splitlines() == [
        f"report: interrupted by SIGINT; {tmp_path / 'r'} keeps what it held (each file is "
        "replaced whole or not at all)"
    ]
