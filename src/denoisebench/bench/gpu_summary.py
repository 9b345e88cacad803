"""The GPU check's writer: gpu_check.json (every step's raw figures) and gpu_check.md (the
summary a person reads: each step's status, commands and table), rewritten whole after every
step, so a check cut off by its allocation still leaves both."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from denoisebench.bench.gpu_runner import StepResult
from denoisebench.core.records import atomic_write_json, atomic_write_text


def write_summary(
    out: Path, results: list[StepResult], header: dict[str, Any], final: bool
) -> None:
    """gpu_check.json and gpu_check.md, rewritten whole (atomically)."""
    atomic_write_json(
        out / "gpu_check.json",
        {**header, "finished": final, "steps": [dataclasses.asdict(r) for r in results]},
    )
    atomic_write_text(out / "gpu_check.md", "\n".join(summary_lines(results, header, final)) + "\n")


def summary_lines(results: list[StepResult], header: dict[str, Any], final: bool) -> list[str]:
    md = [
        "# GPU check",
        "",
        f"- command: `{header['command']}`",
        f"- machine: {header['machine']}",
        f"- started {header['started']}, budget {header['budget_s']:.0f} s"
        + ("" if final else " (still running, or cut off: this file is rewritten after each step)"),
        f"- frameworks: {', '.join(header['frameworks'])}"
        + (f"; {header['frameworks_note']}" if header.get("frameworks_note") else ""),
        "",
        "| step | status | wall s | reason |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        md.append(
            f"| {r.name} | {r.status} | {r.wall_s:.0f} | {(r.reason or '').replace('|', '/')} |"
        )
    for r in results:
        if r.status == "not run":
            continue
        md += ["", f"## {r.title} ({r.name}: {r.status})", ""]
        md += [f"    {c}" for c in r.commands]
        if r.table:
            md += ["", "```", r.table, "```"]
    return md
