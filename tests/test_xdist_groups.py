"""The test run's own set-up: pytest-xdist applies the groups that tests/conftest.py gives.

xdist marks a grouped test by a suffix on its node id ("...@slurm") and sends each group to one
worker. pytest 9.2 ignores that renaming (pytest-dev/pytest-xdist#1386): a group's tests then
spread over the workers, each building its own SLURM cluster or report runs, and nothing says
so. pyproject.toml keeps pytest below 9.2; this test fails if the groups stop applying.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.xdist_group("groups-check")
def test_a_grouped_test_carries_its_group(request: pytest.FixtureRequest) -> None:
    if not (os.environ.get("PYTEST_XDIST_WORKER") and request.config.getvalue("loadgroup")):
        pytest.skip("not in a pytest-xdist worker with --dist loadgroup")
    assert request.node.nodeid.endswith("@groups-check"), (
        f"pytest {pytest.__version__} ignored pytest-xdist's test groups: install pytest<9.2"
    )
