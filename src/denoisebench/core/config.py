"""Run configuration: profile TOML -> frozen dataclasses -> `--set section.key=value` overrides.

Precedence, lowest to highest: the dataclass defaults below, the profile file
(profiles/<name>.toml), then command-line overrides. Everything is validated here, in one
place, and the resolved config is written next to the results. Trainers read only a `Config`;
they hold no defaults of their own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from denoisebench.core.bounds import BOUNDS, Bound, memory_bound, threads_bound
from denoisebench.core.spec import ModelSpec

PROFILES_DIR = Path(__file__).resolve().parents[3] / "profiles"

DataSource = Literal["builtin", "synthetic", "eurosat", "tfds"]
NoiseKind = Literal["gaussian", "salt_and_pepper", "poisson", "speckle"]
LossName = Literal["mae", "mse", "ssim"]
Precision = Literal["float32", "bfloat16", "float16", "float64"]


class ConfigError(ValueError):
    """A profile or override names an unknown key or holds a bad value."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split."""

    source: DataSource = "builtin"
    """builtin (scikit-image photographs cut into patches, offline), synthetic (random images),
    eurosat (EuroSAT.zip or its extracted folder at `path`), tfds (tensorflow-datasets eurosat/rgb)."""
    path: str = ""
    """EuroSAT.zip or extracted folder (source=eurosat), or the TFDS data dir (source=tfds)."""
    download: bool = False
    """source=tfds only: allow tensorflow-datasets to download EuroSAT (needs internet)."""
    manual_dir: str = ""
    """source=tfds only: folder holding EuroSAT.zip, to build the dataset offline."""
    strict: bool = False
    """source=eurosat: refuse files whose content is not RGB JPEG (EuroSAT's format) instead of
    warning about them (`--strict-data`)."""
    limit: int = 0
    """Use only the first `limit` images of the canonical order (0 = all)."""
    n_train: int = 25_000
    """Training images at full EuroSAT size (27,000); scaled proportionally for other sizes."""
    n_test: int = 2_000
    """Test images at full EuroSAT size; scaled proportionally for other sizes."""
    split_seed: int = 0
    """Seed of the train/test permutation (the same indices for both frameworks)."""
    synthetic_images: int = 1024
    """source=synthetic: how many random images to generate."""


@dataclass(frozen=True)
class NoiseConfig:
    """Corruption applied to clean images in [0, 1]; the result is clipped to [0, 1]."""

    kind: NoiseKind = "gaussian"
    """gaussian (additive N(0, sigma)), salt_and_pepper, poisson (shot noise), speckle (x + x*N(0, sigma))."""
    sigma: float = 0.2
    """Standard deviation for gaussian and speckle noise (the paper: 0.2)."""
    amount: float = 0.05
    """salt_and_pepper: fraction of pixels replaced (half by 0, half by 1)."""
    peak: float = 30.0
    """poisson: photon count of a pixel of value 1 (lower = noisier)."""
    test_seed: int = 1234
    """Seed of the test set's noise, generated once and identical for both frameworks."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping; the same values reach both trainers."""

    epochs: int = 5
    """Passes over the training split."""
    batch_size: int = 64
    """Images per device per optimizer step; the global batch is batch_size x devices."""
    scale_lr: bool = False
    """Multiply lr by the number of devices (the linear scaling rule for a larger global batch)."""
    loss: LossName = "mae"
    """mae (the paper), mse, or ssim (1 - SSIM, 11x11 Gaussian window)."""
    lr: float = 1e-3
    """Adam learning rate."""
    beta1: float = 0.9
    """Adam beta_1."""
    beta2: float = 0.999
    """Adam beta_2."""
    eps: float = 1e-7
    """Adam epsilon (PyTorch's default is 1e-8, Keras' 1e-7: set here for both)."""
    init: Literal["native", "shared"] = "native"
    """native: each framework's own initialisers; shared: one seeded set of weights in both."""
    seed: int = 0
    """Seed of initialisation, shuffling and training noise."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto uses a GPU when the framework sees one."""
    eval_batch_size: int = 256
    """Images per forward pass when evaluating the test split."""
    deterministic: bool = False
    """Ask both frameworks for deterministic kernels (slower on GPUs; tests use it)."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings that change speed, pinned explicitly and applied the same way in both frameworks
    (their defaults differ: TensorFlow enables TF32 and cuDNN autotuning, PyTorch does not)."""

    tf32: bool = False
    """TF32 tensor cores for float32 matmuls and convolutions (Ampere and newer GPUs)."""
    cudnn_autotune: bool = True
    """Benchmark cuDNN convolution algorithms (torch cudnn.benchmark, TF_CUDNN_USE_AUTOTUNE)."""
    xla: bool = False
    """TensorFlow: compile the training step with XLA (jit_compile)."""
    torch_compile: bool = False
    """PyTorch: torch.compile the model."""
    precision: Precision = "float32"
    """Compute precision of the training step: float32, or bfloat16 / float16 mixed precision
    (PyTorch autocast; Keras `mixed_<precision>` policy; weights and optimizer state stay
    float32; float16 adds dynamic loss scaling), or float64 for exact comparisons: weights,
    Adam's state, images, noise and the loss all in float64 (the equivalence tests' mode, on
    CPUs: there, float32 rounding that Adam amplifies differs between CPU models)."""
    channels_last: bool = False
    """PyTorch: NHWC memory layout for the model and its input (TensorFlow is NHWC already)."""
    cuda_graphs: bool = False
    """PyTorch on CUDA devices: capture the whole training step (forward, backward with DDP's
    all-reduces, Adam) in a CUDA graph and replay it each step."""
    intra_op_threads: int = 0
    """Threads inside one op (0: the framework's default); the value used is recorded."""
    inter_op_threads: int = 0
    """Ops run in parallel (0: the framework's default); the value used is recorded."""
    collective_timeout_s: float = 300.0
    """Seconds a process waits for its peers (torch's process group: its set-up and every gloo
    or NCCL collective; TensorFlow's MultiWorkerMirroredStrategy collectives) before the job
    fails with a timeout: a dead or stuck peer ends the job in minutes, not gloo's 30. Not a
    speed setting: left out of the report's setup ids."""
    share_gpus: bool = False
    """PyTorch DDP (--gpus N): a node's N ranks share the fewer GPUs they see, N / GPUs on each
    (local rank r on GPU r // (N / GPUs); N a multiple of the GPUs), over gloo, as NCCL refuses
    two ranks on one GPU: the multi-GPU code path checked for correctness on one GPU, its
    speed figures no figures (summary.json runtime.speed_reason). No effect on CPU workers."""


@dataclass(frozen=True)
class ProfileConfig:
    """What the profiler measures (profiler.py)."""

    enabled: bool = True
    """Sample GPUs with NVML and measure energy, memory and host figures."""
    warmup_steps: int = 5
    """Steps at the start of the run left out of step-time and throughput statistics."""
    sample_interval_s: float = 0.1
    """NVML sampling period (faster than about 0.05 s returns errors or zeros)."""
    idle_s: float = 2.0
    """At most this many seconds of the start-up window (model built to first step) give the
    idle power, without waiting for them (GPU only; 0 skips it)."""
    min_window_s: float = 5.0
    """Energy windows shorter than this are flagged as too short to trust."""
    tensorboard: bool = True
    """Write each epoch's figures (losses, PSNR, SSIM, img/s, GPU power, energy and memory where
    measured) as TensorBoard events into <framework>/tensorboard/, on rank 0: `tensorboard
    --logdir results/<run-id>` shows both frameworks on the same charts, live while it runs."""
    trace_steps: int = 0
    """Record the framework's own profiler trace (torch.profiler; TensorFlow's profiler) of this
    many steps after the warm-up steps, on rank 0, into <framework>/trace/ (0: off). Traced
    steps run slower: a run for finding what holds a step back, not for timing it."""


@dataclass(frozen=True)
class Config:
    """Everything a run needs. `profile` records which profile file it came from."""

    profile: str = "default"
    mode: str = ""
    """The `--mode` (profiles/modes/<mode>.toml) laid over the profile's [runtime]; "" for none."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    profiler: ProfileConfig = field(default_factory=ProfileConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataConfig,
    "noise": NoiseConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
    "profiler": ProfileConfig,
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting strings from the command line."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported annotation {tp}")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str):
            try:
                value = int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp}")


def _build_section(
    cls: type, values: dict[str, Any], overrides: dict[str, Any], where: str, section: str
) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for origin, given in ((f"{where} [{section}]", values), ("override", overrides)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(v, hints[k], f"{where} [{section}].{k}") for k, v in values.items()}
    kwargs |= {k: _coerce(v, hints[k], f"override {section}.{k}") for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where} [{section}] with overrides: {e}") from None


def _check_bounds(cfg: Config, bounds: dict[str, Bound]) -> None:
    """Every number of every section against its bound (a tuple's items each), and every float
    finite (TOML and float() both read inf and nan): ConfigError naming the key, the value,
    the bound and why, for the first outside."""
    for section in SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            key, value = f"{section}.{f.name}", getattr(values, f.name)
            bound = bounds.get(key)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, float) and not math.isfinite(item) and bound is None:
                    raise ConfigError(f"{key} must be a finite number, got {item}")
                if bound is not None and (problem := bound.problem(key, item)):
                    raise ConfigError(problem)


def check_machine_bounds(cfg: Config) -> None:
    """The bounds that depend on this machine: threads at most its cores, a synthetic set that
    fits its memory (bounds.py). Checked where a run starts on the machine that trains it,
    never when a config is built or saved (bounds.py says where)."""
    threads = threads_bound()
    table = {"runtime.intra_op_threads": threads, "runtime.inter_op_threads": threads}
    data = cfg.data
    if data.source == "synthetic":
        share = data.n_test / (data.n_train + data.n_test)
        args = (data.synthetic_images, cfg.model.image_size, data.limit, share)
        if (memory := memory_bound(*args)) is not None:
            table["data.synthetic_images"] = memory
    _check_bounds(cfg, table)


def _validate(cfg: Config) -> None:
    """Range checks that the types alone do not express: bounds.BOUNDS, then the rules between
    fields."""
    _check_bounds(cfg, BOUNDS)
    checks = [
        (
            not (cfg.runtime.cuda_graphs and cfg.runtime.torch_compile),
            "runtime.cuda_graphs and runtime.torch_compile: choose one (the graph captures the "
            "eager step; torch.compile brings its own CUDA graphs with mode reduce-overhead)",
        ),
        (
            not (cfg.runtime.cuda_graphs and cfg.runtime.precision == "float16"),
            "runtime.cuda_graphs with runtime.precision=float16: loss scaling checks for inf on "
            "the host every step, which a CUDA graph cannot replay; use bfloat16",
        ),
        (
            not (cfg.runtime.share_gpus and cfg.runtime.cuda_graphs),
            "runtime.share_gpus with runtime.cuda_graphs: ranks sharing a GPU all-reduce over "
            "gloo, through host memory, which a CUDA graph cannot capture; choose one",
        ),
        (
            cfg.data.source != "eurosat" or bool(cfg.data.path),
            "data.source=eurosat needs data.path (EuroSAT.zip or its folder): pass --data PATH",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


AMPERE = (8, 0)
"""Compute capability of the first GPUs with bfloat16 and TF32 tensor cores (A100)."""


def check_device_support(cfg: Config, device_name: str, capability: tuple[int, int]) -> None:
    """Refuse speed settings the GPU has no hardware for, naming the key. Before compute
    capability 8.0 (V100, T4) there are no bfloat16 or TF32 tensor cores: bfloat16 is emulated
    slowly and TF32 does nothing, so the run would not be what its config says."""
    if tuple(capability) >= AMPERE:
        return
    cc = f"{device_name} (compute capability {capability[0]}.{capability[1]})"
    if cfg.runtime.precision == "bfloat16":
        raise ConfigError(
            f"runtime.precision=bfloat16 on {cc}: no bfloat16 tensor cores before 8.0; set "
            "runtime.precision=float32 (or float16, without CUDA graphs)"
        )
    if cfg.runtime.tf32:
        raise ConfigError(f"runtime.tf32=true on {cc}: no TF32 before 8.0; set runtime.tf32=false")


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """['train.lr=0.01', ...] -> {'train': {'lr': '0.01'}}; values stay strings until coerced."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {pair!r}: expected section.key=value, e.g. train.lr=0.001")
        if section not in SECTIONS:
            raise ConfigError(
                f"override {pair!r}: unknown section {section!r}; known: {', '.join(SECTIONS)}"
            )
        out.setdefault(section, {})[name] = value.strip()
    return out


def profile_path(profile: str) -> Path:
    """A profile name (profiles/<name>.toml) or a path to a TOML file."""
    path = Path(profile)
    if path.suffix == ".toml" or "/" in profile:
        return path
    return PROFILES_DIR / f"{profile}.toml"


MODES_DIR = PROFILES_DIR / "modes"
PSNR_TOLERANCE_DB = 0.1
"""The tuned mode's promise: test PSNR within this of the faithful float32 run."""
DeviceKind = Literal["cpu", "gpu"]


MODE_OVERLAYS = {
    "before_ampere": "GPUs older than compute capability 8.0 (no bfloat16 or TF32 tensor cores)",
    "several_devices": "runs on more than one device",
}
"""Sub-tables a mode's [gpu] or [cpu] table may hold, laid over it when they apply."""


def mode_runtime(
    mode: str,
    device_kind: DeviceKind,
    capability: tuple[int, int] | None = None,
    devices: int = 1,
) -> dict[str, Any]:
    """The [runtime] values of speed mode `mode` on `device_kind` (profiles/modes/<mode>.toml):
    its table, then its [<kind>.before_ampere] sub-table when the GPUs' compute `capability` is
    known and below 8.0, then [<kind>.several_devices] when `devices` > 1."""
    path = MODES_DIR / f"{mode}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in MODES_DIR.glob("*.toml"))
        raise ConfigError(f"mode {mode!r}: no file {path} (known modes: {', '.join(known)})")
    tables = read_toml(path)
    if not isinstance(tables.get(device_kind), dict):
        raise ConfigError(f"{path}: no [{device_kind}] table of runtime settings")
    table = tables[device_kind]
    values = {k: v for k, v in table.items() if not isinstance(v, dict)}
    overlays = {k: v for k, v in table.items() if isinstance(v, dict)}
    unknown = sorted(set(overlays) - set(MODE_OVERLAYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown sub-table(s) [{device_kind}.{', '.join(unknown)}]; known: "
            + ", ".join(MODE_OVERLAYS)
        )
    if capability is not None and tuple(capability) < AMPERE:
        values |= overlays.get("before_ampere", {})
    if devices > 1:
        values |= overlays.get("several_devices", {})
    return values


def load_config(
    profile: str = "default",
    overrides: dict[str, dict[str, Any]] | None = None,
    mode: str = "",
    device_kind: DeviceKind = "cpu",
    capability: tuple[int, int] | None = None,
    devices: int = 1,
) -> Config:
    """Resolve defaults < profile file < speed mode < overrides into a validated Config.

    The mode's table is chosen by `device_kind`, the GPUs' compute `capability` (None:
    unknown) and the number of `devices` (mode_runtime)."""
    path = profile_path(profile)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ConfigError(
            f"profile {profile!r}: no file {path} (known profiles: {', '.join(known)})"
        )
    raw = read_toml(path)
    if mode:
        runtime = raw.get("runtime", {})
        if not isinstance(runtime, dict):
            raise ConfigError(f"{path}: [runtime] must be a table")
        raw["runtime"] = {**runtime, **mode_runtime(mode, device_kind, capability, devices)}
        raw["mode"] = mode
    return config_from_dict(raw, name=path.stem, where=str(path), overrides=overrides)


def config_from_dict(
    raw: dict[str, Any],
    name: str = "custom",
    where: str = "config",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    raw = dict(raw)
    raw.pop("profile", None)
    mode = raw.pop("mode", "")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    sections = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        given = (overrides or {}).get(section, {})
        sections[section] = _build_section(cls, values, given, where, section)
    cfg = Config(profile=name, mode=mode, **sections)
    _validate(cfg)
    return cfg


def speed_label(cfg: Config) -> str:
    """What kind of speed settings a run used: "faithful" when every fast path is off (float32,
    no TF32, no compilation, ...), "custom" when one is on without a --mode or against the
    faithful one, else its --mode."""
    rt = cfg.runtime
    fast = rt.tf32 or rt.xla or rt.torch_compile or rt.channels_last or rt.cuda_graphs
    fast = fast or rt.precision != "float32"
    if cfg.mode and (cfg.mode != "faithful" or not fast):
        return cfg.mode
    return "custom" if fast else "faithful"


def read_toml(path: Path) -> dict[str, Any]:
    """A profile or mode file's tables; ConfigError naming the file when it is not UTF-8 TOML."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load_resolved(path: Path, here: bool = True) -> Config:
    """Read back a config.json written with a run; ConfigError naming it when it is damaged.
    `here`: the run is about to train on this machine (the trainers, a SLURM job's task, the
    launcher resuming it), so its machine bounds are checked too (check_machine_bounds)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a run's config (a JSON object was expected)")
    cfg = config_from_dict(raw, name=raw.get("profile", "custom"), where=str(path))
    if here:
        check_machine_bounds(cfg)
    return cfg
