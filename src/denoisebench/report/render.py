"""The report written out: Report (its content), report.md and the self-contained report.html."""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from denoisebench.report.terms import GROUP
from denoisebench.report.verdicts import METHOD

if TYPE_CHECKING:
    from denoisebench.report.claims import ClaimsSection
    from denoisebench.report.plots import Plot


HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
"""Where Markdown would start raw HTML (CommonMark: `<` then a tag name, `/`, `!` or `?`)."""


DOCS_LINK = re.compile(r"\[([^\[\]]+)\]\(docs:([\w.-]+\.md(?:#[\w-]+)?)\)")
"""A link to the reference in the report's own lines: [words](docs:results.md#verdicts)."""
BOLD = re.compile(r"\*\*([^*]+)\*\*")
"""A column's name in a table's key line (terms.table_keys), bold in both files."""
DOCS_DIR = Path(__file__).resolve().parents[3] / "docs"
"""docs/ of the source checkout this module runs from (absent in a plain wheel install)."""


def docs_href(out_dir: Path) -> str | None:
    """docs/ as a link from a report written to `out_dir` (relative, so a results folder inside
    the checkout keeps its links when moved with it); None: no docs/ beside the source."""
    if not DOCS_DIR.is_dir():
        return None
    return Path(os.path.relpath(DOCS_DIR, Path(out_dir).resolve())).as_posix()


def _md_links(text: str, docs: str | None) -> str:
    """The report's docs links as Markdown links, or as words and the page without docs/."""

    def link(m: re.Match[str]) -> str:
        if docs is None:
            return f"{m[1]} (docs/{m[2]})"
        target = f"{docs}/{m[2]}"
        return f"[{m[1]}](<{target}>)" if " " in target else f"[{m[1]}]({target})"

    return DOCS_LINK.sub(link, text)


def _html_links(escaped: str, docs: str | None) -> str:
    """The docs links of already escaped HTML text as anchors."""

    def link(m: re.Match[str]) -> str:
        if docs is None:
            return f"{m[1]} (docs/{m[2]})"
        return f'<a href="{html.escape(f"{docs}/{m[2]}")}">{m[1]}</a>'

    return DOCS_LINK.sub(link, escaped)


def _md_text(text: str) -> str:
    """Text from the runs (a folder, profile or setup name, an error) as Markdown shows it, not
    as HTML a Markdown viewer would run (report.html escapes all of it): a `<` that would open a
    tag becomes `&lt;`; `<=` and `< 0.1` stay as they read."""
    return HTML_START.sub("&lt;", text)


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"

    def esc(v: Any) -> str:
        return _md_text(str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in frame.columns) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += [
        "| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    text = frame.to_html(index=False, escape=True, border=0, classes="t")
    # Grey out missing figures so they read as absent at a glance, not as values.
    return text.replace("<td>missing", '<td class="missing">missing')


NOTES = [
    "Each figure is the median over the group's completed runs, with [min, max] when they "
    "differ; no run is dropped. A group is one framework, engine, device count, per-device "
    "batch and setup (the config apart from the batch size and the seed, so the repeats of "
    "--seeds are one group; its id is profile:hash).",
    "Throughput is the steady-state figure (warm-up steps excluded): the median over epochs "
    "within a run (summary.json), then the median over repeats. Step times, data-wait "
    "fraction: over all steady steps of a run (steps.jsonl, every rank); a step's time is "
    "CUDA-event time for PyTorch on a GPU and the host clock on a CPU; TensorFlow on a GPU "
    "waits for the device once an epoch, so its step percentiles are left out.",
    "Scaling efficiency = throughput(N) / (N x throughput(1)), against the 1-device group of "
    "the same framework, per-device batch and setup; the range is the widest the repeats allow.",
    "Time to target: training time summed over epochs (evaluation excluded) up to the first "
    "epoch whose test PSNR reaches the target; energy to target sums the GPU energy the same way.",
    "Each verdict gives who is ahead by how much (ratio of the medians; for PSNR their "
    "difference), the medians, n (each side's runs) and whether machine load disturbed any; it "
    "names a winner only when both frameworks have at least two repeats, their [min, max] "
    "ranges do not overlap and, for speed and energy, no run was disturbed by other load on the "
    "machine (environment table); otherwise it says 'no winner' and why. verdicts.csv adds the "
    "full reasoning (column detail): the range of the ratio the repeats' extremes allow.",
]


@dataclass
class Report:
    """Everything the Markdown and HTML writers show."""

    title: str
    generated: str
    runs: pd.DataFrame
    runs_display: pd.DataFrame
    groups: pd.DataFrame
    verdicts: list[str]
    tables: dict[str, tuple[str, pd.DataFrame]]
    plots: list[tuple[str, str, Plot]]
    """(file name, caption, PNG, or one line saying why there is nothing to show)."""
    baselines: pd.DataFrame
    baseline_note: str
    environment: pd.DataFrame
    configs: dict[str, dict[str, Any]]
    """setup -> the config a run of it used (configs.resolved_config)."""
    data: list[str]
    config_notes: dict[str, str] = field(default_factory=dict)
    """setup -> one line on how its config was resolved from config.json."""
    left_out: dict[str, list[str]] = field(default_factory=dict)
    """table heading -> one line per reason for the columns left out of it (leftout.py)."""
    keys: dict[str, str] = field(default_factory=dict)
    """table heading -> one line saying what its columns mean (terms.table_keys)."""
    docs: str | None = None
    """docs/ as a link from where the report is written (docs_href); None: links as text."""
    shared: str | None = None
    """One line naming the engine, batch and setup every group shares; None: they differ."""
    skipped: list[str] = field(default_factory=list)
    """Run folders left out, each with the file that did not parse and why."""
    claims: ClaimsSection | None = None
    """The paper's claims, tested (report --claims, launch claims); None: no such section."""

    def all_plots(self) -> list[tuple[str, str, Plot]]:
        """Every plot of the report: the claims' and the others."""
        return [*(self.claims.plots if self.claims else []), *self.plots]


def _sections(r: Report) -> list[tuple[str, str, Any]]:
    """(heading, kind, content) in report order; kind: text, list, key (what a table's
    columns mean), left_out (the lines on a table's columns left out), table, plots, configs."""
    intro = [
        f"Generated {r.generated} from {r.runs['folder'].nunique()} run folder(s), "
        f"{len(r.runs)} framework run(s), {len(r.groups)} group(s) (a group: {GROUP}).",
        *(f"Data: {d}" for d in r.data),
        *([r.shared] if r.shared else []),
    ]
    out: list[tuple[str, str, Any]] = [("", "list", intro)]
    if r.skipped:
        out.append(("Skipped run folders (damaged files)", "list", r.skipped))
    if r.claims is not None:
        out.append(("The paper's claims", "list", r.claims.scope))
        out.append(("", "table", r.claims.table()))
        out.append(("", "text", "How a verdict is reached:"))
        out.append(("", "list", r.claims.rule))
        out.append(("", "plots", r.claims.plots))
    out.append(("Verdicts", "list", r.verdicts))
    out.append(("", "key", METHOD))
    for title, frame in r.tables.values():
        out += _table(r, title, frame)
    out.append(("Classical baselines (same noisy test images)", "text", r.baseline_note))
    out.append(("", "table", r.baselines))
    out.append(("Plots", "plots", r.plots))
    out += _table(r, "Runs", r.runs_display)
    out += _table(r, "Environment", r.environment)
    out.append(("Configs", "configs", r.configs))
    out.append(("How the figures are computed", "list", NOTES))
    return out


def _table(r: Report, title: str, frame: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """A table's sections: the table (none when every figure was left out), the line saying
    what its columns mean, then the lines on what was left out of it."""
    left_out = r.left_out.get(title, [])
    parts: list[tuple[str, Any]] = []
    if not frame.empty or not left_out:
        parts.append(("table", frame))
        if title in r.keys and not frame.empty:
            parts.append(("key", r.keys[title]))
    if left_out:
        parts.append(("left_out", left_out))
    return [(title if i == 0 else "", kind, content) for i, (kind, content) in enumerate(parts)]


def render_markdown(r: Report) -> str:
    def esc(text: str) -> str:
        return _md_links(_md_text(text), r.docs)

    lines = [f"# {esc(r.title)}", ""]
    for heading, kind, content in _sections(r):
        if heading:
            lines += [f"## {esc(heading)}", ""]
        if kind == "list":
            lines += [f"- {esc(x)}" for x in content] + [""]
        elif kind == "left_out":
            lines += [f"{esc(x)}  " for x in content] + [""]  # two spaces: a line break
        elif kind == "text":
            lines += [esc(content), ""]
        elif kind == "key":
            lines += [f"_{esc(content)}_", ""]
        elif kind == "table":
            lines += [_md_table(content)]
        elif kind == "plots":
            for name, caption, png in content:
                shown = (
                    f"Not drawn: {esc(png)}"
                    if isinstance(png, str)
                    else f"![{esc(caption)}]({name})"
                )
                lines += [f"### {esc(caption)}", "", shown, ""]
        elif kind == "configs":
            for setup, cfg in content.items():
                lines += [
                    f"### setup {esc(setup)}",
                    "",
                    *([esc(r.config_notes[setup]), ""] if setup in r.config_notes else []),
                    "```json",
                    json.dumps(cfg, indent=2, sort_keys=True),
                    "```",
                    "",
                ]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.t { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
table.t th, table.t td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
table.t th { background: #f3f3f3; }
td.missing, p.missing { color: #888; font-style: italic; }
p.left-out { color: #666; font-size: 13px; margin: 0.2em 0; }
p.key { color: #444; font-size: 13px; margin: -1em 0 1em; }
figure { margin: 1em 0 2em; } figcaption { font-weight: 600; margin-bottom: 0.3em; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.5em; overflow: auto; font-size: 12px; }
"""
# Writes each image's decoded width into the page (data-natural-width) and a count into
# #image-check: a headless browser's DOM dump then shows whether the embedded PNGs decoded.
IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute("data-natural-width", String(imgs[i].naturalWidth));
    if (imgs[i].naturalWidth > 0) { ok++; }
  }
  document.getElementById("image-check").textContent = ok + " of " + imgs.length + " images decoded";
});
"""


def render_html(r: Report) -> str:
    def esc(text: str) -> str:
        return _html_links(html.escape(text), r.docs)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(r.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(r.title)}</h1>",
    ]
    for heading, kind, content in _sections(r):
        if heading:
            parts.append(f"<h2>{esc(heading)}</h2>")
        if kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in content) + "</ul>")
        elif kind == "left_out":
            parts += [f'<p class="left-out">{esc(x)}</p>' for x in content]
        elif kind == "text":
            parts.append(f"<p>{esc(content)}</p>")
        elif kind == "key":  # a column's name in bold: **name**
            key = BOLD.sub(r"<b>\1</b>", esc(content))
            parts.append(f'<p class="key">{key}</p>')
        elif kind == "table":
            parts.append(_html_table(content))
        elif kind == "plots":
            for name, caption, png in content:
                if isinstance(png, str):  # nothing to show: one line saying why
                    parts.append(
                        f"<figure><figcaption>{esc(caption)}</figcaption>"
                        f'<p class="missing">Not drawn: {esc(png)}</p></figure>'
                    )
                    continue
                data = base64.b64encode(png).decode("ascii")
                parts.append(
                    f'<figure><figcaption>{esc(caption)}</figcaption><img alt="{esc(caption)}" '
                    f'data-file="{esc(name)}" src="data:image/png;base64,{data}"></figure>'
                )
        elif kind == "configs":
            for setup, cfg in content.items():
                note = r.config_notes.get(setup)
                parts.append(
                    f"<details><summary>setup {esc(setup)}</summary>"
                    + (f"<p>{esc(note)}</p>" if note else "")
                    + f"<pre>{esc(json.dumps(cfg, indent=2, sort_keys=True))}</pre></details>"
                )
    parts.append('<p id="image-check">images not checked (scripts off)</p>')
    parts.append(f"<script>{IMAGE_CHECK_JS}</script></body></html>")
    return "\n".join(parts)
