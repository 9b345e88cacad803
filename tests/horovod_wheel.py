"""pytest plugin: Horovod built in the background while the other tests run.

Building Horovod takes about 5 minutes on 2 cores, too long to add in front of the suite's 16.
When the collected tests include any marked `horovod` and no working Horovod is installed, the
build (`python -m launch horovod-build`, at the lowest CPU priority) starts as collection ends;
those tests run last (collection order is otherwise kept) and wait for it through the session
fixture `horovod_built`. A build that fails, or does not finish in BUILD_TIMEOUT_S, skips them
with its error and log, or fails them where DENOISEBENCH_REQUIRE_HOROVOD=1 (CI). A build still
running when the session ends (tests deselected, -x) is stopped.

Register it from tests/conftest.py with `pytest_plugins = ["horovod_wheel"]`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, skip_or_fail

from denoisebench.cluster.horovod_build import installed_bindings

REQUIRE_VAR = "DENOISEBENCH_REQUIRE_HOROVOD"
BUILD_TIMEOUT_S = 1800.0
"""The build's wait limit: a cold build while the rest of the suite runs beside it."""

_build: dict[str, object] = {}  # "proc": the background build, "log": its output


def _start_build() -> None:
    log = Path(tempfile.mkstemp(prefix="horovod-build-", suffix=".log")[1])
    with log.open("w") as out:
        _build["proc"] = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-m", "launch", "horovod-build"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole at the end
        )
    _build["log"] = log


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Horovod's tests last; their build started now, where it is needed."""
    items.sort(key=lambda item: item.get_closest_marker("horovod") is not None)  # stable
    wanted = any(item.get_closest_marker("horovod") for item in items)
    if wanted and installed_bindings() != {"torch", "tf"} and not config.option.collectonly:
        _start_build()


def pytest_sessionfinish(session: pytest.Session) -> None:
    proc = _build.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def horovod_built() -> None:
    """Horovod installed with both bindings: waits for the background build if one runs."""
    proc = _build.get("proc")
    if isinstance(proc, subprocess.Popen):
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2.0)
        log = Path(str(_build["log"]))
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        if proc.poll() is None:
            skip_or_fail(
                f"the Horovod build did not finish in {BUILD_TIMEOUT_S:.0f}s:\n{tail}", REQUIRE_VAR
            )
        if proc.returncode != 0:
            skip_or_fail(f"the Horovod build failed (log {log}):\n{tail}", REQUIRE_VAR)
        log.unlink(missing_ok=True)
    if installed_bindings() != {"torch", "tf"}:
        skip_or_fail(
            "Horovod is not installed with both bindings (python -m launch horovod-build)",
            REQUIRE_VAR,
        )
