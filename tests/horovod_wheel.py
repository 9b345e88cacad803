"""pytest plugin: Horovod built in the background while the other tests run.

A cold Horovod build takes 5 to 10 minutes on 2 cores, too long to add in front of the suite.
When the collected tests include any marked `horovod` and no working Horovod is installed, the
build (`python -m launch horovod-build`, at the lowest CPU priority) starts as collection ends;
those tests run last (collection order is otherwise kept) and wait for it through the session
fixture `horovod_built`. A build that fails, or does not finish in BUILD_TIMEOUT_S, skips them
with its error and log, or fails them where DENOISEBENCH_REQUIRE_HOROVOD=1 (CI).

Under pytest-xdist every worker collects the same tests, but one build serves them all: the
first worker to create the run's build folder (named after xdist's test-run id, which all
workers share) starts it; the others wait for the exit code it leaves there. The process that
owns the session (xdist's controller, or pytest itself without workers) stops a build still
running when the session ends (tests deselected, -x) and removes the folder.

Register it from tests/conftest.py with `pytest_plugins = ["horovod_wheel"]`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from helpers import REPO, skip_or_fail

from denoisebench.cluster.horovod_build import installed_bindings

REQUIRE_VAR = "DENOISEBENCH_REQUIRE_HOROVOD"
BUILD_TIMEOUT_S = 1800.0
"""The build's wait limit: a cold build while the rest of the suite runs beside it."""
XDIST_RUN_ID = "PYTEST_XDIST_TESTRUNUID"  # set by xdist in each worker's environment


def build_folder(config: pytest.Config) -> Path:
    """This test run's build folder: log.txt, pid, and rc (the exit code) once it ended."""
    run_id = os.environ.get(XDIST_RUN_ID) or getattr(config.option, "testrunuid", None)
    return Path(tempfile.gettempdir()) / f"denoisebench-horovod-build-{run_id}"


def pytest_configure(config: pytest.Config) -> None:
    """The session owner fixes the run id: xdist passes it on to its workers."""
    if not os.environ.get(XDIST_RUN_ID) and getattr(config.option, "testrunuid", None) is None:
        config.option.testrunuid = uuid.uuid4().hex


def _start_build(folder: Path) -> None:
    """Start the build unless another worker of this run has (creating the folder decides)."""
    try:
        folder.mkdir()
    except FileExistsError:
        return
    build = shlex.join(["nice", "-n", "19", sys.executable, "-m", "launch", "horovod-build"])
    log, rc = shlex.quote(str(folder / "log.txt")), shlex.quote(str(folder / "rc"))
    # the exit code lands in rc whole (written, then renamed) when the build ends
    script = f"{build} > {log} 2>&1; echo $? > {rc}.tmp && mv {rc}.tmp {rc}"
    proc = subprocess.Popen(
        ["sh", "-c", script],
        cwd=REPO,
        start_new_session=True,  # its own process group: stopped as a whole at the end
    )
    (folder / "pid").write_text(str(proc.pid))


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Horovod's tests last; their build started now, where it is needed."""
    items.sort(key=lambda item: item.get_closest_marker("horovod") is not None)  # stable
    wanted = any(item.get_closest_marker("horovod") for item in items)
    if wanted and installed_bindings() != {"torch", "tf"} and not config.option.collectonly:
        _start_build(build_folder(config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # a worker: the others may still wait for the build
    folder = build_folder(session.config)
    pid = folder / "pid"
    if pid.exists() and not (folder / "rc").exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid.read_text()), signal.SIGTERM)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def horovod_built(request: pytest.FixtureRequest) -> None:
    """Horovod installed with both bindings: waits for the background build if one runs."""
    folder = build_folder(request.config)
    if folder.exists():
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        rc = folder / "rc"
        while not rc.exists() and time.monotonic() < deadline:
            time.sleep(2.0)
        log = folder / "log.txt"
        text = log.read_text(errors="replace") if log.exists() else ""
        tail = "\n".join(text.splitlines()[-12:])
        if not rc.exists():
            skip_or_fail(
                f"the Horovod build did not finish in {BUILD_TIMEOUT_S:.0f}s:\n{tail}", REQUIRE_VAR
            )
        if rc.read_text().strip() != "0":
            saved = Path(tempfile.mkstemp(prefix="horovod-build-", suffix=".log")[1])
            saved.write_text(text)  # the folder goes at the session's end; the log stays
            skip_or_fail(f"the Horovod build failed (log {saved}):\n{tail}", REQUIRE_VAR)
    if installed_bindings() != {"torch", "tf"}:
        skip_or_fail(
            "Horovod is not installed with both bindings (python -m launch horovod-build)",
            REQUIRE_VAR,
        )
