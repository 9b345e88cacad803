"""The README says what the code does: its commands, its schema, its layout."""

from __future__ import annotations

import re
from pathlib import Path

from denoisebench.core.records import EPOCH_FIELDS, STEP_FIELDS, SUMMARY_FIELDS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(b.strip() for b in bash_blocks(README) if "pytest" in b)
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_readme_lists_every_record_field():
    for fields in (STEP_FIELDS, EPOCH_FIELDS, SUMMARY_FIELDS):
        for name in fields:
            assert f"`{name}`" in README, name


def test_readme_layout_names_every_module():
    for path in sorted((REPO / "src" / "denoisebench").glob("*.py")):
        if path.name != "__init__.py":
            assert path.name in README, path.name
    for name in ("default.toml", "paper.toml", "smoke.toml"):
        assert (REPO / "profiles" / name).exists() and name in README


def test_every_module_has_a_docstring():
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "launch").glob("*.py")]:
        text = path.read_text().lstrip()
        assert text.startswith('"""'), f"{path} has no module docstring"
