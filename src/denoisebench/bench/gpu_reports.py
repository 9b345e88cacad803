"""What each step of the GPU check reports: it runs the step's commands through the runner and
turns what they printed and wrote into the step's figures (gpu_check.json) and its table
(gpu_check.md). A report raises StepFailed to end its step as failed or timeout, after keeping
what was measured before."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from denoisebench.bench.gpu_runner import Run, Runner, StepFailed, StepResult, last_lines
from denoisebench.bench.gpu_steps import PAPER_IMAGES, Context, Sizes, option, run_folder
from denoisebench.core.records import atomic_write_json, read_jsonl

Argvs = list[list[str]]


def printed_table(output: str) -> str:
    """A bench command's table: what it printed after its progress lines (first blank line)."""
    _, _, table = output.partition("\n\n")
    return table.strip()


def run_json(r: Runner, argv: list[str]) -> tuple[dict[str, Any], str]:
    """Run a bench command that writes `--json FILE`: (that JSON, its printed table)."""
    run = r.run(argv)
    return json.loads(Path(option(argv, "--json")).read_text()), printed_table(run.output)


def report_environment(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """The probe's JSON as the figures and as environment.json; a few lines of it."""
    run = r.run(argvs[0])
    info = json.loads(run.output.strip().splitlines()[-1])
    atomic_write_json(ctx.out / "environment.json", info)
    res.figures = info
    res.table = "\n".join(environment_lines(info))


def environment_lines(info: dict[str, Any]) -> list[str]:
    t = info["torch"]
    lines = [
        f"Python {info['python']}, torch {t['version']} (CUDA {t['cuda']}, cuDNN {t['cudnn']}), "
        f"{info['cpu_count']} CPU cores",
        f"GPU: {t.get('device', 'none visible to torch')}"
        + (f", {t['memory_gib']} GiB, capability {t['capability']}" if "device" in t else ""),
        f"driver: {info['nvml'].get('driver', info['nvml'].get('reason'))}",
    ]
    for g in info["nvml"].get("gpus", []):
        lines.append(
            f"GPU {g['index']}: SM clock {g.get('sm_clock_mhz')} of {g.get('sm_clock_max_mhz')} "
            f"MHz, memory clock {g.get('mem_clock_mhz')} MHz, power {g.get('power_w')} W of "
            f"{g.get('power_limit_w')} W; energy counter readable: "
            f"{g.get('energy_counter_readable')}"
        )
    lines.append(f"not installed: {', '.join(info['missing']) or 'nothing'}")
    return lines


def pytest_cause(output: str, returncode: int) -> str | None:
    """Why pytest stopped before running tests: the exception of an internal error (exit 3:
    `INTERNALERROR> ...Error: ...`, a plugin's hook refused) or a usage error (exit 4:
    `ERROR: ...`); None for any other ending."""
    lines = output.splitlines()
    if returncode == 3:
        errors = [
            ln[len("INTERNALERROR>") :].strip() for ln in lines if ln.startswith("INTERNALERROR>")
        ]
        named = [ln for ln in errors if re.match(r"[\w.]+(Error|Exception)\b", ln)]
        return (named or errors or ["internal error"])[-1]
    if returncode == 4:  # "ERROR: usage: ...", then "python -m pytest: error: <the cause>"
        said = [ln.strip() for ln in lines if ": error:" in ln or ln.startswith("ERROR:")]
        return next((ln for ln in said if ": error:" in ln), said[0] if said else "usage error")
    return None


def report_pytest(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """pytest's last line, and its skipped, failed and erroring tests with their reasons."""
    run = r.run(argvs[0], check=False)
    summary = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    cause = pytest_cause(run.output, run.returncode)
    if cause:  # "no tests ran in 1.21s" alone hid why (a plugin refused, a bad option)
        summary = f"{summary}: pytest stopped before the tests ({cause})"
    res.figures = {"pytest": summary, "returncode": run.returncode}
    reasons = [
        line for line in run.output.splitlines() if line.startswith(("SKIPPED", "FAILED", "ERROR"))
    ]
    res.table = "\n".join([*reasons, summary]).strip()
    if run.timed_out:
        raise StepFailed("timeout", f"cut after {run.wall_s:.0f} s", run)
    if run.returncode not in (0, 5):  # 5: nothing collected (no gpu test selected)
        raise StepFailed("failed", summary, run)


def report_bench(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """A bench command's JSON as the figures, its printed table as the table."""
    res.figures, res.table = run_json(r, argvs[0])


def report_fast_paths(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """The options measured, even when another failed or the step was cut at its limit."""
    # an option that fails leaves the others measured: keep the table, then say what failed.
    # The JSON is rewritten after every run, so a step cut at its limit keeps those too.
    run = r.run(argvs[0], check=False)
    path = Path(option(argvs[0], "--json"))
    if path.exists():
        res.figures = json.loads(path.read_text())
        res.table = (
            printed_table(run.output)
            if res.figures.get("finished")
            else "\n".join(line for line in run.output.splitlines() if line.startswith("repeat "))
        )
    if run.timed_out:
        done = len(res.figures.get("table", []))
        raise StepFailed("timeout", f"cut after {run.wall_s:.0f} s ({done} options measured)", run)
    if run.returncode != 0:
        failed = res.figures.get("failed") or [last_lines(run.output)]
        raise StepFailed("failed", "; ".join(map(str, failed)), run)


def report_sweep(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """Each batch size's bench JSON under its batch size; the first that fails ends the step."""
    tables = []
    for argv in argvs:
        batch = option(argv, "--batch-size")
        try:
            fig, table = run_json(r, argv)
        except StepFailed as e:
            tables.append(f"batch {batch}: {e.status}: {e.reason}")
            res.table = "\n\n".join(tables)
            raise
        res.figures[batch] = fig
        tables.append(f"batch {batch}:\n{table}")
        res.table = "\n\n".join(tables)


def report_trace(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """The trace's operator table, copied to top_ops.txt; its first lines as the table."""
    r.run(argvs[0])
    top = run_folder(argvs[0]) / "trace" / "top_ops.txt"
    if not top.exists():
        raise StepFailed("failed", f"the run wrote no {top.name}: see log.txt")
    shutil.copyfile(top, ctx.out / "top_ops.txt")
    text = top.read_text()
    res.figures = {"top_ops_file": "top_ops.txt"}
    res.table = "\n".join(text.splitlines()[:16])


def report_paper(r: Runner, ctx: Context, res: StepResult, argvs: Argvs) -> None:
    """Each mode's run, end to end: its epochs done, times, energy and final PSNR. A run cut
    at its limit keeps its epochs but gives no whole-run time."""
    s = ctx.sizes
    failures = []
    for argv in argvs:
        mode = option(argv, "--mode")
        # the faithful run leaves the tuned run at least as much time
        run = r.run(argv, check=False, share=0.55 if mode == "faithful" else 1.0)
        fig = paper_figures(run, run_folder(argv), s.paper_epochs)
        res.figures[mode] = fig
        if run.timed_out or run.returncode != 0:
            failures.append(
                f"{mode}: {'cut at its time limit' if run.timed_out else 'exit ' + str(run.returncode)}"
                f" after {fig['epochs_done']} of {s.paper_epochs} epochs"
            )
    res.table = "\n".join(paper_lines(res.figures, s))
    if failures:
        cut = all("cut" in f for f in failures)
        raise StepFailed("timeout" if cut else "failed", "; ".join(failures))


def paper_figures(run: Run, folder: Path, epochs_asked: int) -> dict[str, Any]:
    epochs = read_jsonl(folder / "epochs.jsonl") if (folder / "epochs.jsonl").exists() else []
    fig: dict[str, Any] = {
        "wall_s": run.wall_s,
        "epochs_done": len(epochs),
        "epochs": epochs_asked,
        "returncode": run.returncode,
        "cut": run.timed_out,
    }
    if not epochs:
        return fig
    last = epochs[-1]
    fig.update(
        train_time_s=sum(e["train_time_s"] for e in epochs),
        eval_time_s=sum(e["eval_time_s"] for e in epochs),
        throughput_steady_img_s=last.get("throughput_steady_img_s"),
        gpu_energy_j=sum(e["gpu_energy_j"] or 0 for e in epochs)
        if all(e.get("gpu_energy_j") is not None for e in epochs)
        else None,
        gpu_energy_reason=last.get("gpu_energy_reason"),
        test_psnr_db=last["test_psnr_db"],
    )
    return fig


def paper_lines(figures: dict[str, Any], s: Sizes) -> list[str]:
    """One line per mode: the whole run's time and what it was made of, for a run that
    finished; for one that did not, how far it got, and no whole-run figure (a projection
    from a cut run would leave out what its last epochs and its end cost)."""
    lines = []
    train_images = round(s.paper_images * 25_000 / PAPER_IMAGES)
    for mode, f in figures.items():
        if f["epochs_done"] == f["epochs"] and f["returncode"] == 0:
            lines.append(
                f"{mode}: the paper's run ({train_images:,} images x {f['epochs']} epochs, "
                f"batch 128) takes {f['wall_s']:.0f} s on this machine, end to end "
                f"({f['train_time_s']:.0f} s of it training steps, evaluation "
                f"{f['eval_time_s']:.0f} s; steady "
                f"{f['throughput_steady_img_s'] or float('nan'):,.0f} img/s; GPU energy "
                + (f"{f['gpu_energy_j'] / 1000:.1f} kJ" if f.get("gpu_energy_j") else
                   f"missing ({f.get('gpu_energy_reason')})")
                + f"; final test PSNR {f['test_psnr_db']:.2f} dB)"
            )  # fmt: skip
        else:
            why = "cut at its time limit" if f.get("cut") else f"exit {f['returncode']}"
            lines.append(
                f"{mode}: not finished ({why} after {f['epochs_done']} of {f['epochs']} "
                f"epochs, {f['wall_s']:.0f} s): no whole-run figure"
            )
    return lines
