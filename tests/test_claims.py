"""The paper's claims, tested (report/claims.py, launch/claims.py) and `--seeds`.

Small synthetic run folders with known outcomes (written with RunRecorder, as the trainers
write them: a validation loss that rises on purpose, a plateau at a chosen epoch, one framework
lower than the other) check each verdict rule, and that a rule can come out the other way. One
slow test runs the quick form end to end on the built-in images.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import launch
from synthetic_runs import LOAD_REASON, load_summary

from denoisebench.core.config import Config, ConfigError, load_resolved
from denoisebench.core.records import RunRecorder, atomic_write_text, read_json
from denoisebench.report import claims
from denoisebench.report.build import build_report, write_report
from denoisebench.report.groups import group_frame, runs_frame
from denoisebench.report.plots import plot_energy, plot_memory, plot_power, plot_scaling
from denoisebench.report.runs import _setup_id
from launch import claims as claims_cli
from launch import folders as run_folders
from launch.options import build_parser

SEEDS = (0, 1, 2)


def decay(start: float, final: float, epochs: int, rate: float) -> list[float]:
    """A loss falling from `start` towards `final`, by `rate` of the gap an epoch."""
    return [final + (start - final) * (1 - rate) ** e for e in range(epochs)]


def make_run(
    folder: Path,
    framework: str,
    *,
    init: str = "native",
    seed: int = 0,
    train: list[float],
    val: list[float],
    rss_gib: float = 1.0,
    img_s: float = 100.0,
    world_size: int = 1,
    gpu_gib: float | None = None,
    gpu_j_img: float | None = None,
    disturbed: bool = False,
) -> None:
    """One framework's completed run in `folder`, its records written by RunRecorder; with
    `gpu_gib`, GPU figures as a GPU run records them (made up: no GPU here); `disturbed`: the
    machine's load disturbed it (LOAD_REASON)."""
    gpu = gpu_gib is not None
    no_gpu = None if gpu else "no GPU: training on CPU"
    config = json.loads(Config().to_json())
    config["train"].update(init=init, seed=seed, epochs=len(train))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True))
    rec = RunRecorder(folder, framework)
    for e, (t, v) in enumerate(zip(train, val, strict=True)):
        record = {
            "framework": framework,
            "epoch": e,
            "train_loss": t,
            "test_loss": v,
            "test_psnr_db": 20.0 - 10 * v,
            "noisy_psnr_db": 14.0,
            "train_time_s": 1.0,
            "throughput_img_s": img_s,
            "host_rss_peak_gib": rss_gib,
            "gpu_energy_reason": no_gpu,
        }
        hosts = [{"rank": 0, "rss_peak_gib": rss_gib, "gpu_reason": no_gpu}]
        rec.epoch(record, [], hosts=hosts)
    rec.summary(
        status="completed",
        epochs_completed=len(train),
        final=rec.epochs()[-1],
        world_size=world_size,
        device="cuda:0" if gpu else "cpu",
        data="synthetic records (tests/test_claims.py)",
        throughput_steady_img_s=img_s,
        host_rss_peak_gib=rss_gib,
        gpu_mem_alloc_peak_gib=gpu_gib,
        gpu_energy_j=None if gpu_j_img is None else gpu_j_img * img_s,
        gpu_energy_per_image_j=gpu_j_img,
        gpu_energy_reason=no_gpu,
        **load_summary([LOAD_REASON] if disturbed else [], gpu=gpu),
    )


def make_runs(root: Path, init: str, curves: dict[str, list[tuple]], **per_fw) -> list[Path]:
    """One folder per seed (repeat-<k>), each with both frameworks; curves[fw][k] is that
    run's (train, val); per_fw[name][fw]: a list of one value per seed for make_run's `name`."""
    folders = []
    for k, seed in enumerate(SEEDS[: len(curves["torch"])]):
        folder = root / init / f"repeat-{k}"
        for fw in ("torch", "tf"):
            train, val = curves[fw][k]
            extra = {name: values[fw][k] for name, values in per_fw.items()}
            make_run(folder, fw, init=init, seed=seed, train=train, val=val, **extra)
        folders.append(folder)
    return folders


def section(folders: list[Path]) -> dict[str, claims.Row]:
    return {r.claim: r for r in claims.claims_section(runs_frame(folders)).rows}


def smooth(start: float, final: float, epochs: int = 6, rate: float = 0.5) -> tuple:
    train = decay(start, final, epochs, rate)
    return train, [v * 0.9 for v in train]


def bumpy(start: float, final: float, epochs: int = 6) -> tuple:
    """A validation loss that rises on purpose at epochs 3 and 5 (1-based) by 0.02 each."""
    train = decay(start, final, epochs, 0.5)
    val = [v * 0.9 for v in train]
    val[2] = val[1] + 0.02
    val[4] = val[3] + 0.02
    return train, val


# --- one run's figures -----------------------------------------------------------------------


def test_plateau_epoch_and_rises_on_known_curves():
    # within 5% of the final 1.0 from the 4th epoch on (1.2, 1.1 are not; 1.04 is)
    assert claims.plateau_epoch([2.0, 1.2, 1.1, 1.04, 1.02, 1.0]) == 4
    # a dip into the band that leaves it again does not count: it must stay
    assert claims.plateau_epoch([2.0, 1.01, 1.5, 1.03, 1.0]) == 4
    assert claims.plateau_epoch([1.0]) == 1
    assert claims.rises([0.5, 0.4, 0.45, 0.3, 0.35, 0.25]) == (2, pytest.approx(40.0))
    assert claims.rises([0.5, 0.4, 0.3]) == (0, 0.0)


# --- the verdict rule ------------------------------------------------------------------------


def test_range_rule_each_outcome():
    low, high = [1.0, 1.1, 1.2], [2.0, 2.1, 2.2]
    assert claims.range_verdict(low, high, "torch")[0] == claims.SUPPORTED
    assert claims.range_verdict(high, low, "torch")[0] == claims.NOT_SUPPORTED
    verdict, why = claims.range_verdict([1.0, 2.05, 1.2], high, "torch")
    assert verdict == claims.WITHIN_NOISE and "overlap" in why
    verdict, why = claims.range_verdict(low[:2], high[:2], "torch")
    assert verdict == claims.WITHIN_NOISE and "fewer than 3" in why
    verdict, why = claims.range_verdict([1.0] * 3, [2.0] * 3, "torch")
    assert verdict == claims.WITHIN_NOISE and "no spread" in why
    assert claims.range_verdict(high, low, None)[0] == "tf lower"
    verdict, why = claims.range_verdict(low, [], "torch")  # a torch-only run (a GPU machine)
    assert verdict == claims.NOT_TESTABLE and why == "no TensorFlow run with this figure"
    assert claims.spread([41750.0, 33110.0, 48390.0]) == "41,750 [33,110-48,390] n=3"
    assert claims.welch_p(low, high) < 0.01
    assert claims.welch_p([1.0], high) is None


def test_claims_1_2_supported_then_not_supported_when_reversed(tmp_path):
    better = [smooth(0.30 + 0.01 * k, 0.10 + 0.001 * k) for k in range(3)]
    worse = [smooth(0.40 + 0.01 * k, 0.12 + 0.001 * k) for k in range(3)]
    rows = section(make_runs(tmp_path / "a", "native", {"torch": better, "tf": worse}))
    assert rows["1"].verdict == claims.SUPPORTED, rows["1"]
    assert rows["2 (native init)"].verdict == claims.SUPPORTED
    finals = [val[-1] for _train, val in better]
    assert rows["1"].numbers["torch_median"] == pytest.approx(np.median(finals))
    assert rows["1"].numbers["torch_min"] == pytest.approx(min(finals))
    assert f"PyTorch {np.median(finals):.4g} [{min(finals):.4g}-" in rows["1"].measured
    assert "n=3" in rows["1"].measured
    assert rows["2 (shared init)"].verdict == claims.NOT_TESTABLE  # no shared-init runs
    rows = section(make_runs(tmp_path / "b", "native", {"torch": worse, "tf": better}))
    assert rows["1"].verdict == claims.NOT_SUPPORTED
    assert rows["2 (native init)"].verdict == claims.NOT_SUPPORTED


def test_claim_2_twice_native_gap_gone_with_shared_weights(tmp_path):
    native = make_runs(
        tmp_path,
        "native",
        {
            "torch": [smooth(0.30 + 0.01 * k, 0.1) for k in range(3)],
            "tf": [smooth(0.40 + 0.01 * k, 0.1) for k in range(3)],
        },
    )
    shared = make_runs(
        tmp_path,
        "shared",
        {
            "torch": [smooth(v, 0.1) for v in (0.30, 0.32, 0.34)],
            "tf": [smooth(v, 0.1) for v in (0.31, 0.33, 0.35)],
        },
    )
    rows = section(native + shared)
    assert rows["2 (native init)"].verdict == claims.SUPPORTED
    assert rows["2 (shared init)"].verdict == claims.WITHIN_NOISE
    assert "overlap" in rows["2 (shared init)"].why


def test_claim_3_counts_rises_made_on_purpose(tmp_path):
    rows = section(
        make_runs(
            tmp_path / "a",
            "native",
            {"torch": [smooth(0.3, 0.1)] * 3, "tf": [bumpy(0.3 + 0.01 * k, 0.1) for k in range(3)]},
        )
    )
    assert rows["3"].verdict == claims.SUPPORTED, rows["3"]
    assert rows["3"].numbers["count_tf_median"] == 2 and rows["3"].numbers["tf_median"] > 0
    assert rows["3"].numbers["torch_max"] == 0
    rows = section(
        make_runs(
            tmp_path / "b",
            "native",
            {"torch": [bumpy(0.3 + 0.01 * k, 0.1) for k in range(3)], "tf": [smooth(0.3, 0.1)] * 3},
        )
    )
    assert rows["3"].verdict == claims.NOT_SUPPORTED
    short = {fw: [smooth(0.3, 0.1, epochs=2)] * 3 for fw in ("torch", "tf")}
    rows = section(make_runs(tmp_path / "c", "native", short))
    assert rows["3"].verdict == claims.NOT_TESTABLE and "fewer than 3" in rows["3"].why


def test_claim_4_plateau_epoch_rule(tmp_path):
    def at(rate: float) -> tuple:
        return smooth(0.5, 0.1, epochs=60, rate=rate)

    # rate 0.2: within 5% of the final value from epoch 21; 0.6: from epoch 6
    assert 10 <= claims.plateau_epoch(at(0.2)[0]) <= 30
    assert claims.plateau_epoch(at(0.6)[0]) < 10
    rows = section(
        make_runs(tmp_path / "a", "native", {fw: [at(0.2)] * 3 for fw in ("torch", "tf")})
    )
    assert rows["4"].verdict == claims.SUPPORTED, rows["4"]
    rows = section(
        make_runs(tmp_path / "b", "native", {fw: [at(0.6)] * 3 for fw in ("torch", "tf")})
    )
    assert rows["4"].verdict == claims.NOT_SUPPORTED
    mixed = {"torch": [at(0.2)] * 3, "tf": [at(0.6)] * 3}
    assert section(make_runs(tmp_path / "c", "native", mixed))["4"].verdict == claims.WITHIN_NOISE
    short = {fw: [smooth(0.5, 0.1, epochs=3)] * 3 for fw in ("torch", "tf")}
    row = section(make_runs(tmp_path / "d", "native", short))["4"]
    assert row.verdict == claims.NOT_TESTABLE and "3 epochs" in row.why


def test_claims_5_and_6_memory_speed_and_what_was_not_measured(tmp_path):
    curves = {fw: [smooth(0.3, 0.1)] * 3 for fw in ("torch", "tf")}
    folders = make_runs(
        tmp_path,
        "native",
        curves,
        rss_gib={"torch": [0.6, 0.62, 0.61], "tf": [1.3, 1.31, 1.29]},
        img_s={"torch": [50.0, 55.0, 52.0], "tf": [300.0, 320.0, 310.0]},
    )
    rows = section(folders)
    assert rows["5"].verdict == claims.SUPPORTED
    assert "GPU memory: not measured: no GPU" in rows["5"].measured
    assert rows["6"].verdict.startswith("throughput: TensorFlow faster")
    assert "energy: not measured" in rows["6"].verdict
    assert "GPU J/img: not measured (no GPU: training on CPU)" in rows["6"].measured
    # RAM the other way round: the claim is then not supported
    folders = make_runs(
        tmp_path / "b",
        "native",
        curves,
        rss_gib={"torch": [1.3, 1.31, 1.29], "tf": [0.6, 0.62, 0.61]},
        img_s={"torch": [50.0, 300.0, 52.0], "tf": [300.0, 320.0, 310.0]},
    )
    rows = section(folders)
    assert rows["5"].verdict == claims.NOT_SUPPORTED
    assert rows["6"].verdict.startswith("throughput: within noise")


def test_claims_5_and_6_with_gpu_figures(tmp_path):
    curves = {fw: [smooth(0.3, 0.1)] * 3 for fw in ("torch", "tf")}
    folders = make_runs(
        tmp_path,
        "native",
        curves,
        gpu_gib={"torch": [0.20, 0.21, 0.22], "tf": [0.5, 0.52, 0.51]},
        gpu_j_img={"torch": [0.010, 0.011, 0.012], "tf": [0.0105, 0.02, 0.03]},
    )
    rows = section(folders)
    gpu = rows["5"].measured.split("GPU memory: ")[1]
    assert gpu.startswith("PyTorch 0.21 GiB [0.2-0.22] n=3; TensorFlow 0.51 GiB")
    assert "(PyTorch uses less: the ranges over 3 and 3 runs do not overlap; " in gpu
    assert (
        "PyTorch/TensorFlow 0.41x [0.38-0.44], PyTorch - TensorFlow -0.3 [-0.32 to -0.28] GiB)"
        in gpu
    )
    assert rows["5"].numbers["gpu_mem_tf_max"] == pytest.approx(0.52)
    assert "GPU J/img: within noise" in rows["6"].verdict  # 0.0105 lies in PyTorch's range
    assert "GPU J/img: PyTorch 0.011 [0.01-0.012] n=3" in rows["6"].measured


def test_claim_1_is_not_testable_until_the_models_are_trained(tmp_path, monkeypatch):
    # final validation losses of about 0.40 and 0.46: test PSNR 20 - 10 * loss, 16.0 and 15.4 dB,
    # 2.0 and 1.4 dB above the noisy input's 14 dB; PyTorch's lower in every run
    better = [smooth(0.60 + 0.01 * k, 0.44 + 0.001 * k) for k in range(3)]
    worse = [smooth(0.70 + 0.01 * k, 0.50 + 0.001 * k) for k in range(3)]
    folders = make_runs(tmp_path / "a", "native", {"torch": better, "tf": worse})
    row = section(folders)["1"]
    assert row.verdict == claims.NOT_TESTABLE
    # make_run: test PSNR 20 - 10 * validation loss, noisy input 14 dB
    gain = {fw: 6.0 - 10 * np.median([v[-1] for _t, v in runs]) for fw, runs in
            (("torch", better), ("tf", worse))}  # fmt: skip
    assert 1.0 < gain["tf"] < gain["torch"] < 3.0
    gate, measured = row.why.split(". Not a verdict, as measured: ")
    assert gate == (
        f"not trained yet: 3 of 3 PyTorch runs (median +{gain['torch']:.3g} dB over the noisy "
        f"input) and 3 of 3 TensorFlow runs (median +{gain['tf']:.3g} dB over the noisy input) "
        "end less than 3 dB above the noisy input's PSNR, before the paper's 100 epochs"
    )
    # the figures stay visible: they would support the claim on trained models
    assert measured.startswith(
        "the ranges over 3 and 3 runs do not overlap; PyTorch/TensorFlow 0.8"
    )
    assert "Final test PSNR dB: PyTorch 15.98 [15.97-16] n=3" in row.measured
    assert row.measured.endswith("; the noisy input's: 14 (all 6 runs)")
    # the rule decides: trained by the margin, or by the paper's epoch count
    with monkeypatch.context() as m:
        m.setattr(claims, "TRAINED_MARGIN_DB", 1.0)
        assert section(folders)["1"].verdict == claims.SUPPORTED
    with monkeypatch.context() as m:
        m.setattr(claims, "PAPER_EPOCHS", 6)
        assert section(folders)["1"].verdict == claims.SUPPORTED
    # one framework trained, the other not: still not testable, naming the untrained one
    trained = [smooth(0.30 + 0.01 * k, 0.10 + 0.001 * k) for k in range(3)]
    row = section(make_runs(tmp_path / "b", "native", {"torch": trained, "tf": worse}))["1"]
    assert row.verdict == claims.NOT_TESTABLE
    assert row.why.startswith(
        f"not trained yet: 3 of 3 TensorFlow runs (median +{gain['tf']:.3g} dB"
    )
    assert "PyTorch runs" not in row.why


def test_paper_epochs_are_the_paper_profiles():
    paper = tomllib.loads((Path(__file__).parents[1] / "profiles" / "paper.toml").read_text())
    assert paper["train"]["epochs"] == claims.PAPER_EPOCHS


def test_a_figure_the_same_in_every_run_is_not_testable(tmp_path):
    verdict, why = claims.range_verdict([0.5] * 3, [0.5] * 3, "torch")
    assert verdict == claims.NOT_TESTABLE and "every run of both frameworks gave 0.5" in why
    verdict, why = claims.range_verdict([0.0] * 2, [0.0] * 2, None)  # fewer than 3: same
    assert verdict == claims.NOT_TESTABLE and "did not vary" in why
    # every run's validation loss fell at every epoch: no rises measured, nothing to compare
    smooth_runs = {fw: [smooth(0.3 + 0.01 * k, 0.1) for k in range(3)] for fw in ("torch", "tf")}
    row = section(make_runs(tmp_path, "native", smooth_runs))["3"]
    assert row.verdict == claims.NOT_TESTABLE
    assert row.why == (
        "every run had 0 rises of the validation loss (3 and 3 runs): no peaks were measured to "
        "compare"
    )
    assert row.numbers["count_torch_max"] == row.numbers["count_tf_max"] == 0


def test_claim_6_names_no_faster_framework_from_disturbed_runs(tmp_path):
    curves = {fw: [smooth(0.3, 0.1)] * 3 for fw in ("torch", "tf")}
    img_s = {"torch": [50.0, 55.0, 52.0], "tf": [300.0, 320.0, 310.0]}
    folders = make_runs(
        tmp_path / "a",
        "native",
        curves,
        img_s=img_s,
        disturbed={"torch": [True] * 3, "tf": [False] * 3},
    )
    result = claims.claims_section(runs_frame(folders))
    row = {r.claim: r for r in result.rows}["6"]
    assert row.verdict.startswith("throughput: no framework named (disturbed runs)")
    assert "faster" not in row.verdict
    assert row.why.startswith(
        f"throughput: none named from disturbed runs: 3 of 3 PyTorch run(s) were disturbed "
        f"({LOAD_REASON}); not a verdict, as measured: the ranges over 3 and 3 runs do not "
        "overlap, PyTorch/TensorFlow 0.17x [0.16-0.18], PyTorch - TensorFlow -258 [-270 to -245]"
    )
    assert row.numbers["ratio_median"] == pytest.approx(52.0 / 310.0)
    assert f"Machine load: 3 of 3 PyTorch run(s) were disturbed ({LOAD_REASON})" in " ".join(
        result.scope
    )
    # the same figures, undisturbed: TensorFlow is named
    row = section(make_runs(tmp_path / "b", "native", curves, img_s=img_s))["6"]
    assert row.verdict.startswith("throughput: TensorFlow faster")
    assert "the ranges over 3 and 3 runs do not overlap, PyTorch/TensorFlow 0.17x" in row.why


# --- the report -----------------------------------------------------------------------------


def test_report_has_the_claims_section_and_lines_for_empty_plots(tmp_path):
    curves = {"torch": [smooth(0.3, 0.1)] * 3, "tf": [bumpy(0.3, 0.1)] * 3}
    folders = make_runs(tmp_path / "runs", "native", curves)
    folders += make_runs(tmp_path / "runs", "shared", curves)
    out = tmp_path / "report"
    out.mkdir()
    (out / "energy_per_image.png").write_bytes(b"stale")  # an earlier report's
    write_report(folders, out, tmp_path, baseline_images=0, claims=True)
    md = (out / "report.md").read_text()
    assert "## The paper's claims" in md and "How a verdict is reached" in md
    table = md.split("## The paper's claims")[1].split("How a verdict")[0]
    for claim in ("| 1 |", "| 2 (native init) |", "| 2 (shared init) |", "| 3 |", "| 4 |"):
        assert claim in table
    assert "| 5 |" in table and "| 6 |" in table
    assert "these are not EuroSAT" in md and "native init: 3 PyTorch, 3 TensorFlow" in md
    csv = pd.read_csv(out / "claims.csv")
    assert len(csv) == 7 and set(csv["verdict"]) >= {claims.NOT_TESTABLE}
    text = (out / "claims.txt").read_text()
    assert "2 (shared init)." in text and "Rule:" in text
    for name in ("claims_loss_curves.png", "claims_loss_per_framework.png", "peak_memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # nothing to show: one line each, no image, and no stale file left behind
    for caption in ("GPU energy per image", "GPU power over time", "Throughput against device"):
        after = md.split(f"### {caption}")[1].split("###")[0]
        assert "Not drawn:" in after and "![" not in after, caption
    assert not (out / "energy_per_image.png").exists()
    assert "Peak memory; not drawn: Peak GPU memory" in md
    html = (out / "report.html").read_text()
    assert html.count('<p class="missing">Not drawn:') == 3
    # the setup id leaves the seed out: the 3 seeds of an init are one group of 3 repeats
    groups = group_frame(runs_frame(folders))
    assert sorted(groups["repeats"]) == [3, 3, 3, 3]
    # and without --claims there is no such section
    report, csvs = build_report(folders, baseline_images=0)
    assert report.claims is None and "claims" not in csvs


def test_plots_with_nothing_to_show_are_lines_and_with_something_pngs(tmp_path):
    curves = {fw: [smooth(0.3, 0.1)] for fw in ("torch", "tf")}
    one = make_runs(tmp_path / "one", "native", curves)
    runs = runs_frame(one)
    groups = group_frame(runs)
    for plot in (plot_scaling(groups), plot_energy(groups), plot_power(runs)):
        assert isinstance(plot, str) and plot
    assert "same device count (1)" in plot_scaling(groups)
    assert isinstance(plot_memory(groups), bytes)  # host RSS alone still has a panel
    two = tmp_path / "two"
    for fw in ("torch", "tf"):
        train, val = smooth(0.3, 0.1)  # the same setup as `one`, on 2 devices
        make_run(two, fw, train=train, val=val, world_size=2, img_s=180.0)
    groups = group_frame(runs_frame([*one, two]))
    assert isinstance(plot_scaling(groups), bytes)


def test_setup_id_ignores_the_seed_but_not_the_init():
    config = json.loads(Config().to_json())
    other_seed = json.loads(json.dumps(config))
    other_seed["train"]["seed"] = 7
    shared = json.loads(json.dumps(config))
    shared["train"]["init"] = "shared"
    assert _setup_id(config) == _setup_id(other_seed)
    assert _setup_id(config) != _setup_id(shared)


# --- --seeds ---------------------------------------------------------------------------------


def prepare(tmp_path: Path, *argv: str) -> tuple:
    args = build_parser().parse_args(["--profile", "smoke", "--results", str(tmp_path), *argv])
    cfg, run_dir = run_folders.resolve(args)
    run_folders.prepare_run_folder(args, cfg, run_dir, None)
    return args, run_dir


def test_seeds_give_one_repeat_per_seed_recorded_in_its_config(tmp_path):
    args, run_dir = prepare(tmp_path, "--run-id", "a", "--seeds", "3,4,5")
    assert args.repeats == 3
    folders = run_folders.measurement_dirs(run_dir, args.repeats)
    assert [f.name for f in folders] == ["repeat-0", "repeat-1", "repeat-2"]
    assert [load_resolved(f / "config.json").train.seed for f in folders] == [3, 4, 5]
    assert read_json(run_dir / "launch.json")["repeats"] == 3
    args, run_dir = prepare(tmp_path, "--run-id", "b", "--seeds", "8,9", "--repeats", "2")
    folders = run_folders.measurement_dirs(run_dir, args.repeats)
    assert [load_resolved(f / "config.json").train.seed for f in folders] == [8, 9]
    args, run_dir = prepare(tmp_path, "--run-id", "c", "--seeds", "11")
    assert load_resolved(run_dir / "config.json").train.seed == 11  # one seed: no repeat folders
    assert not list(run_dir.glob("repeat-*"))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seeds", "1,2", "--repeats", "3"], ["--seeds 1,2", "--repeats is 3"]),
        (["--seeds", "1,2", "--seed", "4"], ["--seeds 1,2", "--seed"]),
        (["--seeds", "1,2", "--set", "train.seed=4"], ["--seeds 1,2", "train.seed"]),
    ],
)
def test_seeds_conflicts_are_refused_by_name(tmp_path, argv, words):
    with pytest.raises(ConfigError) as e:
        prepare(tmp_path, "--run-id", "x", *argv)
    assert all(w in str(e.value) for w in words), e.value
    assert not (tmp_path / "x").exists()


def test_seeds_bad_lists_and_resume(tmp_path, capsys):
    for bad in ("1,1", "a,b", "1,,2"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--seeds", bad])
        assert "--seeds" in capsys.readouterr().err
    _args, run_dir = prepare(tmp_path, "--run-id", "r", "--seeds", "3,4")
    resumed = build_parser().parse_args(["--resume", str(run_dir), "--seeds", "3,5"])
    cfg, _ = run_folders.resolve(resumed)
    with pytest.raises(ConfigError, match="started with seeds 3,4"):
        run_folders.prepare_run_folder(resumed, cfg, run_dir, None)
    same = build_parser().parse_args(["--resume", str(run_dir), "--seeds", "3,4"])
    cfg, _ = run_folders.resolve(same)
    run_folders.prepare_run_folder(same, cfg, run_dir, None)  # a requeued job repeats its command


def test_claims_command_line(tmp_path, capsys):
    code = claims_cli.main(["--set", "train.seed=3", "--results", str(tmp_path)])
    assert code == 2 and "--set train.seed=3" in capsys.readouterr().err
    args = claims_cli.build_parser().parse_args(
        ["--data", "builtin", "--epochs", "2", "--seeds", "5,6", "--set", "noise.sigma=0.1"]
    )
    cmd = claims_cli.launch_cmd(args, "shared", tmp_path)
    assert cmd[1:3] == ["-m", "launch"]
    flat = " ".join(cmd)
    assert "--profile paper" in flat and "--init shared --seeds 5,6" in flat
    assert "--data builtin" in flat and "--epochs 2" in flat and "--set noise.sigma=0.1" in flat
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "config.json").write_text("{}")
    assert claims_cli.launch_cmd(args, "shared", tmp_path)[3:] == [
        "--resume",
        str(tmp_path / "shared"),
    ]


@pytest.mark.slow
def test_quick_form_end_to_end(tmp_path):
    """The quick form, tiny: the built-in images, 2 epochs, 2 seeds, both inits (8 runs)."""
    proc = launch(
        "claims", "--data", "builtin", "--limit", "160", "--batch-size", "16", "--epochs", "2",
        "--seeds", "0,1", "--baseline-images", "0", "--results", str(tmp_path), "--run-id", "q",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "q"
    for init in ("native", "shared"):
        folders = sorted((root / init).glob("repeat-*"))
        seeds = [read_json(f / "config.json")["train"] for f in folders]
        assert [(s["seed"], s["init"]) for s in seeds] == [(0, init), (1, init)]
    csv = pd.read_csv(root / "report" / "claims.csv").set_index("claim")
    assert len(csv) == 7
    # 2 runs a framework: no claim is decided, and those short runs cannot test 3 and 4; 1 not
    # until each run's final PSNR is 3 dB above its noisy input's (2 epochs rarely get there)
    runs = pd.read_csv(root / "report" / "runs.csv")
    native = runs[runs["folder"].str.contains("/native/")]
    gain = native["test_psnr_db"] - native["noisy_psnr_db"]
    trained = bool((gain >= claims.TRAINED_MARGIN_DB).all())
    expected = claims.WITHIN_NOISE if trained else claims.NOT_TESTABLE
    assert csv.loc["1", "verdict"] == expected, csv.loc["1", "why"]
    assert trained or csv.loc["1", "why"].startswith("not trained yet: ")
    assert csv.loc["3", "verdict"] == csv.loc["4", "verdict"] == claims.NOT_TESTABLE
    assert csv.loc["1", "torch_n"] == csv.loc["1", "tf_n"] == 2
    assert not math.isnan(csv.loc["1", "torch_median"])
    assert "The paper's claims" in proc.stdout and "2 (shared init)." in proc.stdout
    # each repeat trained with its own seed: their first-epoch losses differ
    first = [
        json.loads((f / "torch" / "epochs.jsonl").read_text().splitlines()[0])["train_loss"]
        for f in sorted((root / "native").glob("repeat-*"))
    ]
    assert len(set(np.round(first, 8))) == 2
