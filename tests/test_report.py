"""The comparison report (denoisebench.report.build) on real tiny results.

One module fixture trains real runs through the launcher (2 repeats on one device, one run on
2 CPU workers, both frameworks) and writes the report once; the tests check its tables against
the raw records, the files it writes, the verdict rule, the classical baselines, and that
report.html shows its plots in a real headless Chromium.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer
from report_fixtures import add_gpu_records, dump_dom, ensure_chromium, make_results
from synthetic_runs import LOAD_REASON, write_repeats, write_run

from denoisebench.core.records import read_json, read_jsonl
from denoisebench.report import baselines, runs
from denoisebench.report import build as report
from denoisebench.report import plots as report_plots
from denoisebench.report.build import write_report
from denoisebench.report.discover import find_run_folders
from denoisebench.report.render import render_markdown
from denoisebench.report.runs import time_to_target
from denoisebench.report.verdicts import Stat, verdict

PLOTS = [
    "loss_per_framework.png",
    "loss_overlay.png",
    "throughput_scaling.png",
    "peak_memory.png",
    "test_images.png",
]
# Nothing to show on CPU runs: one line each in the report, no image ("Not drawn: why").
NOT_DRAWN = {"energy_per_image.png": "GPU energy per image", "power_over_time.png": "GPU power"}
CSVS = ["speed", "memory_energy", "time_to_target", "quality", "runs", "baselines"]
CSVS += ["environment", "verdicts"]
BASELINE_IMAGES = 3  # BM3D takes about 1 s an image on one core


@pytest.fixture(scope="session")  # once, on the worker that runs its xdist group
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report-results")
    runs = make_results(root)
    folders = [runs["rep"] / "repeat-0", runs["rep"] / "repeat-1", runs["g2"]]
    # A target every run reaches at some epoch: the lowest of the runs' best PSNRs.
    best = [
        max(e["test_psnr_db"] for e in read_jsonl(f / fw / "epochs.jsonl"))
        for f in folders
        for fw in ("torch", "tf")
    ]
    target = min(best)
    out = root / "report"
    html = write_report(None, out, root, target_psnr_db=target, baseline_images=BASELINE_IMAGES)
    return {"root": root, "folders": folders, "out": out, "html": html, "target": target}


def csv(built: dict, name: str) -> pd.DataFrame:
    return pd.read_csv(built["out"] / f"{name}.csv")


def summaries(folders: list[Path], framework: str) -> list[dict]:
    return [read_json(f / framework / "summary.json") for f in folders]


def group_row(frame: pd.DataFrame, framework: str, devices: int) -> pd.Series:
    rows = frame[(frame["framework"] == framework) & (frame["devices"] == devices)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_find_run_folders_finds_repeats_and_runs_but_not_their_parents(built):
    found = find_run_folders([built["root"]])
    assert found == sorted(f.resolve() for f in built["folders"])
    # the repeats' parent has config.json but no framework results: not a run folder
    assert (built["root"] / "rep" / "config.json").is_file()
    assert find_run_folders([built["root"] / "g2"]) == [(built["root"] / "g2").resolve()]


def test_throughput_table_equals_the_summaries(built):
    speed = csv(built, "speed")
    rep = built["folders"][:2]
    for framework in ("torch", "tf"):
        values = [s["throughput_steady_img_s"] for s in summaries(rep, framework)]
        row = group_row(speed, framework, 1)
        assert row["repeats"] == 2 and row["engine"] == "native"
        assert row["throughput_steady_img_s_median"] == pytest.approx(np.median(values), rel=1e-12)
        assert row["throughput_steady_img_s_min"] == pytest.approx(min(values), rel=1e-12)
        assert row["throughput_steady_img_s_max"] == pytest.approx(max(values), rel=1e-12)
        two = summaries([built["folders"][2]], framework)[0]
        assert two["world_size"] == 2
        row2 = group_row(speed, framework, 2)
        assert row2["throughput_steady_img_s_median"] == pytest.approx(
            two["throughput_steady_img_s"], rel=1e-12
        )
        assert row2["throughput_per_device_img_s_median"] == pytest.approx(
            two["throughput_steady_img_s"] / 2, rel=1e-12
        )


def test_step_times_equal_the_step_records(built):
    speed = csv(built, "speed")
    g2 = built["folders"][2]
    warmup = read_json(g2 / "config.json")["profiler"]["warmup_steps"]
    for framework in ("torch", "tf"):
        steady = [s for s in read_jsonl(g2 / framework / "steps.jsonl") if s["step"] >= warmup]
        times = [s["step_time_s"] for s in steady]
        row = group_row(speed, framework, 2)
        assert row["step_time_p50_s_median"] == pytest.approx(np.percentile(times, 50))
        assert row["step_time_p95_s_median"] == pytest.approx(np.percentile(times, 95))
        wait = sum(s["data_wait_s"] for s in steady) / sum(times)
        assert row["data_wait_fraction_median"] == pytest.approx(wait)


def test_scaling_efficiency_is_the_formula(built):
    speed = csv(built, "speed")
    for framework in ("torch", "tf"):
        one = np.median(
            [s["throughput_steady_img_s"] for s in summaries(built["folders"][:2], framework)]
        )
        two = summaries([built["folders"][2]], framework)[0]["throughput_steady_img_s"]
        row = group_row(speed, framework, 2)
        assert row["scaling_efficiency_median"] == pytest.approx(two / (2 * one), rel=1e-12)
        assert group_row(speed, framework, 1)["scaling_efficiency_median"] == pytest.approx(1.0)


def test_time_to_target_is_the_cumulative_train_time(built):
    table = csv(built, "time_to_target")
    target = built["target"]
    for framework in ("torch", "tf"):
        for devices, folders in ((1, built["folders"][:2]), (2, built["folders"][2:])):
            expected = []
            for folder in folders:
                total = 0.0
                for rec in read_jsonl(folder / framework / "epochs.jsonl"):
                    total += rec["train_time_s"]
                    if rec["test_psnr_db"] >= target:
                        expected.append(total)
                        break
            assert len(expected) == len(folders)  # the target was chosen so every run gets there
            row = group_row(table, framework, devices)
            assert row["target_psnr_db_median"] == pytest.approx(target)
            assert row["time_to_target_s_median"] == pytest.approx(np.median(expected), rel=1e-12)
            assert row["time_to_target_s_min"] == pytest.approx(min(expected), rel=1e-12)


def test_time_to_target_on_records():
    epochs = [
        {"epoch": 0, "train_time_s": 2.0, "test_psnr_db": 20.0, "gpu_energy_j": 100.0},
        {"epoch": 1, "train_time_s": 3.0, "test_psnr_db": 25.0, "gpu_energy_j": 150.0},
        {"epoch": 2, "train_time_s": 4.0, "test_psnr_db": 27.0, "gpu_energy_j": 200.0},
    ]
    hit = time_to_target(epochs, 24.0)
    assert (hit["epochs_to_target"], hit["time_to_target_s"], hit["energy_to_target_j"]) == (
        2,
        5.0,
        250.0,
    )
    never = time_to_target(epochs, 30.0)
    assert never["time_to_target_s"] is None and "never reached" in never["target_reason"]
    assert "best 27.00 dB" in never["target_reason"]
    cpu = [dict(e, gpu_energy_j=None, gpu_energy_reason="no GPU: training on CPU") for e in epochs]
    no_energy = time_to_target(cpu, 24.0)
    assert no_energy["time_to_target_s"] == 5.0 and no_energy["energy_to_target_j"] is None
    assert no_energy["energy_target_reason"] == "no GPU: training on CPU"


def test_missing_energy_shows_missing_with_the_records_reason(built):
    table = csv(built, "memory_energy")
    md = (built["out"] / "report.md").read_text()
    for framework in ("torch", "tf"):
        summary = summaries([built["folders"][2]], framework)[0]
        row = group_row(table, framework, 2)
        if summary["gpu_energy_per_image_j"] is not None:  # a machine with a GPU measured it
            assert row["gpu_energy_per_image_j_median"] == pytest.approx(
                summary["gpu_energy_per_image_j"]
            )
            continue
        assert math.isnan(row["gpu_energy_per_image_j_median"])  # empty cell, never 0
        assert row["gpu_energy_per_image_j_reason"] == summary["gpu_energy_reason"]
        # shown with its reason: in its cell, or in the line saying why the column is left out
        why = summary["gpu_energy_reason"]
        assert f"missing ({why})" in md or f"left out: missing in every row ({why})" in md
    # no figure of the memory and energy table reads 0 (a missing value shown as zero)
    section = md.split("## Memory and energy")[1].split("\n## ")[0]
    cells = [c.strip() for line in section.splitlines()[4:] for c in line.split("|")]
    assert cells and not [c for c in cells if re.fullmatch(r"0(\.0*)?", c)]


def test_files_are_written_and_html_is_self_contained(built):
    out = built["out"]
    for name in ["report.md", "report.html", *PLOTS, *(f"{c}.csv" for c in CSVS)]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    html = built["html"].read_text()
    for name in PLOTS:
        assert f"]({name})" in md
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, caption in NOT_DRAWN.items():
        after = md.split(f"### {caption}")[1].split("###")[0]
        assert "Not drawn: " in after and "no GPU" in after and "![" not in after
        assert not (out / name).exists()
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(sources) == len(PLOTS)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for text in (md, html):
        for section in ("Verdicts", "Speed", "Classical baselines", "Environment", "Configs"):
            assert section in text
    runs = csv(built, "runs")
    assert len(runs) == 6 and set(runs["status"]) == {"completed"}  # 3 folders x 2 frameworks
    env = csv(built, "environment")
    assert env["packages"].str.contains("torch").any() and env["commit"].notna().all()


def test_verdict_rule():
    def s(name, med, lo, hi, n=3):
        return Stat(name, med, lo, hi, n)

    where = "on 4 GPUs"
    separated = verdict(
        "throughput_steady_img_s",
        s("PyTorch", 1230.0, 1200.0, 1250.0),
        s("TensorFlow", 1000.0, 980.0, 1020.0),
        where,
    )
    assert separated.startswith(
        "Throughput on 4 GPUs: PyTorch trains 1.23x as fast as TensorFlow (medians 1,230 vs "
        "1,000 img/s, +230 img/s; ratio range 1.18-1.28 over the repeats' extremes; 3 PyTorch "
        "runs and 3 TensorFlow runs, none disturbed by machine load)"
    )
    assert separated.endswith("do not overlap: PyTorch is faster.")
    overlapping = verdict(
        "throughput_steady_img_s",
        s("PyTorch", 1230.0, 990.0, 1250.0),
        s("TensorFlow", 1000.0, 980.0, 1020.0),
        where,
    )
    assert "within noise" in overlapping and "faster" not in overlapping
    assert "PyTorch trains 1.23x as fast as TensorFlow" in overlapping  # the ratio, always
    assert "ratio range 0.97-1.28" in overlapping and "no winner" in overlapping
    single = verdict(
        "throughput_steady_img_s",
        s("PyTorch", 1230.0, 1230.0, 1230.0, 1),
        s("TensorFlow", 1000.0, 1000.0, 1000.0, 1),
        where,
    )
    assert "not enough repeats" in single and "single run" in single and "faster" not in single
    assert "1.23x as fast as" in single and "no winner" in single
    energy = verdict(
        "gpu_energy_per_image_j",
        s("PyTorch", 0.82, 0.80, 0.84),
        s("TensorFlow", 1.0, 0.95, 1.05),
        where,
    )
    assert energy.startswith(
        "GPU energy per image on 4 GPUs: PyTorch uses 0.82x the GPU energy per image of "
        "TensorFlow (medians 0.820 vs 1.00 J/img, -0.180 J/img; ratio range 0.76-0.88"
    )
    assert energy.endswith("do not overlap: PyTorch uses less GPU energy per image.")
    psnr = verdict(
        "test_psnr_db", s("PyTorch", 27.0, 26.9, 27.1), s("TensorFlow", 27.5, 27.4, 27.6), where
    )
    assert psnr.startswith(
        "Final test PSNR on 4 GPUs: TensorFlow's final test PSNR is 0.50 dB above PyTorch's "
        "(medians 27.50 vs 27.00 dB, +0.50 dB; difference range +0.30 dB to +0.70 dB"
    )
    assert psnr.endswith("do not overlap: TensorFlow reaches the higher final test PSNR.")
    same = verdict(
        "test_psnr_db", s("PyTorch", 27.0, 27.0, 27.0), s("TensorFlow", 27.5, 27.5, 27.5), where
    )
    assert "within noise" in same and "higher" not in same and "no winner" in same
    missing = verdict(
        "gpu_energy_per_image_j",
        Stat("PyTorch", None, None, None, 0, "no GPU: training on CPU"),
        s("TensorFlow", 1.0, 0.9, 1.1),
        where,
    )
    assert "missing for PyTorch (no GPU: training on CPU)" in missing


def test_report_verdicts_follow_the_rule(built):
    lines = csv(built, "verdicts")["detail"].tolist()  # the full reasoning
    two = [v for v in lines if "on 2 CPU workers" in v]
    # one run on 2 workers: no winner may be named there
    assert two and all("not enough repeats" in v or "missing" in v for v in two)
    assert not [v for v in two if "no winner" not in v and "missing" not in v]
    # these runs share two cores with the other test worker: whether or not they were found
    # disturbed, a throughput line names no winner from a disturbed run
    runs = csv(built, "runs")
    one = [v for v in lines if v.startswith("Throughput on 1 CPU worker")]
    assert len(one) == 1
    if runs.loc[runs["devices"] == 1, "disturbed"].any():
        assert "no winner" in one[0] and "disturbed (" in one[0] and " is faster" not in one[0]


def verdict_lines(folders: list[Path]) -> dict[str, str]:
    """The full reasoning of the report's verdicts on `folders` (verdicts.csv's detail; the
    report's short lines: tests/test_report_screen.py), by their figure's words."""
    _report, csvs = report.build_report(folders, baseline_images=0)
    lines = csvs["verdicts"]["detail"].tolist()
    assert len(lines) == 3, lines
    return {v.split(" on 1 CPU worker")[0]: v for v in lines}


def test_disturbed_repeats_name_no_winner_and_say_whose_and_why(tmp_path):
    folders = write_repeats(
        tmp_path,
        img_s={"torch": [80.0, 82.0], "tf": [437.0, 441.0]},
        psnr_db={"torch": [25.0, 25.1], "tf": [26.0, 26.1]},
        disturbed={"torch": True},
    )
    lines = verdict_lines(folders)
    speed = lines["Throughput"]
    assert speed.startswith(
        f"Throughput on 1 CPU worker: no winner: 2 of 2 PyTorch runs were disturbed ({LOAD_REASON})."
    )
    assert "TensorFlow is faster" not in speed and "TensorFlow run was" not in speed
    assert "2 TensorFlow runs and 2 PyTorch runs, 2 PyTorch disturbed by machine load" in speed
    # the ratio stays visible, labelled as not a verdict
    ratio = f"TensorFlow trains {439.0 / 81.0:.2f}x as fast as PyTorch"
    assert f"Not a verdict, as measured: {ratio} (medians 439 vs 81.0 img/s, +358 img/s" in speed
    assert f"ratio range {437.0 / 82.0:.2f}-{441.0 / 80.0:.2f}" in speed
    # load does not change the test PSNR: that verdict stands, saying the runs were disturbed
    psnr = lines["Final test PSNR"]
    assert psnr.endswith(
        f"TensorFlow reaches the higher final test PSNR (2 of 2 PyTorch runs were disturbed "
        f"({LOAD_REASON}); machine load does not change this figure)."
    )
    rep, csvs = report.build_report(folders, baseline_images=0)
    speed_csv = csvs["speed"].set_index("framework")
    assert (
        speed_csv.loc["torch", "disturbed_runs"] == 2 and speed_csv.loc["tf", "disturbed_runs"] == 0
    )
    assert LOAD_REASON in speed_csv.loc["torch", "disturbed_reasons"]
    assert rep.tables["speed"][1]["repeats"].tolist() == ["2 (2 disturbed)", "2"]
    env = csvs["environment"].set_index("framework")
    assert set(env.loc["PyTorch", "disturbed"]) == {f"yes: {LOAD_REASON}"}
    assert set(env.loc["TensorFlow", "disturbed"]) == {"no"}
    conditions = env.loc["PyTorch", "run conditions"].iloc[0]
    assert conditions.startswith("other processes 48% of the run's 2 cores (mean), 58% max")
    assert "load per core max 1.55 (load average max 3.10); steal 0%" in conditions
    assert "GPU: missing (no GPU: training on CPU)" in conditions


def test_undisturbed_separate_repeats_name_the_winner_with_ratio_and_spread(tmp_path):
    torch, tf = [100.0, 104.0, 102.0], [120.0, 125.0, 123.0]
    speed = verdict_lines(write_repeats(tmp_path, img_s={"torch": torch, "tf": tf}))["Throughput"]
    assert speed == (
        f"Throughput on 1 CPU worker: TensorFlow trains {123 / 102:.2f}x as fast as PyTorch "
        f"(medians 123 vs 102 img/s, +21.0 img/s; ratio range {120 / 104:.2f}-{125 / 100:.2f} "
        "over the repeats' extremes; 3 TensorFlow runs and 3 PyTorch runs, none disturbed by "
        "machine load); the ranges TensorFlow 120-125 and PyTorch 100-104 img/s "
        "over 3 and 3 repeats do not overlap: TensorFlow is faster."
    )


def test_undisturbed_overlapping_repeats_give_ratio_and_spread_and_no_winner(tmp_path):
    torch, tf = [100.0, 110.0, 120.0], [105.0, 115.0, 125.0]
    speed = verdict_lines(write_repeats(tmp_path, img_s={"torch": torch, "tf": tf}))["Throughput"]
    assert speed.startswith(
        f"Throughput on 1 CPU worker: TensorFlow trains {115 / 110:.2f}x as fast as PyTorch "
        f"(medians 115 vs 110 img/s, +5.00 img/s; ratio range {105 / 120:.2f}-{125 / 100:.2f} "
        "over the repeats' extremes; 3 TensorFlow runs and 3 PyTorch runs, none disturbed by "
        "machine load); no winner: the ranges TensorFlow 105-125 and PyTorch 100-120 img/s over "
        "3 and 3 repeats overlap"
    )
    assert "is faster" not in speed and "were disturbed" not in speed
    # the same PSNR in every run (25 dB): no spread measured, no winner
    assert (
        "no winner: within noise / no spread measured"
        in verdict_lines(write_repeats(tmp_path / "b", img_s={"torch": torch, "tf": tf}))[
            "Final test PSNR"
        ]
    )


def test_run_folders_without_load_records_read_as_not_recorded(tmp_path):
    for fw, img_s in (("torch", 100.0), ("tf", 120.0)):
        write_run(tmp_path / "old", fw, img_s=img_s, psnr_db=25.0, conditions=False)
    runs = report.runs_frame([tmp_path / "old"])
    assert not runs["disturbed"].any() and not runs["conditions_recorded"].any()
    _rep, csvs = report.build_report([tmp_path / "old"], baseline_images=0)
    env = csvs["environment"]
    assert set(env["disturbed"]) == {"not recorded"}
    assert all(
        c.startswith("not recorded (run folder written before") for c in env["run conditions"]
    )
    speed = csvs["verdicts"]["detail"].iloc[0]
    assert "no winner: not enough repeats" in speed and "disturbed" not in speed
    line = csvs["verdicts"]["verdict"].iloc[0]  # the report's short line
    assert line.endswith(
        "(120 vs 100 img/s, 1 run each, machine load not recorded); no winner: that needs 2 "
        "runs or more of each (--repeats 3)."
    )
    assert "1 TensorFlow run and 1 PyTorch run, machine load not recorded" in speed


def test_baselines_beat_the_noisy_input_on_the_same_sample(built):
    table = csv(built, "baselines").set_index("method")
    assert set(table["images"]) == {BASELINE_IMAGES}
    noisy = table.loc["noisy input", "psnr_db"]
    assert table.loc["BM3D", "psnr_db"] > noisy + 5.0  # sigma 0.2: BM3D gains ~12 dB here
    assert table.loc["non-local means", "psnr_db"] > noisy
    assert table.loc["total variation", "psnr_db"] > noisy
    for framework in ("PyTorch", "TensorFlow"):  # every run folder's, on the same sample
        scores = table.loc[[framework], "psnr_db"]
        assert len(scores) == len(built["folders"]) and not scores.isna().any()
    assert len(table.loc[["BM3D"]]) == 1  # the classical methods once: one set of test images
    md = (built["out"] / "report.md").read_text()
    assert f"{BASELINE_IMAGES} test images (seeded sample" in md


def test_baselines_missing_bm3d_is_a_reason_not_a_crash(built, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: BM3D must run
    monkeypatch.setitem(__import__("sys").modules, "bm3d", None)  # import bm3d -> ImportError
    result = baselines.run_baselines(built["folders"][2], images=2, methods=("BM3D",))
    row = result.frame.set_index("method").loc["BM3D"]
    assert math.isnan(row["psnr_db"]) and "BM3D failed" in row["reason"] and "bm3d" in row["reason"]
    assert result.frame.set_index("method").loc["noisy input", "images"] == 2


def test_baselines_are_scored_once_per_sample_and_cached(built, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    methods = ("non-local means", "total variation")
    first = baselines.run_baselines(built["folders"][2], images=3, methods=methods)
    assert capsys.readouterr().out.count("cached") == 0
    assert len(list((tmp_path / "denoisebench" / "baselines").glob("*.npz"))) == 2
    again = baselines.run_baselines(built["folders"][2], images=3, methods=methods)
    assert capsys.readouterr().out.count(": cached") == 2  # a cache hit is said
    a, b = first.frame.set_index("method"), again.frame.set_index("method")
    for method in methods:
        np.testing.assert_array_equal(first.outputs[method], again.outputs[method])
        assert a.loc[method, "psnr_db"] == b.loc[method, "psnr_db"]
        assert b.loc[method, "params"] == a.loc[method, "params"] + " (cached)"
    # another sample is another key: computed, not taken from the cache
    baselines.run_baselines(built["folders"][2], images=2, methods=methods)
    assert capsys.readouterr().out.count(": cached") == 0


def test_html_shows_every_plot_in_chromium(built, tmp_path):
    browser = ensure_chromium()
    dom = dump_dom(browser, built["html"])
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == len(PLOTS) and all(w > 0 for w in widths), widths
    assert f"{len(PLOTS)} of {len(PLOTS)} images decoded" in dom
    # the check can fail: an image whose data does not decode reads 0
    broken = tmp_path / "broken.html"
    html = built["html"].read_text()
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]{40}", "base64,AAAA", html, count=1))
    assert f"{len(PLOTS) - 1} of {len(PLOTS)} images decoded" in dump_dom(browser, broken)


def test_gpu_records_give_energy_power_and_energy_to_target(built, tmp_path):
    run = tmp_path / "gpu-like"
    shutil.copytree(built["folders"][0], run)
    energy = [40.0, 60.0]
    add_gpu_records(run, "torch", energy)
    out = tmp_path / "report"
    write_report([run], out, tmp_path, target_psnr_db=built["target"], baseline_images=0)
    summary = read_json(run / "torch" / "summary.json")
    row = group_row(csv({"out": out}, "memory_energy"), "torch", 1)
    assert row["gpu_energy_per_image_j_median"] == pytest.approx(summary["gpu_energy_per_image_j"])
    assert row["gpu_energy_per_epoch_j_median"] == pytest.approx(50.0)
    assert row["energy_method"] == "power_integration"
    epochs = read_jsonl(run / "torch" / "epochs.jsonl")
    reached = next(e["epoch"] for e in epochs if e["test_psnr_db"] >= built["target"])
    target_row = group_row(csv({"out": out}, "time_to_target"), "torch", 1)
    assert target_row["energy_to_target_j_median"] == pytest.approx(sum(energy[: reached + 1]))
    runs = report.runs_frame([run])
    assert (runs.set_index("framework").loc["torch", "device_kind"]) == "GPU"
    # the power plot drew the samples instead of its "missing" placeholder
    assert report.plot_power(runs) != report.plot_power(runs[runs["framework"] == "tf"])


def test_cli_default_target_and_errors(built, tmp_path, capsys):
    out = tmp_path / "cli"
    code = report.main([str(built["root"] / "g2"), "--out", str(out), "--baseline-images", "0"])
    assert code == 0 and f"report: {out / 'report.html'}" in capsys.readouterr().out
    table = csv({"out": out}, "time_to_target")
    g2 = built["folders"][2]
    for framework in ("torch", "tf"):
        epochs = read_jsonl(g2 / framework / "epochs.jsonl")
        target = epochs[-1]["noisy_psnr_db"] + report.DEFAULT_TARGET_GAIN_DB
        row = group_row(table, framework, 2)
        assert row["target_psnr_db_median"] == pytest.approx(target)
        if any(e["test_psnr_db"] >= target for e in epochs):
            assert not math.isnan(row["time_to_target_s_median"])
        else:
            assert math.isnan(row["time_to_target_s_median"])
            assert "never reached" in row["time_to_target_s_reason"]
    assert "switched off" in (out / "report.md").read_text()
    assert (out / "test_images.png").is_file()  # the picture grid needs no classical baseline
    assert report.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_failed_run_is_listed_and_its_figures_are_missing_with_the_error(built, tmp_path):
    run = tmp_path / "failed-tf"
    shutil.copytree(built["folders"][0], run)
    summary = read_json(run / "tf" / "summary.json")
    summary.update(status="failed", error="RuntimeError: boom", final=None)
    (run / "tf" / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    write_report([run], out, tmp_path, baseline_images=0)
    runs = csv({"out": out}, "runs").set_index("framework")
    assert runs.loc["tf", "status"] == "failed" and runs.loc["torch", "status"] == "completed"
    row = group_row(csv({"out": out}, "quality"), "tf", 1)
    assert row["repeats"] == 0 and row["runs"] == 1
    assert math.isnan(row["test_psnr_db_median"])
    assert row["test_psnr_db_reason"] == "no completed run (RuntimeError: boom)"
    verdicts = csv({"out": out}, "verdicts")["verdict"].tolist()
    assert any("missing for TensorFlow (no completed run" in v for v in verdicts)


def test_a_damaged_run_folder_is_skipped_and_named(built, tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(built["folders"][0], good)
    shutil.copytree(built["folders"][0], bad)
    text = (bad / "torch" / "summary.json").read_text()
    (bad / "torch" / "summary.json").write_text(text[: len(text) // 2])  # cut off mid-write
    out = tmp_path / "report"
    write_report([tmp_path], out, tmp_path, baseline_images=0)
    warning = capsys.readouterr().err
    assert f"warning: skipping run folder {bad}: {bad / 'torch' / 'summary.json'}" in warning
    assert "JSONDecodeError" in warning
    assert set(csv({"out": out}, "runs")["folder"]) == {str(good)}
    md = (out / "report.md").read_text()
    assert "Skipped run folders (damaged files)" in md
    assert f"{bad}: {bad / 'torch' / 'summary.json'}: JSONDecodeError" in md

    (good / "tf" / "epochs.jsonl").write_text('{"epoch": 0, "train_lo')  # a truncated record
    with pytest.raises(report.ReportError, match="every run folder is damaged") as e:
        write_report([tmp_path], tmp_path / "report2", tmp_path, baseline_images=0)
    assert str(good / "tf" / "epochs.jsonl") in str(e.value)
    assert not (tmp_path / "report2").exists()  # nothing half-written


def test_speed_modes_are_separate_setups_named_by_mode():
    from denoisebench.core.config import load_config

    faithful = json.loads(load_config("smoke", mode="faithful").to_json())
    tuned = json.loads(load_config("smoke", mode="tuned", device_kind="gpu").to_json())
    plain = json.loads(load_config("smoke").to_json())
    a, b, c = (runs._setup_id(cfg) for cfg in (faithful, tuned, plain))
    assert a.startswith("smoke:faithful:") and b.startswith("smoke:tuned:")
    assert len({a, b, c}) == 3  # never grouped together as repeats
    assert runs._setup_id(json.loads(json.dumps(tuned))) == b  # repeats of one config share it


def test_no_speed_modes_table_without_a_pair(built):
    assert not (built["out"] / "speed_modes.csv").exists()  # only faithful runs there


def test_tuned_against_faithful_in_the_report(tmp_path):
    from helpers import launch

    common = ["--profile", "smoke", "--epochs", "2", "--framework", "torch"]
    common += ["--results", str(tmp_path)]
    for run_id, extra in (
        ("faithful", ["--mode", "faithful"]),
        ("tuned", ["--mode", "tuned", "--set", "runtime.channels_last=true"]),
    ):
        proc = launch(*common, "--run-id", run_id, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
    folders = [tmp_path / "faithful", tmp_path / "tuned"]
    rep, csvs = report.build_report(folders, baseline_images=0)
    modes = csvs["speed_modes"]
    assert len(modes) == 1
    row = modes.iloc[0]
    assert (row["framework"], row["mode"], row["devices"]) == ("torch", "tuned", 1)
    runs = {f.name: read_json(f / "torch" / "summary.json") for f in folders}
    speedup = runs["tuned"]["throughput_steady_img_s"] / runs["faithful"]["throughput_steady_img_s"]
    assert row["speed-up"] == f"{speedup:.2f}x"
    diff = runs["tuned"]["final"]["test_psnr_db"] - runs["faithful"]["final"]["test_psnr_db"]
    assert row["PSNR diff dB"] == f"{diff:+.3f}"
    assert row["within 0.1 dB"] == ("yes" if abs(diff) <= 0.1 else "no")
    assert "speed_modes" in rep.tables


# --- the first screen, and what the report leaves out (issue 27) ---------------------------------


def single_runs(root: Path, devices: tuple[int, ...] = (1,), **kwargs) -> list[Path]:
    """One run per framework on each device count in `devices` (root/d<N>), no repeats."""
    folders = []
    for n in devices:
        for fw, img_s in (("torch", 100.0 * n), ("tf", 120.0 * n)):
            write_run(root / f"d{n}", fw, img_s=img_s, psnr_db=25.0, world_size=n, **kwargs)
        folders.append(root / f"d{n}")
    return folders


def test_columns_that_hold_nothing_are_left_out_with_one_line_why(tmp_path):
    rep, csvs = report.build_report(single_runs(tmp_path / "cpu"), baseline_images=0)
    speed, memory = rep.tables["speed"][1], rep.tables["memory_energy"][1]
    for gone in ("engine", "setup", "batch/device", "scaling efficiency", "per device img/s"):
        assert gone not in speed.columns, gone
    assert "MFU %" not in speed.columns and "throughput img/s" in speed.columns
    assert list(memory.columns) == ["framework", "devices", "repeats", "host RSS peak GiB"]
    assert rep.left_out["Speed"] == [
        "scaling efficiency left out: single-device runs only (1 by definition).",
        "per device img/s left out: single-device runs only (the same as throughput).",
        # these synthetic records have no steps.jsonl and no MFU: the reasons are the records'
        "step p50 ms, step p95 ms, data wait % left out: missing in every row (no steps.jsonl "
        "rows).",
        "MFU % left out: missing in every row (not recorded).",
    ]
    gpu_line = next(line for line in rep.left_out["Memory and energy"] if "GPU J/img" in line)
    assert gpu_line.startswith("GPU mem peak GiB (allocator), GPU mem peak GiB (NVML), GPU J/img")
    assert gpu_line.endswith("left out: missing in every row (no GPU: training on CPU).")
    assert rep.shared.startswith(
        "Every group: engine native (torchrun, tf.distribute; not Horovod), batch per device 64, "
        "setup default:"
    )
    md = (
        write_report([tmp_path / "cpu"], tmp_path / "out", tmp_path, baseline_images=0)
    ).with_name("report.md")
    text = md.read_text()
    assert gpu_line in text and rep.shared in text and "| engine |" not in text
    # the CSV keeps every column, missing or not
    assert "gpu_energy_per_image_j_median" in csvs["memory_energy"]
    assert "scaling_efficiency_median" in csvs["speed"]


def test_columns_with_a_figure_stay(tmp_path):
    """Decided by the figures: one GPU-like framework keeps the GPU columns; a 2-worker run of
    the same setup keeps scaling efficiency and per-device throughput."""
    folders = single_runs(tmp_path, devices=(1, 2))
    add_gpu_records(folders[0], "torch", [40.0, 60.0])
    rep, _csvs = report.build_report(folders, baseline_images=0)
    speed, memory = rep.tables["speed"][1], rep.tables["memory_energy"][1]
    assert {"scaling efficiency", "per device img/s"} <= set(speed.columns)
    assert {"GPU J/img", "GPU mem peak GiB (allocator)", "energy method"} <= set(memory.columns)
    assert not [line for line in rep.left_out["Speed"] if "scaling" in line or "per device" in line]


def capture_figures(monkeypatch) -> list:
    """Every matplotlib figure the report draws, kept open instead of written as PNG."""
    figures = []

    def keep(fig):
        figures.append(fig)
        return b"\x89PNG captured"

    monkeypatch.setattr(report_plots, "_fig_png", keep)
    return figures


def axes_titled(figures: list, words: str) -> list:
    return [ax for fig in figures for ax in fig.axes if words in ax.get_title()]


def has_error_bars(ax) -> bool:
    return any(isinstance(c, ErrorbarContainer) for c in ax.containers)


def test_single_runs_have_no_error_bars_and_say_n(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    report.build_report(single_runs(tmp_path / "one", devices=(1, 2)), baseline_images=0)
    [memory] = axes_titled(figures, "Peak host RSS")
    [scaling] = axes_titled(figures, "Throughput against device count")
    assert not has_error_bars(memory) and not has_error_bars(scaling)
    ticks = [t.get_text() for t in memory.get_xticklabels()]
    assert ticks and all(t.endswith("(n=1)") for t in ticks), ticks
    labels = scaling.get_legend_handles_labels()[1]
    assert "PyTorch (n=1)" in labels and "TensorFlow (n=1)" in labels
    panels = axes_titled(figures, "training and test loss")
    assert panels and all("n=1 run" in ax.get_title() for ax in panels)
    assert all(not ax.collections for ax in panels)  # no min-max band either
    # two repeats: the whiskers are drawn, and n says 2
    figures.clear()
    repeats = write_repeats(tmp_path / "two", {"torch": [90, 110], "tf": [100, 130]})
    report.build_report(repeats, baseline_images=0)
    [memory] = axes_titled(figures, "Peak host RSS")
    assert has_error_bars(memory)
    assert all(t.get_text().endswith("(n=2)") for t in memory.get_xticklabels())


def line_framework(ax, label: str) -> str | None:
    """The framework a plotted line stands for: by its label, else by its panel's title."""
    for fw, name in baselines.FRAMEWORK_NAMES.items():
        if label.startswith(name) or (label[:1] != "_" and ax.get_title().startswith(name)):
            return fw
    return None


def test_one_colour_per_framework_in_every_plot(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    folders = single_runs(tmp_path, devices=(1, 2))
    for fw in ("torch", "tf"):
        add_gpu_records(folders[0], fw, [40.0, 60.0])  # energy bars and the power plot too
    report.build_report(folders, baseline_images=0)
    seen: dict[str, set] = {"torch": set(), "tf": set()}
    for fig in figures:
        for ax in fig.axes:
            for line in ax.get_lines():
                fw = line_framework(ax, line.get_label())
                if fw is not None:
                    seen[fw].add(to_hex(line.get_color()))
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            for patch in ax.patches:  # a bar stands at its group's tick
                fw = line_framework(ax, ticks[round(patch.get_x() + patch.get_width() / 2)])
                if fw is not None:
                    seen[fw].add(to_hex(patch.get_facecolor()))
    assert seen == {fw: {to_hex(c)} for fw, c in report_plots.COLORS.items()}, seen
    # the training and test curves differ by line style, never by a framework's colour
    for ax in axes_titled(figures, "training and test loss"):
        styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
        assert styles == {"train loss": "-", "test loss": "--"}


def test_the_held_out_split_is_called_test_as_in_the_records(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    html = write_report(single_runs(tmp_path / "runs"), tmp_path / "out", tmp_path)
    assert "test_loss" in read_jsonl(tmp_path / "runs" / "d1" / "torch" / "epochs.jsonl")[0]
    for text in (html.read_text(), html.with_name("report.md").read_text()):
        assert "validation" not in text.lower()
        assert "Training and test loss" in text
    labels = [
        lab for fig in figures for ax in fig.axes for lab in ax.get_legend_handles_labels()[1]
    ]
    assert "test loss" in labels and not [lab for lab in labels if "validation" in lab]


def test_the_config_shown_is_the_one_the_run_used(tmp_path):
    single_runs(tmp_path / "used", split=(888, 71))
    rep, _csvs = report.build_report([tmp_path / "used" / "d1"], baseline_images=0)
    [(setup, config)] = rep.configs.items()
    assert (config["data"]["n_train"], config["data"]["n_test"]) == (888, 71)
    assert "where config.json has 25000 and 2000" in rep.config_notes[setup]
    md = render_markdown(rep)
    assert '"n_train": 888' in md and '"n_test": 71' in md and '"n_train": 25000' not in md
    assert read_json(tmp_path / "used" / "d1" / "config.json")["data"]["n_train"] == 25000
    # a folder from before data.json: the config as written, and a line saying so
    rep, _csvs = report.build_report(single_runs(tmp_path / "old"), baseline_images=0)
    [(setup, config)] = rep.configs.items()
    assert config["data"]["n_train"] == 25000 and "no readable data.json" in rep.config_notes[setup]


def test_first_screen_verdicts_give_ratio_medians_n_and_load(tmp_path):
    html = write_report(single_runs(tmp_path / "runs"), tmp_path / "out", tmp_path)
    md = html.with_name("report.md").read_text()
    first = md.split("\n## ")[1]  # the first section: the verdicts, before any table
    assert first.startswith("Verdicts")
    speed = next(line for line in first.splitlines() if line.startswith("- Throughput"))
    assert "TensorFlow 1.20x as fast as PyTorch" in speed  # ratio
    assert "(120 vs 100 img/s, 1 run each, none disturbed)" in speed  # medians, n, load
    # the difference and the spread: in verdicts.csv's full reasoning
    detail = pd.read_csv(html.with_name("verdicts.csv"))["detail"].iloc[0]
    assert "+20.0 img/s" in detail and "one value per side: no spread" in detail
    assert "1 TensorFlow run and 1 PyTorch run, none disturbed by machine load" in detail
    # a figure no run has: one line, not one per comparison
    assert "- GPU energy per image: not compared: missing in every run (no GPU" in first
    page = html.read_text()
    assert page.index("<h2>Verdicts</h2>") < page.index("<h2>Speed</h2>")
    assert "1 run each, none disturbed" in page.split("<h2>Speed</h2>")[0]
