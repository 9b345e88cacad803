"""The report's first screen for a newcomer (issue 34): short verdicts with the numbers and the
rule behind a link, every word on it explained where it stands or linked, the left-out lines
after their table, a classical-baselines row set for every run folder, and the launcher's
closing table with its key.

Synthetic run folders (tests/synthetic_runs.py): the figures are chosen, no training runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from synthetic_runs import LOAD_REASON, write_repeats, write_run

from denoisebench.core.records import atomic_write_json
from denoisebench.report import baselines
from denoisebench.report import build as report
from denoisebench.report.build import write_report
from denoisebench.report.compare import COLUMNS, LEGEND, comparison_table
from denoisebench.report.render import DOCS_LINK
from denoisebench.report.terms import TERMS

REPO = Path(__file__).resolve().parents[1]


def single_runs(root: Path) -> Path:
    """One run per framework on one CPU worker: PyTorch 100 img/s, TensorFlow 120."""
    for fw, img_s in (("torch", 100.0), ("tf", 120.0)):
        write_run(root, fw, img_s=img_s, psnr_db=25.0)
    return root


def section(md: str, heading: str) -> str:
    """One `## heading` section of report.md, up to the next one."""
    return md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def headlines(folders: list[Path]) -> dict[str, str]:
    """The report's verdict lines on `folders`, by their figure's first word."""
    _rep, csvs = report.build_report(folders, baseline_images=0)
    return {line.split(" ")[0]: line for line in csvs["verdicts"]["verdict"]}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (as tests/test_docs.py)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)} | set(
        re.findall(r'<a id="([^"]+)">', text)
    )


# --- 1. verdicts: one or two short sentences with the numbers, the rule behind a link --------


def test_a_verdict_is_a_short_line_with_the_numbers(tmp_path):
    html = write_report([single_runs(tmp_path / "runs")], tmp_path / "out", tmp_path)
    md = html.with_name("report.md").read_text()
    verdicts = section(md, "Verdicts")
    speed = next(line for line in verdicts.splitlines() if line.startswith("- Throughput"))
    assert speed == (
        "- Throughput on 1 CPU worker: TensorFlow 1.20x as fast as PyTorch (120 vs 100 img/s, "
        "1 run each, none disturbed); no winner: that needs 2 runs or more of each "
        "(--repeats 3)."
    )
    psnr = next(line for line in verdicts.splitlines() if line.startswith("- Final test PSNR"))
    assert psnr.startswith("- Final test PSNR on 1 CPU worker: PyTorch and TensorFlow equal (25.00")
    for line in (speed, psnr):
        assert len(line.split()) <= 35, line
        assert "ratio range" not in line and "over the repeats' extremes" not in line
    # the full reasoning stays in verdicts.csv
    detail = (tmp_path / "out" / "verdicts.csv").read_text()
    assert "one value per side: no spread" in detail and "a single run cannot separate" in detail


def test_the_rule_is_behind_a_link_that_resolves(tmp_path):
    html = write_report([single_runs(tmp_path / "runs")], tmp_path / "out", tmp_path)
    md = html.with_name("report.md").read_text()
    rule = section(md, "Verdicts").split("\n\n")[1]
    links = re.findall(r"\]\(([^)]+)\)", rule)
    assert [link.split("#")[1] for link in links] == ["verdicts", "run-conditions"]
    for link in links:
        path, anchor = link.split("#")
        page = (html.parent / path).resolve()
        assert page.is_file() and anchor in anchors(page), link
    page = html.read_text()
    assert re.search(r'<a href="[^"]*docs/results\.md#verdicts">', page)
    # the HTML says the same short line
    assert "1 run each, none disturbed); no winner: that needs 2 runs or more" in page


def test_headlines_say_the_decision_in_a_few_words(tmp_path):
    apart = write_repeats(tmp_path / "a", {"torch": [100, 104, 102], "tf": [120, 125, 123]})
    assert headlines(apart)["Throughput"] == (
        "Throughput on 1 CPU worker: TensorFlow 1.21x as fast as PyTorch (123 vs 102 img/s, "
        "medians of 3 runs each, none disturbed); TensorFlow is faster (the ranges do not "
        "overlap)."
    )
    overlap = write_repeats(tmp_path / "o", {"torch": [100, 110, 120], "tf": [105, 115, 125]})
    lines = headlines(overlap)
    assert lines["Throughput"].endswith("none disturbed); no winner: the ranges overlap.")
    assert lines["Final"].endswith(
        "no winner: every repeat gave the same value, so no spread was measured."
    )
    loaded = write_repeats(
        tmp_path / "d",
        {"torch": [80.0, 82.0], "tf": [437.0, 441.0]},
        {"torch": [25.0, 25.1], "tf": [26.0, 26.1]},
        disturbed={"torch": True},
    )
    lines = headlines(loaded)
    assert lines["Throughput"] == (
        "Throughput on 1 CPU worker: TensorFlow 5.42x as fast as PyTorch (439 vs 81.0 img/s, "
        "medians of 2 runs each); no winner: machine load disturbed 2 of 2 PyTorch runs."
    )
    assert LOAD_REASON not in lines["Throughput"]  # the reason: Environment and verdicts.csv
    assert lines["Final"] == (
        "Final test PSNR on 1 CPU worker: TensorFlow 1.00 dB above PyTorch (26.05 vs 25.05 dB, "
        "medians of 2 runs each, 2 PyTorch disturbed); TensorFlow reaches the higher final "
        "test PSNR (the ranges do not overlap)."
    )


# --- 2. every word of the first screen explained where it stands, or linked ------------------


def test_the_first_screen_explains_its_words(tmp_path):
    folders = write_repeats(
        tmp_path / "runs", {"torch": [100, 104], "tf": [120, 125]}, disturbed={"tf": True}
    )
    html = write_report(folders, tmp_path / "out", tmp_path)
    md = html.with_name("report.md").read_text()
    intro = md.split("\n## ")[0]
    # the setup id and the engine, beside their values
    assert re.search(r"setup default:\w+ \(the profile, then a hash of the config apart", intro)
    assert "engine native (torchrun, tf.distribute; not Horovod)" in intro
    assert "2 group(s) (a group: the runs of one framework" in intro
    speed = section(md, "Speed")
    assert "| 2 (2 disturbed) |" in speed
    key = next(line for line in speed.splitlines() if line.startswith("_"))
    assert "**repeats**: completed runs" in key
    assert "(k disturbed): in k of them other load on the machine crossed a threshold" in key
    assert "measurements.md#run-conditions" in key
    # steady: what the code leaves out (core.epochs.is_warmup), with the configs' number
    assert (
        "**throughput img/s**: steady state: training images per second without warm-up (each "
        "training process's first 5 steps, profiler.warmup_steps), median over epochs" in key
    )
    assert "measurements.md#steady-state" in key
    # time to target: the target's value and where it comes from (noisy 14 dB + 3 dB)
    target = section(md, "Time and energy to a target PSNR")
    assert "| 17.00 |" in target
    assert (
        "**target PSNR dB**: the test PSNR to reach, 17.00 dB: the noisy test inputs' PSNR "
        "(14.00 dB) + 3 dB (--target-psnr sets another)" in target
    )
    # a word is explained once, under the first table that shows it; the HTML says the same
    assert md.count("**repeats**: completed runs") == 1
    page = html.read_text()
    assert '<p class="key"><b>repeats</b>: completed runs' in page
    assert re.search(r'<a href="[^"]*docs/measurements\.md#steady-state">steady state</a>', page)
    for link in re.findall(r"\]\(([^)]+)\)", md):
        if ".md#" in link:
            path, anchor = link.split("#")
            assert anchor in anchors((html.parent / path).resolve()), link


def test_a_given_target_says_so(tmp_path):
    folder = single_runs(tmp_path / "runs")
    rep, _csvs = report.build_report([folder], target_psnr_db=24.0, baseline_images=0)
    assert rep.keys["Time and energy to a target PSNR"].count("24.00 dB, set by --target-psnr") == 1


def test_every_group_table_label_has_its_words():
    from denoisebench.report.groups import METRIC

    assert {m.label for m in METRIC.values()} <= set(TERMS)


def test_the_docs_list_the_words_and_hold_the_anchors():
    results = (REPO / "docs" / "results.md").read_text()
    words = results.split("### Words in the report", 1)[1].split("\n## ", 1)[0]
    for term in TERMS:
        assert f"**{term}**" in words, term
    from denoisebench.report import terms, verdicts

    text = " ".join([*TERMS.values(), verdicts.METHOD, terms.SETUP])
    for match in DOCS_LINK.finditer(text + f" [x]({terms.TARGET_DOC})"):
        page, anchor = match[2].split("#")
        assert anchor in anchors(REPO / "docs" / page), match[2]


# --- 3. the left-out lines follow their table ------------------------------------------------


def test_left_out_lines_come_after_their_table(tmp_path):
    html = write_report([single_runs(tmp_path / "runs")], tmp_path / "out", tmp_path)
    md = html.with_name("report.md").read_text()
    speed = section(md, "Speed")
    assert speed.index("| framework |") < speed.index("MFU % left out: missing in every row")
    memory = section(md, "Memory and energy")
    assert memory.index("| framework |") < memory.index("GPU J/img, GPU J/epoch")
    page = html.read_text()
    speed_html = page.split("<h2>Speed</h2>", 1)[1].split("<h2>", 1)[0]
    assert speed_html.index("<table") < speed_html.index('<p class="left-out">MFU %')


# --- 4. every run folder gets its baseline rows ----------------------------------------------


def write_samples(folder: Path, seed: int, n: int = 6) -> None:
    """test_samples.npz and both frameworks' test_outputs.npz, as a trainer writes them."""
    rng = np.random.default_rng(seed)
    clean = rng.random((n, 16, 16, 3), dtype=np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
    np.savez(folder / "test_samples.npz", clean=clean, noisy=noisy)
    for fw in ("torch", "tf"):
        out = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
        np.savez(folder / fw / "test_outputs.npz", outputs=out)


def test_every_run_folder_gets_its_baseline_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(
        report, "METHODS", {"total variation": baselines.METHODS["total variation"]}
    )
    root = tmp_path / "runs"
    for name, samples_seed in (("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", None)):
        for fw, img_s in (("torch", 100.0), ("tf", 120.0)):
            write_run(root / name, fw, img_s=img_s, psnr_db=25.0)
        if samples_seed is not None:
            write_samples(root / name, samples_seed)
    # d: another test set (another noise sigma in its config), so its own classical rows
    config = json.loads((root / "d" / "config.json").read_text())
    config["noise"]["sigma"] = 0.3
    atomic_write_json(root / "d" / "config.json", config)
    rep, csvs = report.build_report(sorted(root.iterdir()), baseline_images=3)
    table = rep.baselines
    for name in "abcd":
        rows = table[table["run folder"] == name]
        assert {"PyTorch", "TensorFlow"} <= set(rows["method"]), name
    classical = table[table["method"] == "total variation"]
    assert sorted(classical["run folder"]) == ["a", "d"]  # once per set of noisy images
    assert "b, c: the same images as a" in rep.baseline_note
    assert "e: no rows (no test_samples.npz in it)." in rep.baseline_note
    assert set(csvs["baselines"]["run_folder"].map(lambda p: Path(p).name)) == set("abcd")
    # one picture grid per set of images, not per folder
    grids = [name for name, _caption, _png in rep.plots if name.startswith("test_images")]
    assert len(grids) == 2


# --- 5. the launcher's closing table says what its columns mean ------------------------------


def test_the_console_table_has_a_key_for_its_columns(tmp_path):
    run = single_runs(tmp_path / "run")
    lines = comparison_table(run).splitlines()
    assert len(lines[0].split()) > 10 and lines[1].split()[0] == "torch"  # the table: 3 lines
    key_lines = [line for line in lines[3:] if " missing: " not in line]
    key = " ".join(line.strip() for line in key_lines)
    assert (
        "steady img/s: without warm-up (each training process's first 5 steps, "
        "profiler.warmup_steps), median over epochs" in key
    )
    explained = {label for labels, _words in LEGEND for label in labels}
    assert set(COLUMNS.values()) - {"framework", "status", "epochs"} <= explained
    for labels, words in LEGEND:
        assert words.split(":")[0] in key, labels
    assert 1 <= len(key_lines) <= 5 and lines[-1] == key_lines[-1]  # compact, and last
