"""What a SLURM request may hold: `SlurmRequest`, each of its values checked before it reaches
submitit or an sbatch script (ConfigError, one line naming the option), and the pass-through
of other sbatch options (`--sbatch-option KEY=VALUE`). Pure: no SLURM, no files.

    req = SlurmRequest(nodes=2, devices=4, qos="high", extra=sbatch_options(["mail-type=END"]))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from denoisebench.core.config import ConfigError

# What an sbatch script may hold: SLURM's own formats, and names of a safe character set.
NAME = re.compile(r"[A-Za-z0-9_.-]+")
NAME_CHARS = "letters, digits, '_', '.' and '-'"
PARTITION = re.compile(r"[A-Za-z0-9_.-]+(?:,[A-Za-z0-9_.-]+)*")
"""A partition, or a comma-separated list of them (SLURM takes the first that can run it)."""
CONSTRAINT = re.compile(r"[A-Za-z0-9_.()\[\]*&|-]+")
"""Node features, with SLURM's operators: a100, a100|h100, [rack1|rack2], (a&b)*2."""
MEM = re.compile(r"\d{1,12}[KMGTkmgt]?", re.ASCII)
MEM_FORMAT = "megabytes, or a number with K, M, G or T (32G); 0 asks for all of a node's memory"
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"
UNLIMITED = ("UNLIMITED", "INFINITE")

SBATCH_KEY = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
"""An sbatch long option's name, without its dashes: mail-type, gpus-per-task."""
SBATCH_VALUE = re.compile(
    r"[A-Za-z0-9_.,:=@%+/\[\]()*|&!?-]+(?: [A-Za-z0-9_.,:=@%+/\[\]()*|&!?-]+)*"
)
SBATCH_VALUE_CHARS = "letters, digits, single spaces and _.,:=@%+/[]()*|&!?-"
OWNED: dict[str, str] = {
    # sbatch options the launcher sets itself: what to use instead, or why they are its own
    "partition": "use --partition",
    "time": "use --time",
    "account": "use --account",
    "qos": "use --qos",
    "constraint": "use --constraint",
    "mem": "use --mem",
    "cpus-per-task": "use --cpus-per-task",
    "nodes": "use --nodes",
    "gpus": "use --gpus (devices per node)",
    "gpus-per-node": "use --gpus",
    "gpus-per-task": "use --gpus (each task picks its own of its node's GPUs)",
    "ntasks": "use --gpus and --nodes (one task per device, or per node)",
    "ntasks-per-node": "use --gpus (one task per device, or per node)",
    "ntasks-per-gpu": "use --gpus (one task per device, or per node)",
    "job-name": "it names its jobs denoisebench-<framework>",
    "output": "it chooses the log files (slurm-logs/)",
    "error": "it chooses the log files (slurm-logs/)",
    "open-mode": "it appends to its logs across requeues",
    "signal": "its requeue before the time limit needs it",
    "requeue": "its requeue before the time limit needs it",
    "no-requeue": "its requeue before the time limit needs it",
    "array": "use --sweep (it submits job arrays)",
    "wrap": "it writes the job's command",
}
MEM_PER = ("mem-per-cpu", "mem-per-gpu")
"""SLURM takes one of --mem, --mem-per-cpu and --mem-per-gpu."""

CHECKED = (
    # (option, SlurmRequest field, its pattern, what the option expects)
    (
        "--partition",
        "partition",
        PARTITION,
        f"a partition (or a comma-separated list) of {NAME_CHARS}",
    ),
    ("--account", "account", NAME, f"an account name of {NAME_CHARS}"),
    ("--qos", "qos", NAME, f"a QOS name of {NAME_CHARS}"),
    (
        "--constraint",
        "constraint",
        CONSTRAINT,
        f"node features (a100, a100|h100, ...) of {NAME_CHARS} and SLURM's operators &|[]()*",
    ),
    ("--mem", "mem", MEM, MEM_FORMAT),
)

SbatchOption = tuple[str, str | None]
"""(name, value) of a passed-through sbatch option; None for a flag (exclusive)."""


@dataclass(frozen=True)
class SlurmRequest:
    """What to ask SLURM for. None: SLURM's default (the default partition, no QOS...)."""

    nodes: int = 1
    devices: int = 1
    """Devices per node: GPUs, or CPU workers when gpus is False."""
    gpus: bool = True
    partition: str | None = None
    time: str = "01:00:00"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    """Node features the job needs (sbatch --constraint): a GPU type, a rack..."""
    mem: str | None = None
    """Memory per node (sbatch --mem): 32G."""
    cpus_per_task: int = 4
    signal_delay_s: int = 120
    """Seconds before the time limit at which the job is told to checkpoint and requeue."""
    extra: tuple[SbatchOption, ...] = ()
    """Other sbatch options, passed through as given (sbatch_options)."""
    engine: str = "native"
    """--engine: native (torchrun, tf.distribute) or horovod (a Horovod worker per device)."""

    def __post_init__(self) -> None:
        """Every value lands in an sbatch script: refuse what SLURM would not take, and any
        character that could end a line or leave its quotes (ConfigError, naming the option)."""
        time_parts(self.time)
        for option, field, pattern, what in CHECKED:
            value = getattr(self, field)
            if value is not None and not pattern.fullmatch(value):
                raise ConfigError(f"{option} {value!r}: expected {what}")
        for option, number in (
            ("--nodes", self.nodes),
            ("--gpus", self.devices),
            ("--cpus-per-task", self.cpus_per_task),
        ):
            if number < 1:
                raise ConfigError(f"{option} {number} must be >= 1")
        check_extra(self.extra, mem=self.mem is not None)


def time_parts(time: str) -> tuple[int, int, int, int] | None:
    """SLURM's --time as (days, hours, minutes, seconds), None for UNLIMITED (or INFINITE);
    ConfigError for any other text. SLURM's formats: minutes, minutes:seconds,
    hours:minutes:seconds, days-hours, days-hours:minutes, days-hours:minutes:seconds."""
    if time.upper() in UNLIMITED:
        return None
    m = re.fullmatch(r"(\d{1,9})-(\d{1,9})(?::(\d{1,9}))?(?::(\d{1,9}))?", time, re.ASCII)
    if m:
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return days, hours, minutes, seconds
    m = re.fullmatch(r"(\d{1,9})(?::(\d{1,9}))?(?::(\d{1,9}))?", time, re.ASCII)
    if not m:
        raise ConfigError(f"--time {time!r}: expected {TIME_FORMATS}")
    parts = [int(g) for g in m.groups() if g is not None]
    if len(parts) == 3:
        return 0, *parts  # hours:minutes:seconds
    return 0, 0, parts[0], parts[1] if len(parts) == 2 else 0  # minutes[:seconds]


def time_minutes(time: str) -> int:
    """SLURM time (TIME_FORMATS) in whole minutes, rounded up: what submitit takes."""
    parts = time_parts(time)
    if parts is None:
        raise ConfigError(
            f"--time {time}: submitit needs a time limit in minutes; give one, or write an "
            "sbatch script with --sbatch-out"
        )
    days, hours, minutes, seconds = parts
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def sbatch_options(texts: list[str]) -> tuple[SbatchOption, ...]:
    """--sbatch-option texts (KEY=VALUE, or KEY alone for a flag; a leading -- is allowed) as
    (key, value) pairs; SlurmRequest checks them."""
    options = []
    for text in texts:
        key, sep, value = text.removeprefix("--").partition("=")
        options.append((key, value if sep else None))
    return tuple(options)


def shown(key: str, value: str | None) -> str:
    """An --sbatch-option as given, quoted so that a newline shows on its one line."""
    return repr(key if value is None else f"{key}={value}")


def check_extra(extra: tuple[SbatchOption, ...], mem: bool) -> None:
    """Refuse (ConfigError, one line) a passed-through sbatch option that is not a long option
    name, that the launcher sets itself, that is given twice, or whose value could leave its
    #SBATCH line; `mem`: --mem is given (SLURM takes one memory option)."""
    seen = set()
    for key, value in extra:
        option = f"--sbatch-option {shown(key, value)}"
        if not SBATCH_KEY.fullmatch(key):
            raise ConfigError(f"{option}: expected an sbatch long option's name, like mail-type")
        if key in OWNED:
            raise ConfigError(f"{option}: the launcher sets --{key}; {OWNED[key]}")
        if key == "gres" and value and "gpu" in value:
            raise ConfigError(
                f"{option}: GPUs are asked for with --gpus; a GPU type with --constraint"
            )
        if key in MEM_PER and mem:
            raise ConfigError(f"{option}: SLURM takes one of --mem, --{key}; drop one")
        if key in seen:
            raise ConfigError(f"{option}: --{key} given twice")
        if value is not None and not SBATCH_VALUE.fullmatch(value):
            raise ConfigError(f"{option}: expected a value of {SBATCH_VALUE_CHARS}")
        seen.add(key)
