"""The results folder: layout and atomic writes, shared by both trainers (the schemas of its
records: core.schema; the run lock: core.runlock; failure records: core.failures; a full disk:
core.diskspace).

    results/<run-id>/
        launch.json           the launch choices that shape the run (LAUNCH_CHOICES), for --resume
        config.json           resolved config (profile < file < overrides)
        data.json             what data was used (source, description, counts)
        split.json            train and test indices into the canonical image order
        test_samples.npz      the first 32 test images: clean, noisy (shared), and their indices
        .<framework>.lock     held (flock) by the one process that trains it (core.runlock)
        <framework>/          one per framework run: torch/ or tf/
            environment.json  library versions, CPU/GPU model, driver, git commit
            steps.jsonl       one STEP record per optimizer step and rank
            devices.jsonl     one row per GPU per epoch: energy, power, memory, utilisation
            hosts.jsonl       one row per process per epoch: RSS, CPU use, CPU energy
            gpu_samples.rank<r>.jsonl  every NVML sample, appended as taken (GPU runs)
            epochs.jsonl      one EPOCH record per finished epoch
            conditions.jsonl  one sample a second of what else the machine did (rank 0)
            summary.json      status and final figures (SUMMARY)
            weights.npz       final weights in the canonical (PyTorch) layout, either framework
            test_outputs.npz  the final model's outputs for test_samples.npz
            checkpoints/      the last finished epoch, to --resume from
            failures/         each process' own exception when it failed (core.failures)
            trace/            the framework profiler's trace (profiler.trace_steps; off by default)
            tensorboard/      TensorBoard events of every epoch (profiler.tensorboard; on by default)

Every JSON file is written to a temporary name and renamed into place, so a reader never sees
half a file. The JSONL records are appended and fsynced at each epoch end; on resume, records
past the last checkpoint are dropped so the finished run equals an uninterrupted one (and
a start that drops an epoch's records says so: trainer.session).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shlex
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.core.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
FRAMEWORKS = ("torch", "tf")

RESULTS_ENV = "DENOISEBENCH_RESULTS"
"""Where results go when --results is not given: clusters keep repositories in a small $HOME
and results on a shared file system (the sbatch scripts read it too)."""


def default_results() -> Path:
    """$DENOISEBENCH_RESULTS when set, else the repository's results/ folder."""
    chosen = os.environ.get(RESULTS_ENV)
    return Path(chosen).expanduser() if chosen else REPO_ROOT / "results"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run as 'interrupted' (resumable) rather than 'failed': Ctrl-C, SIGTERM
from the launcher, torchrun or SLURM, a closed terminal."""


class Interrupted(SystemExit):
    """A stop signal arrived (STOP_SIGNALS). A SystemExit with the shell's code 128 + signal
    number, so an entry point that lets it through ends quietly, without a traceback."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(128 + signum)


LAUNCH_FILE = "launch.json"
LAUNCH_CHOICES: dict[str, str] = {
    "profile": "--profile the config was resolved from",
    "mode": "--mode laid over it (null: none)",
    "framework": "--framework: torch, tf or both",
    "gpus": "--gpus: devices per node (null: one device, not distributed)",
    "nodes": "--nodes (null: SLURM's, else 1)",
    "engine": "--engine",
    "tf_strategy": "--tf-strategy: mirrored or multiworker",
    "cpu_workers": "--cpu-workers: the devices are CPU workers (SLURM)",
    "repeats": "--repeats",
}
"""launch.json: the launcher's options that shape a run beyond its config; --resume replays
them, and refuses a different value given with it."""
LAUNCH_DEFAULTS: dict[str, str] = {
    "report": "--report / --no-report as given (null: neither, the default)",
}
"""launch.json's options that do not shape the run: --resume replays them unless given anew."""

# Top-level summary fields of an attempt that ended early; moved into `history` when the run is
# resumed, so a completed run never shows an earlier attempt's error.
FAILURE_FIELDS = (
    "error",
    "failed_process",
    "knock_on_errors",
    "signal",
    "resume_command",
    "diverged_at",
)
ENDED_EARLY = ("failed", "interrupted", "diverged")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, unique temporary file beside `path`, open for writing. Created with mode 0o666 as
    open() creates files, so the umask (or a default ACL) decides who may read it, as for the
    files np.savez and the frameworks write (tempfile.mkstemp would make every record 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_npz(path: Path, *arrays: Any, **named: Any) -> None:
    """np.savez to a temporary name, then renamed into place (the temporary file removed if
    the write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    try:
        np.savez(tmp, *arrays, **named)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


NON_FINITE = "non_finite"
"""The field that says why a record's value is null: {field: "nan" | "inf" | "-inf"}."""


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (nan, inf, -inf) as null, so that records are strict
    JSON (NaN and Infinity are not JSON, and many readers refuse them). A dict that held one
    says why in NON_FINITE, {field: "nan"}: null with its reason, as for a figure not measured.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {k: finite_json(v) for k, v in obj.items()}
        why = {k: str(v) for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)}
        if why:
            out[NON_FINITE] = {**(obj.get(NON_FINITE) or {}), **why}
        return out
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def json_record(obj: Any, **kwargs: Any) -> str:
    """`obj` as strict JSON text (finite_json; json.dumps `kwargs`): what every writer here uses."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_record(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FrameworkRecords:
    """One framework's records in a run folder (the layout above), read as the trainers wrote
    them: the one reader the report, the console table, the benchmarks and the launcher share.
    The summary is read once; the other files when asked for."""

    def __init__(self, folder: Path, summary: dict[str, Any]) -> None:
        self.folder = Path(folder)
        """results/<run-id>/<framework>."""
        self.framework = self.folder.name
        self.summary = summary

    @classmethod
    def read(cls, run_dir: Path, framework: str) -> FrameworkRecords | None:
        """The records of `framework` in run_dir; None when it has no summary.json."""
        folder = Path(run_dir) / framework
        path = folder / "summary.json"
        return cls(folder, read_json(path)) if path.is_file() else None

    def epochs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "epochs.jsonl")

    def steps(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "steps.jsonl")

    def devices(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "devices.jsonl")

    def hosts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "hosts.jsonl")

    def environment(self) -> dict[str, Any]:
        """environment.json; {} when the run has not written it."""
        path = self.folder / "environment.json"
        return read_json(path) if path.is_file() else {}

    def final(self, epochs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The last EPOCH record of the run: the summary's `final` when it completed, else the
        last epoch it finished and checkpointed (`epochs_completed`; a record past it belongs
        to an epoch cut short), else {}. `epochs`: the EPOCH records, when already read."""
        if self.summary.get("final"):
            return self.summary["final"]
        done = self.summary.get("epochs_completed") or 0
        kept = [e for e in (self.epochs() if epochs is None else epochs) if e["epoch"] < done]
        return kept[-1] if kept else {}


def read_summary(run_dir: Path, framework: str) -> dict[str, Any] | None:
    """A framework's summary.json, for a caller that must go on without one: None when there is
    none yet or it cannot be read (being replaced, or damaged)."""
    try:
        return read_json(Path(run_dir) / framework / "summary.json")
    except (OSError, ValueError):
        return None


def new_run_id(profile: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{Path(profile).stem}"


RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
RUN_ID_RULE = (
    "one folder name of letters, digits, '.', '_' and '-', not starting with '.' or '-', "
    "at most 100 characters"
)


def check_run_id(run_id: str) -> None:
    """Refuse a --run-id that is not one safe folder name (RUN_ID): an absolute path or '..'
    would put the run outside --results, 'a/b' nests it, a long one fails deep in a write."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--run-id {run_id!r}: a run id is {RUN_ID_RULE}")


class RunRecorder:
    """Writes one framework's records into results/<run-id>/<framework>/."""

    def __init__(self, run_dir: Path, framework: str) -> None:
        self.dir = Path(run_dir) / framework
        self.framework = framework
        self.checkpoint_dir = self.dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def write_environment(self, env: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "environment.json", env)

    def truncate_after(self, epochs_done: int) -> int:
        """Drop records of epochs that no checkpoint covers (an interrupted epoch). Returns how
        many EPOCH records were dropped (an epoch cut short has STEP rows but no EPOCH record)."""
        dropped = 0
        for name in ("steps.jsonl", "devices.jsonl", "hosts.jsonl", "epochs.jsonl"):
            rows = read_jsonl(self.dir / name)
            kept = [r for r in rows if r["epoch"] < epochs_done]
            atomic_write_text(self.dir / name, "".join(json_record(r) + "\n" for r in kept))
            if name == "epochs.jsonl":
                dropped = len(rows) - len(kept)
        return dropped

    def epoch(
        self,
        record: dict[str, Any] | None,
        steps: list[dict[str, Any]],
        devices: list[dict[str, Any]] | None = None,
        hosts: list[dict[str, Any]] | None = None,
    ) -> None:
        """Append an epoch's STEP rows (every rank's), its per-GPU and per-process profiler
        rows, and its EPOCH record (last, so a record never exists without its rows), durably.
        `record` None: the rows alone (an epoch that diverged, not evaluated)."""
        epoch = record["epoch"] if record else steps[0]["epoch"]
        tables = (
            ("steps.jsonl", steps),
            ("devices.jsonl", [{"epoch": epoch, **d} for d in devices or []]),
            ("hosts.jsonl", [{"epoch": epoch, **h} for h in hosts or []]),
            ("epochs.jsonl", [record] if record else []),
        )
        sizes = {name: _file_size(self.dir / name) for name, _ in tables}
        try:
            for name, rows in tables:
                with open(self.dir / name, "a") as f:
                    f.writelines(json_record(r) + "\n" for r in rows)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError:
            # a full disk cut a line short: back to the epochs before, whole lines only
            for name, size in sizes.items():
                with contextlib.suppress(OSError):
                    os.truncate(self.dir / name, size)
            raise

    def write_weights(self, weights: list[Any]) -> None:
        """weights.npz: canonical-layout arrays arr_0, arr_1, ... = W0, b0, W1, b1, ..."""
        atomic_write_npz(self.dir / "weights.npz", *weights)

    def write_outputs(self, outputs: np.ndarray) -> None:
        """test_outputs.npz: the model's outputs for the run's test_samples.npz (NHWC)."""
        atomic_write_npz(self.dir / "test_outputs.npz", outputs=outputs.astype(np.float32))

    def epochs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dir / "epochs.jsonl")

    def summary(self, **fields: Any) -> None:
        """Update summary.json with `fields`. A trainer that starts again ('running') or
        completes over an attempt that failed or was interrupted moves that attempt into
        `history` and clears its FAILURE_FIELDS; a completed summary always has them (null)."""
        path = self.dir / "summary.json"
        current = read_json(path) if path.exists() else {}
        if fields.get("status") in ("running", "completed"):
            if current.get("status") in ENDED_EARLY:
                archive_attempt(current)
            current.update(dict.fromkeys(FAILURE_FIELDS))
            if fields["status"] == "completed":
                current.setdefault("history", [])
        current.update(fields, framework=self.framework, updated=utc_now())
        atomic_write_json(path, current)


def archive_attempt(summary: dict[str, Any]) -> None:
    """Append the attempt `summary` describes to its `history` list (in place)."""
    keys = ("status", "error", "failed_process", "signal", "epochs_completed", "updated")
    attempt = {k: summary.get(k) for k in keys}
    if summary.get("diverged_at"):
        attempt["diverged_at"] = summary["diverged_at"]
    summary["history"] = [*summary.get("history", []), attempt]


def run_root(folder: Path) -> Path:
    """The run folder that `python -m launch --resume` takes: `folder` itself, or the run
    folder around it when it is one of the run's repeat-<k>/ folders."""
    folder = Path(folder)
    if re.fullmatch(r"repeat-\d+", folder.name) and (folder.parent / "config.json").is_file():
        return folder.parent
    return folder


LAUNCHER_ENV = "DENOISEBENCH_LAUNCHER"
"""How the user started the launcher (`denoisebench`, or `python -m launch`): the launcher
sets it in its trainers' environment, so that their resume hints name the same command."""

RUN_ENV = "DENOISEBENCH_RUN"
"""The absolute run folder a process works for, in its environment: how the run conditions
sampler of any node tells the run's own processes from other load (measure.conditions_cpu).
Each trainer sets it at start-up for the processes it starts; a launcher that sets it in its
trainers' environment marks them as well (they are also known by their command line)."""


def resume_command(run_dir: Path, launcher: str | None = None) -> str:
    """The command that continues the run in `run_dir` (or the run a repeat folder is in);
    `launcher`: the command the user started the launcher with (None: `python -m launch`)."""
    folder = shlex.quote(str(run_root(run_dir).absolute()))
    return f"{launcher or 'python -m launch'} --resume {folder}"


def launch_option(key: str) -> str:
    """The launcher option of a LAUNCH_CHOICES key: tf_strategy -> --tf-strategy."""
    return "--" + key.replace("_", "-")


def write_launch_choices(run_dir: Path, choices: dict[str, Any]) -> None:
    """launch.json: the LAUNCH_CHOICES and LAUNCH_DEFAULTS values of `choices` (the launcher's
    parsed options)."""
    kept = {**LAUNCH_CHOICES, **LAUNCH_DEFAULTS}
    atomic_write_json(Path(run_dir) / LAUNCH_FILE, {k: choices.get(k) for k in kept})


def read_launch_choices(run_dir: Path) -> dict[str, Any] | None:
    """The run's launch.json, None for a run made before launch choices were saved."""
    path = Path(run_dir) / LAUNCH_FILE
    return read_json(path) if path.is_file() else None


def launch_conflicts(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The given launch choices that differ from the run's saved ones, each as
    '--option VALUE (the run's: SAVED)'; a choice the run did not save is not compared."""

    def shown(value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return "none" if value is None else str(value)

    return [
        f"{launch_option(k)} {shown(v)} (the run's: {shown(saved[k])})"
        for k, v in given.items()
        if k in saved and v != saved[k]
    ]
