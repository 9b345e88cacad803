"""The results folder: layout, record schemas and atomic writes, shared by both trainers.

    results/<run-id>/
        .lock                 held (flock) by the one process that trains the run: take_run_lock
        launch.json           the launch choices that shape the run (LAUNCH_CHOICES), for --resume
        config.json           resolved config (profile < file < overrides)
        data.json             what data was used (source, description, counts)
        split.json            train and test indices into the canonical image order
        test_samples.npz      the first 32 test images: clean, noisy (shared), and their indices
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
            failures/         each process' own exception when it failed (read_failures)
            trace/            the framework profiler's trace (profiler.trace_steps; off by default)
            tensorboard/      TensorBoard events of every epoch (profiler.tensorboard; on by default)

Every JSON file is written to a temporary name and renamed into place, so a reader never sees
half a file. The JSONL records are appended and fsynced at each epoch end; on resume, records
past the last checkpoint are dropped so the finished run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.core.config import Config, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
FRAMEWORKS = ("torch", "tf")

RESULTS_ENV = "DENOISEBENCH_RESULTS"
"""Where results go when --results is not given: clusters keep repositories in a small $HOME
and results on a shared file system (the sbatch scripts read it too)."""


def default_results() -> Path:
    """$DENOISEBENCH_RESULTS when set, else the repository's results/ folder."""
    chosen = os.environ.get(RESULTS_ENV)
    return Path(chosen).expanduser() if chosen else REPO_ROOT / "results"


# One schema for both frameworks. Name -> meaning (units in the name).
STEP_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "epoch": "epoch index, from 0",
    "step": "global optimizer step, from 0",
    "rank": "process that measured the row: torch rank, or TensorFlow worker index",
    "replicas": "devices that process drives (1 for torch; N under MirroredStrategy)",
    "batch_size": "images this process trained on in this step",
    "loss": "mean training loss over this process' images (before the update)",
    "step_time_s": "time from the end of the previous step to the end of this one: CUDA events "
    "(PyTorch on a GPU), else the host clock; the devices are waited for once per epoch, after "
    "its last step, so the steps of an epoch add up to its training time",
    "warmup": "true for a process' first steps, left out of the steady figures: "
    "profiler.warmup_steps of them, and with CUDA graphs every step up to the capture",
    "data_wait_s": "part of step_time_s spent getting the step's batch indices (the images "
    "are already on the device)",
}
EPOCH_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "epoch": "epoch index, from 0",
    "steps": "optimizer steps in the epoch",
    "train_loss": "mean training loss over the epoch's batches",
    "test_loss": "loss on the noisy test split (same loss as training)",
    "test_mae": "mean absolute error of the outputs against the clean test images",
    "test_psnr_db": "mean per-image PSNR of the outputs, dB",
    "test_ssim": "mean per-image SSIM of the outputs",
    "noisy_psnr_db": "mean PSNR of the noisy inputs themselves (the baseline to beat), dB",
    "noisy_ssim": "mean SSIM of the noisy inputs",
    "train_time_s": "wall time of the epoch's training steps",
    "eval_time_s": "wall time of the test evaluation",
    "throughput_img_s": "training images per second over the epoch (warm-up included)",
    "profiler_reason": "why the profiler's figures are missing (profiler off), else null",
    "steady_steps": "steps after the warm-up (the STEP rows' warmup flag) in this epoch",
    "steady_reason": "why the steady-state figures are missing, else null",
    "step_time_p50_s": "median step time after warm-up, all ranks",
    "step_time_p95_s": "95th percentile step time after warm-up, all ranks",
    "data_wait_fraction": "share of step time spent waiting for input, after warm-up",
    "throughput_steady_img_s": "images/s after warm-up: all ranks' images / slowest rank's time",
    "throughput_per_device_img_s": "throughput_steady_img_s / devices",
    "model_flops_per_image": "training FLOPs per image from the spec (3 x forward)",
    "mfu": "model FLOP utilisation: achieved FLOP/s / (peak FLOP/s x devices)",
    "mfu_reason": "why mfu is missing (CPU, or a GPU not in hardware.py), else null",
    "gpu_energy_j": "energy of all GPUs over the epoch's training window",
    "gpu_energy_above_idle_j": "gpu_energy_j less the idle power over the same time",
    "gpu_energy_method": "nvml_energy_counter or power_integration",
    "gpu_energy_reason": "why GPU energy is missing, else null",
    "gpu_energy_per_image_j": "gpu_energy_j / training images of the epoch",
    "energy_window_too_short": "true when the window is shorter than profiler.min_window_s",
    "gpu_power_mean_w": "mean power of all GPUs together over the window",
    "gpu_util_mean_pct": "mean NVML utilisation over the window, averaged over GPUs",
    "gpu_mem_alloc_peak_gib": "framework allocator's peak (torch max_memory_allocated, TF peak)",
    "gpu_mem_reserved_peak_gib": "PyTorch's peak reserved memory (its caching allocator)",
    "gpu_mem_used_peak_gib": "NVML's peak device memory used (all processes on the GPU)",
    "host_rss_peak_gib": "peak resident memory of a training process and its children",
    "cpu_util_mean_pct": "process CPU time / (window x cores), mean over processes",
    "cpu_energy_j": "CPU package energy from RAPL over the window",
    "cpu_energy_reason": "why cpu_energy_j is missing, else null",
}
SUMMARY_FIELDS: dict[str, str] = {
    "framework": "torch or tf",
    "status": "running, completed, failed, interrupted (stopped by a signal; resumable), "
    "diverged (stopped after the epoch in which a training loss was not finite) or skipped "
    "(not started: its package is not installed on this machine)",
    "error": "the exception, when status is failed ('killed by SIGKILL: ...' for a process "
    "that a signal killed); where the loss stopped being finite, when status is diverged; "
    "why, when status is skipped",
    "diverged_at": "the first training loss that was not finite, when status is diverged: "
    "{epoch, step, rank} as in steps.jsonl (from 0), and the loss as text (nan, inf, -inf)",
    "failed_process": "which process failed first (its own exception is `error`), when a "
    "distributed job failed",
    "knock_on_errors": "the other processes' errors after the first failure (a broken "
    "collective, most often), as {process, error}",
    "signal": "the stop signal (SIGINT, SIGTERM, SIGHUP), when status is interrupted",
    "resume_command": "the command that continues the run, when status is interrupted",
    "history": "earlier attempts that failed, were interrupted or diverged, oldest first: their "
    "status, error, failed_process, signal, epochs_completed and updated, and diverged_at for "
    "one that diverged (cleared from the top level when the run is resumed)",
    "epochs_completed": "finished epochs",
    "epochs": "epochs asked for",
    "final": "the last EPOCH record",
    "wall_time_s": "training and evaluation time of all epochs, resumed parts summed",
    "throughput_img_s": "training images per second over all epochs",
    "device": "what the model ran on",
    "parameters": "trainable parameters",
    "data": "data description (never calls other images EuroSAT)",
    "world_size": "devices (replicas) training together",
    "processes": "processes (torch ranks, TensorFlow workers)",
    "global_batch": "images per optimizer step over all devices",
    "lr": "learning rate used (train.lr, times world_size when train.scale_lr)",
    "strategy": "how the devices were used: single, ddp, mirrored, multi_worker_mirrored, horovod",
    "engine": "what ran the devices: native (torchrun, tf.distribute) or horovod (horovodrun)",
    "step_clock": "what a step's time is: cuda_events (device time between CUDA events), "
    "host (host clock, the step finished on return) or host_dispatch (host clock while the "
    "device still works: TensorFlow on a GPU waits once an epoch, so single steps are not "
    "device times)",
    "runtime": "speed settings in effect (mode, precision, TF32, cuDNN autotune, XLA, compile, "
    "channels_last, CUDA graphs, threads)",
    "throughput_steady_img_s": "median over epochs of the steady-state throughput",
    "throughput_steady_min_img_s": "slowest epoch's steady-state throughput",
    "throughput_steady_max_img_s": "fastest epoch's steady-state throughput",
    "gpu_energy_j": "GPU energy of all epochs' training windows",
    "gpu_energy_per_image_j": "gpu_energy_j / training images",
    "gpu_energy_per_epoch_j": "gpu_energy_j / epochs",
    "gpu_energy_method": "how the GPU energy was measured",
    "gpu_mem_alloc_peak_gib": "framework allocator's peak over the run",
    "host_rss_peak_gib": "peak resident memory over the run",
    "conditions": "what else the machine did while the run trained (measure.conditions): other "
    "processes' share of the run's cores, steal, load per core; on GPUs clock ratio, throttle "
    "reasons, other processes, XID and ECC events; null figures with their reasons",
    "disturbed": "whether the conditions crossed a threshold (docs/measurements.md): the "
    "report then names no speed or energy winner from this run",
    "disturbed_reasons": "one sentence per crossed threshold, with the measured value",
    "tensorboard_skipped": "why no TensorBoard events were written though "
    "profiler.tensorboard is on (the tensorboard package is not installed); null otherwise",
}


@dataclass(frozen=True)
class StepRow:
    """One STEP record, typed (fields and order of STEP_FIELDS, which says what each means):
    what one process measured of one optimizer step. `dataclasses.asdict` gives the row as it is
    written to steps.jsonl."""

    framework: str
    epoch: int
    step: int
    rank: int
    replicas: int
    batch_size: int
    loss: float
    step_time_s: float
    warmup: bool
    data_wait_s: float


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


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""OSError numbers of a full disk (or quota)."""
NEARLY_FULL_BYTES = 2**20


def free_bytes(path: Path) -> int:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full(e: BaseException, path: Path) -> OSError | None:
    """`e` as an out-of-space OSError naming `path`, else None. Libraries report a full disk in
    their own way (torch.save: RuntimeError "file write failed"; TensorFlow: an OpError): those
    count when the disk at `path` has less than 1 MiB left. Call it before removing what the
    failed write left, which frees the space again."""
    if isinstance(e, OSError):
        if e.errno not in DISK_FULL:
            return None
    elif free_bytes(path) >= NEARLY_FULL_BYTES:
        return None
    number = e.errno if isinstance(e, OSError) and e.errno else errno.ENOSPC
    return OSError(number, os.strerror(number), str(path))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def disk_full_report(e: OSError, fw_dir: Path) -> str:
    """One line for a run stopped by a full disk: the file, the free space, what was kept (the
    epochs the last checkpoint holds, which a resume continues from)."""
    fw_dir = Path(fw_dir)
    try:
        done = int(read_json(fw_dir / "summary.json").get("epochs_completed") or 0)
    except (OSError, ValueError):
        done = 0
    kept = (
        f"{done} finished epoch(s) and their checkpoint in {fw_dir}; --resume continues there "
        "once the disk has room"
        if done
        else f"no finished epoch in {fw_dir}"
    )
    return (
        f"no space left on the device writing {e.filename or fw_dir} "
        f"({_size(free_bytes(fw_dir))} free); kept: {kept}"
    )


def space_needed(cfg: Config, frameworks: int, devices: int) -> int:
    """Bytes a run needs to write its first epoch: each framework's checkpoint twice (the new
    one is written beside the old), its weights, records and sample outputs, and the shared
    test samples and split. An estimate with a 50% margin, for the start-up check."""
    params = cfg.model.num_parameters()
    image = cfg.model.image_size**2 * cfg.model.in_channels * 4  # float32
    checkpoint = params * 4 * 3 + 2**16  # weights and Adam's two moments, plus the container
    steps = max(1, cfg.data.n_train // (cfg.train.batch_size * devices))
    records = steps * devices * 400 + 2**16  # a STEP row is about 300 bytes of JSON
    per_framework = 2 * checkpoint + params * 4 + records + 32 * image
    shared = 3 * 32 * image + (cfg.data.n_train + cfg.data.n_test) * 8
    return int(1.5 * (frameworks * per_framework + shared))


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start a run on a disk that cannot hold its first epoch (space_needed)."""
    free = free_bytes(folder)
    if free < needed:
        raise ConfigError(
            f"{folder}: {_size(free)} free, and the run needs about {_size(needed)} for its "
            "first epoch's records and checkpoints; free some space, choose another --results, "
            "or pass --no-space-check"
        )


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


LOCK_FILE = ".lock"
"""<run>/.lock: flock()ed by the one process that owns the run folder (take_run_lock); its text
names that process (host, PID, since when) for the refusal a second one gets."""


NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
"""flock()'s errors on a file system without locks (NFS without lockd, Lustre -o noflock)."""


class RunLocked(ConfigError):
    """Another process owns the run folder: a one-line refusal naming it (take_run_lock)."""


class RunLock:
    """A held run folder lock (take_run_lock): released by release(), on leaving a `with`, when
    the object is dropped, and by the kernel when the holder dies, however it dies."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def read_lock_holder(run_dir: Path) -> dict[str, Any]:
    """What the run folder's lock file says of its holder ({} when it says nothing readable);
    whether it still holds the lock, only the flock knows."""
    try:
        holder = json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """'PID 123 on node7 since 2025-01-01T10:00:00Z (SLURM job 42)', or what is known of it."""
    if not holder.get("pid"):
        return "another process (not yet named in its lock file)"
    text = f"PID {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"
    return text + (f" ({holder['owner']})" if holder.get("owner") else "")


def take_run_lock(run_dir: Path, owner: str | None = None) -> RunLock:
    """Own `run_dir`: an exclusive flock on <run_dir>/.lock, taken without waiting, then the
    holder (host, PID, since when, `owner`) written into the file. RunLocked, naming the
    holder, when another process has it.

    The lock is tied to this process' one open file description: the kernel releases it when
    the process dies (a crashed owner never blocks a resume), and the descriptor is not
    inherited (O_CLOEXEC, and subprocess closes the others), so trainer processes that outlive
    a killed launcher do not keep the folder locked. A process forked without exec would share
    it: the trainers are started with exec (subprocess). On NFS, Linux emulates flock with
    POSIX byte-range locks, which the server arbitrates between nodes; on a file system with no
    locks at all (NO_LOCKS) the run goes on unlocked, with a warning."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise ConfigError(f"{path}: cannot open the run's lock file: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in NO_LOCKS:  # refusing every run there would be worse than no lock
            print(
                f"warning: {path}: this file system has no locks ({e.strerror}); nothing stops "
                "a second process from training this run at the same time",
                file=sys.stderr,
                flush=True,
            )
            return RunLock(path, fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"{path}: cannot lock the run folder: {e.strerror}") from None
        raise RunLocked(
            f"{run_dir} is in use by {describe_holder(read_lock_holder(run_dir))}: one process "
            "trains a run folder at a time; wait for it to end, or stop it, then --resume"
        ) from None
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()}
    with contextlib.suppress(OSError):  # a full disk: the lock holds, its holder unnamed
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({**holder, "owner": owner}) + "\n").encode(), 0)
    return RunLock(path, fd)


class RunRecorder:
    """Writes one framework's records into results/<run-id>/<framework>/."""

    def __init__(self, run_dir: Path, framework: str) -> None:
        self.dir = Path(run_dir) / framework
        self.framework = framework
        self.checkpoint_dir = self.dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def write_environment(self, env: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "environment.json", env)

    def truncate_after(self, epochs_done: int) -> None:
        """Drop records of epochs that no checkpoint covers (an interrupted epoch)."""
        for name in ("steps.jsonl", "devices.jsonl", "hosts.jsonl", "epochs.jsonl"):
            kept = [r for r in read_jsonl(self.dir / name) if r["epoch"] < epochs_done]
            atomic_write_text(self.dir / name, "".join(json_record(r) + "\n" for r in kept))

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
                _archive_attempt(current)
            current.update(dict.fromkeys(FAILURE_FIELDS))
            if fields["status"] == "completed":
                current.setdefault("history", [])
        current.update(fields, framework=self.framework, updated=utc_now())
        atomic_write_json(path, current)


def _archive_attempt(summary: dict[str, Any]) -> None:
    """Append the attempt `summary` describes to its `history` list (in place)."""
    keys = ("status", "error", "failed_process", "signal", "epochs_completed", "updated")
    attempt = {k: summary.get(k) for k in keys}
    if summary.get("diverged_at"):
        attempt["diverged_at"] = summary["diverged_at"]
    summary["history"] = [*summary.get("history", []), attempt]


FAILURES_DIR = "failures"
"""<framework>/failures/: one JSON file per process that ended on an exception in this attempt
(write_failure), or for the first process to end when a signal killed it (written by what
supervised it: the launcher, or the torchrun and horovodrun wrappers), so the launcher can
tell the first failure from its knock-on errors."""


def write_failure(fw_dir: Path, process: str, error: str, killed_by: str | None = None) -> None:
    """A process' own failure: its name ("torch rank 1", "tf worker 0", "tf"), the exception,
    and when it happened. `killed_by`: the signal's name, for the first process to end when
    a signal killed it (then `error` is killed_error's). Best effort: a full disk must not hide
    the exception itself."""
    with contextlib.suppress(OSError):
        atomic_write_json(
            Path(fw_dir) / FAILURES_DIR / f"{process.replace(' ', '-')}.json",
            {"process": process, "error": error, "time": time.time(), "killed_by": killed_by},
        )


def killed_unhandled(signal_name: str) -> bool:
    """Whether a process that died by this signal failed: the trainers handle STOP_SIGNALS
    themselves (they record 'interrupted'), and torchrun stops the other ranks with SIGTERM."""
    return signal_name not in {s.name for s in STOP_SIGNALS}


def killed_error(signal_name: str) -> str:
    """The `error` recorded for a process that died by a signal it did not handle."""
    if signal_name == "SIGKILL":
        return (
            "killed by SIGKILL: most often the kernel's out-of-memory killer (see dmesg) or the "
            "batch system's memory limit"
        )
    return f"killed by {signal_name}"


def write_killed(fw_dir: Path, process: str, signal_name: str) -> None:
    """The failure record of the first process to end, written by what supervised it, when a
    signal it does not handle killed it (killed_unhandled); a stop signal it records itself."""
    if killed_unhandled(signal_name):
        write_failure(fw_dir, process, killed_error(signal_name), killed_by=signal_name)


def read_failures(fw_dir: Path) -> list[dict[str, Any]]:
    """This attempt's process failures, the cause first: the killed process (recorded only when
    it was the first to end), else the earliest exception; the others are knock-on errors (a
    broken collective on the peers, most often). A killed process' record is written after its
    death was noticed, later than the errors its death caused, so time alone would misplace it.
    """
    rows = []
    for path in sorted((Path(fw_dir) / FAILURES_DIR).glob("*.json")):
        try:
            rows.append(read_json(path))
        except (OSError, ValueError):
            continue  # half-written by a process killed while writing it
    return sorted(rows, key=lambda r: (r.get("killed_by") is None, r.get("time", 0.0)))


def clear_failures(fw_dir: Path) -> None:
    """Forget an earlier attempt's process failures (before the processes of a new one start)."""
    shutil.rmtree(Path(fw_dir) / FAILURES_DIR, ignore_errors=True)


def mark_failed(
    run_dir: Path,
    framework: str,
    error: str,
    failures: list[dict[str, Any]] | None = None,
    interrupted_now: bool = False,
) -> None:
    """Record a failure the trainer could not record itself (it was killed, or never started),
    or correct the one it recorded.

    `failures` (read_failures) are the processes' own exceptions of this attempt: the earliest
    gives `failed_process` and `error`, the rest go into `knock_on_errors`. Without them, a
    summary that already holds the trainer's own error keeps it and `failed_process` is the
    launcher's `error` (which process exited first, with its code). `interrupted_now`: the
    summary's 'interrupted' is this attempt's (torchrun stops the other ranks with SIGTERM
    after one fails), so it is replaced, not kept in `history`.
    """
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") == "interrupted":
        if not interrupted_now:  # an earlier attempt's; this one failed
            _archive_attempt(current)
        current.update(dict.fromkeys(FAILURE_FIELDS))
        current["status"] = "failed"
    if failures:
        first, *others = failures
        current.update(
            status="failed",
            error=first["error"],
            failed_process=first["process"],
            knock_on_errors=[{"process": f["process"], "error": f["error"]} for f in others],
        )
    else:
        if current.get("status") != "failed" or not current.get("error"):
            current.update(status="failed", error=error)
        current["failed_process"] = error
    current.update(framework=framework, updated=utc_now())
    atomic_write_json(path, current)


def mark_skipped(run_dir: Path, framework: str, reason: str) -> None:
    """Record a framework the launcher did not start, and why (its package is missing here):
    status 'skipped', the reason in `error`. A summary of a run it trained is left as it is."""
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") not in (None, "skipped"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"framework": framework, "status": "skipped", "error": reason,
                             "epochs_completed": 0, "updated": utc_now()})  # fmt: skip


def mark_interrupted(run_dir: Path, framework: str, signal_name: str, resume: str) -> None:
    """Record that a framework's run was stopped by a stop signal: status 'interrupted', the
    signal, the epochs finished (`epochs_completed`, 0 when none was) and `resume_command`.

    The trainer records this itself when it can (trainer.session.record_failure); the launcher
    writes it again with the signal it received, which is the user's, not the one it forwarded.
    """
    path = Path(run_dir) / framework / "summary.json"
    current = read_json(path) if path.exists() else {}
    if current.get("status") == "failed":  # an earlier attempt's; this one was interrupted
        _archive_attempt(current)
    current.update(
        status="interrupted",
        error=None,
        failed_process=None,
        signal=signal_name,
        epochs_completed=current.get("epochs_completed", 0),
        resume_command=resume,
        framework=framework,
        updated=utc_now(),
    )
    atomic_write_json(path, current)


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


def resume_command(run_dir: Path, launcher: str | None = None) -> str:
    """The command that continues the run in `run_dir` (or the run a repeat folder is in);
    `launcher`: the command the user started the launcher with (None: `python -m launch`)."""
    folder = shlex.quote(str(run_root(run_dir).absolute()))
    return f"{launcher or 'python -m launch'} --resume {folder}"


def launch_option(key: str) -> str:
    """The launcher option of a LAUNCH_CHOICES key: tf_strategy -> --tf-strategy."""
    return "--" + key.replace("_", "-")


def write_launch_choices(run_dir: Path, choices: dict[str, Any]) -> None:
    """launch.json: the LAUNCH_CHOICES values of `choices` (the launcher's parsed options)."""
    atomic_write_json(Path(run_dir) / LAUNCH_FILE, {k: choices[k] for k in LAUNCH_CHOICES})


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
