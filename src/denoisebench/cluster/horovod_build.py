"""Horovod 0.28.1 built from its source archive for this environment, cached, and installed.

    python -m launch horovod-build            # build once (minutes) or reuse the cached wheel
    python -m launch horovod-build --force    # build again even with a cached wheel
    python -m launch horovod-build --check    # is a working Horovod installed here? (exit 0 / 1)

Horovod's last release, 0.28.1 (June 2023), is a source archive only, and as it is it does not
build against torch 2.13 or TensorFlow 2.21. `EDITS` are the project's four changes that make it
build (and build faster), each with its reason; the wheel has both bindings (PyTorch and
TensorFlow), Gloo for the collectives and no MPI. It is cached outside the repository, in
$XDG_CACHE_HOME/denoisebench/horovod/<key>/ (~/.cache without XDG_CACHE_HOME), where <key> names
the Horovod, torch, TensorFlow and Python versions and a digest of the edits: a second call with
a warm cache only installs the wheel (seconds). The build prints its progress; on failure, the
first error and the compiler line that produced it, and the path of the whole log.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata as metadata
import os
import platform
import re
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOROVOD_VERSION = "0.28.1"
SDIST_SHA256 = "92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0"
"""sha256 of PyPI's horovod-0.28.1.tar.gz (checked after download)."""
BUILD_REQUIREMENTS = ("cmake", "pyyaml", "cloudpickle", "cffi", "psutil", "packaging")
"""Installed before the build when missing (pins: constraints.txt): cmake to configure it (PyPI's
4.x; Horovod looks for `cmake` on PATH), and the wheel's declared requirements (horovodrun
imports pyyaml and cloudpickle; Horovod's setup.py would otherwise fetch them as eggs during
the build)."""
CONSTRAINTS = Path(__file__).resolve().parents[3] / "constraints.txt"
"""The repository's pins; absent when the package is installed from a wheel."""

# Gloo for the collectives on CPUs, no MPI, no MXNet; both framework bindings. PyPI's cmake 4.x
# no longer configures projects that declare compatibility with CMake < 3.5, as Horovod's copy of
# Gloo (third_party/gloo/CMakeLists.txt) does; CMAKE_POLICY_VERSION_MINIMUM=3.5 lets it through.
BUILD_ENV = {
    "HOROVOD_WITH_PYTORCH": "1",
    "HOROVOD_WITH_TENSORFLOW": "1",
    "HOROVOD_WITHOUT_MXNET": "1",
    "HOROVOD_WITHOUT_MPI": "1",
    "HOROVOD_WITH_GLOO": "1",
    "HOROVOD_CPU_OPERATIONS": "GLOO",
    "CMAKE_POLICY_VERSION_MINIMUM": "3.5",
}


@dataclass(frozen=True)
class Edit:
    """One change to Horovod's source: `old` (found exactly once in `path`) becomes `new`."""

    path: str
    old: str
    new: str
    reason: str


EDITS = (
    Edit(
        "horovod/torch/CMakeLists.txt",
        "    set(CMAKE_CXX_STANDARD 14)",
        "    set(CMAKE_CXX_STANDARD 17)",
        "torch >= 2.1's headers stop any compiler below C++17 ('#error C++17 or later compatible "
        "compiler is required to use PyTorch'); Horovod compiles its PyTorch binding as C++14. "
        "Upstream made the same change (commit 3a31d933, PR #3998), never released.",
    ),
    Edit(
        "horovod/torch/CMakeLists.txt",
        "    if (Pytorch_CXX11)\n        list(APPEND PYTORCH_LINKER_LIBS gloo)",
        "    if (Pytorch_CXX11)\n        list(APPEND PYTORCH_LINKER_LIBS compatible17_gloo)",
        "the `gloo` library is compiled as C++14; linked into the binding compiled as C++17 it "
        "fails with 'multiple definition of gloo::rendezvous::Store::kDefaultTimeout'. "
        "`compatible17_gloo` is Horovod's C++17 copy of Gloo, built for the TensorFlow binding "
        "(root CMakeLists.txt, 'Gloo for c++17 TF'), which this build always includes.",
    ),
    Edit(
        "horovod/tensorflow/xla_mpi_ops.cc",
        "#if TENSORFLOW_VERSION >= 2006000000\n",
        "#if TENSORFLOW_VERSION >= 2006000000 && HAVE_GPU\n",
        "the file's body is GPU-only (XLA custom calls on CUDA streams), and its XLA headers "
        "include highwayhash/arch_specific.h, which TensorFlow 2.21's wheel does not ship. "
        "A GPU build needs upstream's open PR #4302 instead.",
    ),
    Edit(
        "CMakeLists.txt",
        'string(REPLACE "-O2" "-O3" CMAKE_CXX_FLAGS_RELWITHDEBINFO "${CMAKE_CXX_FLAGS_RELWITHDEBINFO}")',
        'string(REPLACE "-O2 -g" "-O3" CMAKE_CXX_FLAGS_RELWITHDEBINFO "${CMAKE_CXX_FLAGS_RELWITHDEBINFO}")',
        "no debug information (setup.py always builds RelWithDebInfo, '-O2 -g', which this line "
        "turns into -O3): it nearly doubles the compile time of the framework bindings "
        "(horovod/torch/mpi_ops_v2.cc on 2 cores: 93 s with -O3 -g, 53 s with -O3) and nothing "
        "here reads it. The optimisation stays -O3.",
    ),
)


class BuildError(Exception):
    """The build cannot go on; the message says why (and where the log is)."""


def say(line: str) -> None:
    print(f"horovod-build: {line}", flush=True)


def framework_versions() -> dict[str, str | None]:
    """The installed torch and TensorFlow versions (None: not installed), read without
    importing either."""

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"torch": version("torch"), "tensorflow": version("tensorflow", "tensorflow-cpu")}


def cache_key(versions: dict[str, str | None]) -> str:
    """What the wheel was built for: Horovod, torch, TensorFlow and Python versions, the machine,
    and the edits (a changed edit builds a new wheel). Letters, digits, '.', '_' and '-' only:
    Horovod's CMake matches its source path as a regular expression (cmake/Utilities.cmake), and
    a '+' in it (torch's 2.13.0+cpu) put the built libraries outside the wheel's package."""
    edits = hashlib.sha256(repr(EDITS).encode()).hexdigest()[:10]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = (
        f"horovod-{HOROVOD_VERSION}_torch-{versions['torch']}_tf-{versions['tensorflow']}"
        f"_py{py}_{platform.machine()}_edits-{edits}"
    )
    return re.sub(r"[^A-Za-z0-9._-]", "-", key)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "denoisebench" / "horovod"


def installed_bindings() -> set[str]:
    """The framework bindings of the installed Horovod ("torch", "tf"), from its file list:
    nothing is imported."""
    try:
        if metadata.version("horovod") != HOROVOD_VERSION:
            return set()
        files = [str(f) for f in metadata.files("horovod") or []]
    except metadata.PackageNotFoundError:
        return set()
    found = set()
    if any(re.fullmatch(r"horovod/torch/mpi_lib_v2\..*so", f) for f in files):
        found.add("torch")
    if any(re.fullmatch(r"horovod/tensorflow/mpi_lib\..*so", f) for f in files):
        found.add("tf")
    return found


def engine_unavailable(frameworks: list[str], prog: str = "python -m launch") -> str | None:
    """Why `--engine horovod` cannot train `frameworks` here, or None when it can."""
    missing = [f for f in frameworks if f not in installed_bindings()]
    if not missing:
        return None
    return (
        f"--engine horovod needs Horovod {HOROVOD_VERSION} with its "
        f"{' and '.join(missing)} binding, built for this environment: run "
        f"`{prog} horovod-build` first (about 5 minutes on 2 cores, then cached)"
    )


def load_errors(frameworks: list[str]) -> dict[str, str]:
    """Each binding imported in a fresh process, all at once (torch and TensorFlow are never
    imported together): the last line of each one's error, for those that do not load."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    modules = {"torch": "horovod.torch", "tf": "horovod.tensorflow"}
    procs = {
        f: subprocess.Popen(
            [sys.executable, "-c", f"import {modules[f]}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for f in frameworks
    }
    errors = {}
    for framework, proc in procs.items():
        lines = proc.communicate()[1].strip().splitlines()
        if proc.returncode:
            errors[framework] = lines[-1] if lines else f"exit code {proc.returncode}"
    return errors


def pip(*args: str) -> None:
    """Run pip in this environment; its output is shown only when it fails."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"`pip {' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}")


def ensure_build_requirements() -> None:
    """Install what the build and horovodrun need and this environment lacks."""
    missing = []
    for name in BUILD_REQUIREMENTS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if not missing:
        return
    say(f"installing {', '.join(missing)}")
    pins = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.is_file() else []
    pip("install", "-q", *pins, *missing)


def download_sdist(root: Path) -> Path:
    """PyPI's source archive, downloaded once into `root` and checked against SDIST_SHA256."""
    sdist = root / f"horovod-{HOROVOD_VERSION}.tar.gz"
    if not sdist.is_file():
        say(f"downloading horovod-{HOROVOD_VERSION}.tar.gz from the package index")
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            pip(
                "download", "-q", "--no-deps", "--no-binary", ":all:",
                f"horovod=={HOROVOD_VERSION}", "-d", tmp,
            )  # fmt: skip
            os.replace(Path(tmp) / sdist.name, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise BuildError(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256} (removed)")
    return sdist


def apply_edits(src: Path) -> None:
    """EDITS, each on text that must appear exactly once."""
    for edit in EDITS:
        path = src / edit.path
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            raise BuildError(
                f"{edit.path}: the text to change appears {count} times, not once: this is "
                f"not the Horovod {HOROVOD_VERSION} source the edits were written for. "
                f"Looked for:\n{edit.old}"
            )
        path.write_text(text.replace(edit.old, edit.new))
        change = f"{edit.old.splitlines()[-1].strip()} -> {edit.new.splitlines()[-1].strip()}"
        say(f"edited {edit.path}: {change}")


_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]", re.MULTILINE)
_ERROR = re.compile(r"(?:\berror\b:|CMake Error|\*\*\* \[|error: command)", re.IGNORECASE)
_COMPILE = re.compile(r"(?:^|&& |\s)\S*(?:c\+\+|g\+\+|gcc|clang\+\+|nvcc)\s.*\s-c\s")


def failure_summary(log_text: str) -> str:
    """The build's first error and the compiler command before it (when there is one)."""
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if _ERROR.search(line):
            command = next((c for c in reversed(lines[:i]) if _COMPILE.search(c)), None)
            out = [f"first error: {line.strip()}"]
            if command is not None:
                out.append(f"compiler line: {command.strip()}")
            return "\n".join(out)
    tail = "\n".join(line.strip() for line in lines[-5:])
    return f"no error line found; the log ends with:\n{tail}"


def build_wheel(src: Path, out: Path, log: Path, progress_s: float = 30.0) -> Path:
    """`pip wheel` of the edited source into `out`, its output in `log`; a progress line when
    the compiled share grows by 10% or every `progress_s`."""
    scripts = sysconfig.get_path("scripts")  # PyPI's cmake is installed here
    env = {
        **os.environ,
        **BUILD_ENV,
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKEFLAGS": f"-j{os.cpu_count() or 1}",
    }
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
        "-w", str(out), str(src),
    ]  # fmt: skip
    t0 = time.monotonic()
    with log.open("w") as f:
        f.write(" ".join(f"{k}={v}" for k, v in BUILD_ENV.items()) + "\n" + " ".join(cmd) + "\n")
        f.flush()
        # its own process group: stopping the build stops cmake, make and the compilers with it
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=src, start_new_session=True
        )
        try:
            shown, last = -10, t0
            while proc.poll() is None:
                time.sleep(1.0)
                percents = _PERCENT.findall(log.read_text(errors="replace"))
                pct = int(percents[-1]) if percents else 0
                now = time.monotonic()
                if pct >= shown + 10 or now - last >= progress_s:
                    stage = f"compiling, {pct}% done" if percents else "configuring (cmake)"
                    say(f"{stage} after {now - t0:.0f}s")
                    shown, last = pct, now
        finally:  # stopped (Ctrl-C, SIGTERM): the compilers go, before their folder does
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode:
        raise BuildError(
            f"the build failed (exit {proc.returncode}) after {time.monotonic() - t0:.0f}s\n"
            f"{failure_summary(log.read_text(errors='replace'))}\nwhole log: {log}"
        )
    wheels = list(out.glob("horovod-*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel succeeded but left no wheel in {out}; log: {log}")
    say(f"built {wheels[0].name} in {time.monotonic() - t0:.0f}s")
    return wheels[0]


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One build per cache folder at a time: a second call waits, then finds the wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another build holds {folder}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cached_wheel(folder: Path, force: bool) -> Path:
    """The wheel in `folder`, built first when there is none (or `force`)."""
    wheels = sorted(folder.glob("horovod-*.whl"))
    if wheels and not force:
        say(f"using the cached wheel {wheels[0]}")
        return wheels[0]
    ensure_build_requirements()
    sdist = download_sdist(folder.parent)
    log = folder / "build.log"
    with tempfile.TemporaryDirectory(prefix="build-", dir=folder) as tmp:
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        src = Path(tmp) / f"horovod-{HOROVOD_VERSION}"
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", str(src)):  # see cache_key
            raise BuildError(
                f"{src}: Horovod's CMake cannot build in a path with other characters than "
                "letters, digits, '.', '_', '-'; set XDG_CACHE_HOME to such a folder"
            )
        apply_edits(src)
        say(f"building (about 5 minutes on 2 cores); log: {log}")
        wheel = build_wheel(src, Path(tmp) / "dist", log)
        for old in wheels:
            old.unlink()
        os.replace(wheel, folder / wheel.name)
    return folder / wheel.name


def ensure_horovod(force: bool = False) -> None:
    """Horovod installed and both bindings importing: already so, from the cached wheel, or
    built first."""
    if not force and installed_bindings() == {"torch", "tf"}:
        if not load_errors(["torch", "tf"]):
            say(f"Horovod {HOROVOD_VERSION} is installed and both bindings load; nothing to do")
            return
        say("the installed Horovod does not load here; installing the build for this environment")
    versions = framework_versions()
    if not versions["torch"] or not versions["tensorflow"]:
        raise BuildError(
            f"the build needs torch and TensorFlow installed (found {versions}): install the "
            "suite first ('.[cpu,dev]' or '.[gpu,dev]')"
        )
    folder = cache_root() / cache_key(versions)
    with locked(folder):
        wheel = cached_wheel(folder, force)
        ensure_build_requirements()  # horovodrun's imports, where the wheel came from the cache
        say(f"installing {wheel.name}")
        pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    errors = load_errors(["torch", "tf"])
    if errors:
        wheel.unlink()  # the next call builds again
        raise BuildError(f"installed, but a binding does not load (wheel removed): {errors}")
    say(f"Horovod {HOROVOD_VERSION} installed (torch and tf bindings); wheel: {wheel}")


def main(argv: list[str] | None = None, prog: str = "python -m launch horovod-build") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="build even with a cached wheel")
    parser.add_argument(
        "--check", action="store_true", help="only say whether a working Horovod is installed"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM ends it as Ctrl-C does: the build folder (about 0.5 GB) is removed on the way out
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    t0 = time.monotonic()
    if args.check:
        bindings = installed_bindings()
        errors = load_errors(sorted(bindings))
        ok = bindings == {"torch", "tf"} and not errors
        say(f"installed bindings: {sorted(bindings) or 'none'}; load errors: {errors or 'none'}")
        return 0 if ok else 1
    try:
        ensure_horovod(force=args.force)
    except (BuildError, OSError) as e:
        print(f"horovod-build: error: {e}", file=sys.stderr, flush=True)
        return 1
    say(f"done in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
