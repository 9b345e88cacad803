"""The README and the reference in docs/ say what the code does: their commands, links, schema
and layout; the `denoisebench` command is `python -m launch`."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

from denoisebench.core.config import SECTIONS
from denoisebench.core.schema import EPOCH_FIELDS, STEP_FIELDS, SUMMARY_FIELDS
from launch.options import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((REPO / "docs").glob("*.md"))}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def launcher_commands(text: str) -> list[list[str]]:
    """The arguments of every `python -m launch` / `denoisebench` line in the bash blocks."""
    commands = []
    for block in bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            m = re.search(r"(?:python -m launch|denoisebench)(?=\s|$)(.*)", line.split(" # ")[0])
            if m:
                commands.append(shlex.split(m.group(1)))
    return commands


def test_ci_runs_the_readme_test_command():
    test_command = next(b.strip() for b in bash_blocks(README) if "pytest" in b)
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_readme_fits_on_two_screens_and_links_to_the_reference():
    assert len(README.splitlines()) <= 100
    for name in DOCS:
        assert f"(docs/{name}" in README, f"README does not link docs/{name}"


def test_links_and_pictures_point_at_files_that_exist():
    pages = {REPO / "README.md": README, **{REPO / "docs" / n: t for n, t in DOCS.items()}}
    for page, text in pages.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: link to {target}: no such file"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
                ids = {slug(h) for h in headings} | set(
                    re.findall(r'<a id="([^"]+)">', file.read_text())
                )
                assert anchor in ids, f"{page.name}: link to {target}: no such heading"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_documented_commands_parse():
    """Every launcher command in the README and the reference uses options that exist."""
    commands = launcher_commands(README) + [c for t in DOCS.values() for c in launcher_commands(t)]
    assert len(commands) >= 20
    parser = build_parser()
    for argv in commands:
        if (argv[:1] and argv[0] in SUBCOMMANDS) or "--help" in argv:
            continue  # subcommands have their own parsers (tests/test_cli.py and others)
        parser.parse_args(argv)  # a misspelt option exits with 2


def test_documented_config_keys_exist():
    """Every `--set section.key=...` and `section.key` the pages name is a config field."""
    fields = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    text = README + "".join(DOCS.values())
    keys = re.findall(r"--set ([a-z_]+\.[a-z_0-9]+)=", text)
    keys += re.findall(r"`([a-z_]+\.[a-z_0-9]+)`", text)
    named = {key for key in keys if key.split(".")[0] in SECTIONS}  # not section.key, torch.mm
    named -= {"runtime.mode"}  # summary.json's runtime record: the speed mode a run used
    assert {"train.deterministic", "train.seed", "runtime.intra_op_threads"} <= named
    assert named <= fields, sorted(named - fields)


def test_results_doc_lists_every_record_field():
    for fields in (STEP_FIELDS, EPOCH_FIELDS, SUMMARY_FIELDS):
        for name in fields:
            assert f"`{name}`" in DOCS["results.md"], name


def test_layout_names_every_module():
    layout = DOCS["layout.md"]
    patterns = re.findall(r"\b(\w+_\*\.py)\b", layout)  # handwritten_*.py: a family of modules
    for path in sorted(
        [*(REPO / "src" / "denoisebench").rglob("*.py"), *(REPO / "launch").glob("*.py")]
    ):
        if path.name == "__init__.py":
            continue
        named = path.name in layout or any(fnmatch.fnmatch(path.name, p) for p in patterns)
        assert named, f"docs/layout.md does not name {path.relative_to(REPO)}"
    for name in ("default.toml", "paper.toml", "smoke.toml"):
        assert (REPO / "profiles" / name).exists() and name in layout


def test_every_module_has_a_docstring():
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "launch").glob("*.py")]:
        text = path.read_text().lstrip()
        assert text.startswith('"""'), f"{path} has no module docstring"


def test_the_denoisebench_command_is_python_m_launch():
    """Installed by the README's set-up command (pip install -e): the same options, and the
    launcher's exit code."""
    command = Path(sys.executable).parent / "denoisebench"
    assert command.exists(), f"{command} missing: install with the README's set-up command"
    by_command = subprocess.run([command, "--help"], capture_output=True, text=True, cwd="/")
    by_module = subprocess.run(
        [sys.executable, "-m", "launch", "--help"], capture_output=True, text=True
    )
    assert by_command.returncode == by_module.returncode == 0, by_command.stderr
    options = re.findall(r"--[\w-]+", by_command.stdout)
    assert len(options) > 30 and options == re.findall(r"--[\w-]+", by_module.stdout)
    bad = subprocess.run([command, "--repeats", "0"], capture_output=True, text=True, cwd="/")
    assert bad.returncode == 2 and "--repeats 0 must be in 1..100" in bad.stderr
