"""bench crossing-nodes (denoisebench.bench.crossing): its plan, its commands and its table.

The benchmark itself runs SLURM jobs (results/benchmarks/crossing_nodes_cpu.md was measured on
the test cluster); here its pieces are checked as data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from denoisebench.bench import crossing
from denoisebench.bench.cli import main


def test_each_repeat_runs_both_layouts_back_to_back_the_first_alternating():
    first = crossing.plan(["native", "horovod"], ["torch"], 2, repeat=0)
    second = crossing.plan(["native", "horovod"], ["torch"], 2, repeat=1)
    assert [(p.engine, p.layout, p.nodes, p.per_node) for p in first] == [
        ("native", "one node", 1, 2),
        ("native", "across nodes", 2, 1),
        ("horovod", "one node", 1, 2),
        ("horovod", "across nodes", 2, 1),
    ]
    assert [p.layout for p in second] == ["across nodes", "one node"] * 2


def test_both_layouts_train_the_same_global_batch_as_one_slurm_job_each():
    args = crossing.build_parser("bench").parse_args(["--workers", "4", "--batch-size", "32"])
    args.launch_options = ["--time", "00:10:00"]
    one, across = crossing.plan(["horovod"], ["tf"], 4, repeat=0)
    for p, nodes in ((one, "1"), (across, "4")):
        argv = crossing.launch_argv(p, args, Path("/r"), "x")
        assert argv[:6] == [sys.executable, "-m", "launch", "--slurm", "--wait", "--no-report"]
        assert argv[argv.index("--nodes") + 1] == nodes
        per_node = int(argv[argv.index("--gpus") + 1])
        assert int(nodes) * per_node * int(argv[argv.index("--batch-size") + 1]) == 32
        assert "--cpu-workers" in argv and argv[-2:] == ["--time", "00:10:00"]
        assert argv[argv.index("--engine") + 1] == "horovod"


def run(engine: str, layout: str, img_s: float, disturbed: bool = False) -> dict:
    return {"engine": engine, "framework": "torch", "layout": layout, "img_s": img_s,
            "disturbed": disturbed}  # fmt: skip


def test_the_cost_is_the_ratio_of_the_medians_with_the_per_repeat_extremes():
    runs = [
        run("native", "one node", 100.0), run("native", "across nodes", 80.0),
        run("native", "across nodes", 90.0), run("native", "one node", 99.0, disturbed=True),
        run("native", "one node", 101.0), run("native", "across nodes", 50.0),
    ]  # fmt: skip
    [row] = crossing.table(runs)
    assert (row["one_node_img_s"], row["across_nodes_img_s"]) == (100.0, 80.0)
    assert row["cost"] == pytest.approx(1.25)
    assert (row["cost_min"], row["cost_max"]) == pytest.approx((1.1, 2.02))
    assert (row["repeats"], row["disturbed"]) == (3, 1)
    assert "1.250 (1.100-2.020)" in crossing.format_rows([row], 2)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--workers", "1"], "--workers must be >= 2"),
        (["--batch-size", "30", "--workers", "4"], "not a multiple of --workers"),
        (["--json", "/nonexistent/x.json"], "does not exist"),
    ],
)
def test_bad_options_are_refused_in_one_line(argv, says, capsys):
    assert main(["crossing-nodes", *argv]) == 2
    assert says in capsys.readouterr().err
