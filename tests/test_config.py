"""Config: profile files, defaults < profile < overrides, validation messages, the CLI flags."""

from __future__ import annotations

import tomllib
import typing

import pytest

from denoisebench.core.bounds import BOUNDS
from denoisebench.core.config import (
    PROFILES_DIR,
    SECTIONS,
    Config,
    ConfigError,
    load_config,
    load_resolved,
    parse_overrides,
)
from launch.folders import flag_overrides
from launch.options import build_parser

PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
EUROSAT = {"data": {"path": "/x/EuroSAT.zip"}}


def overrides(*pairs: str) -> dict[str, dict[str, str]]:
    return parse_overrides(list(pairs))


# --- the profiles on disk ------------------------------------------------------------------------


def test_the_expected_profiles_exist():
    assert {"default", "paper", "smoke"} <= set(PROFILES)


@pytest.mark.parametrize("name", [p for p in PROFILES if p != "paper"])
def test_profile_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.profile == name


@pytest.mark.parametrize("name", PROFILES)
def test_every_value_in_a_profile_file_reaches_the_config(name):
    # read from the file itself, so that retuning a profile does not break this test
    raw = tomllib.loads((PROFILES_DIR / f"{name}.toml").read_text())
    cfg = load_config(name, EUROSAT if name == "paper" else None)
    assert raw, f"profiles/{name}.toml sets nothing"
    for section, values in raw.items():
        for key, value in values.items():
            expected = tuple(value) if isinstance(value, list) else value
            assert getattr(getattr(cfg, section), key) == expected, f"{section}.{key}"


def test_smoke_profile_is_small_and_deterministic():
    cfg = load_config("smoke")
    assert cfg.data.source == "builtin"
    assert 0 < cfg.data.limit <= 1000
    assert cfg.train.deterministic is True


def test_paper_profile_needs_the_data_path():
    with pytest.raises(ConfigError, match=r"data\.path") as e:
        load_config("paper")
    assert "--data" in str(e.value)


def test_paper_profile_is_the_papers_setup():
    cfg = load_config("paper", EUROSAT)
    assert cfg.profile == "paper"
    assert (cfg.data.source, cfg.data.path) == ("eurosat", "/x/EuroSAT.zip")
    assert (cfg.data.n_train, cfg.data.n_test) == (25_000, 2_000)
    assert (cfg.noise.kind, cfg.noise.sigma) == ("gaussian", 0.2)
    assert cfg.train.epochs == 100
    assert cfg.train.loss == "mae"
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.beta2, cfg.train.eps) == (
        0.001,
        0.9,
        0.999,
        1e-7,
    )
    assert cfg.train.init == "native"
    assert cfg.model.encoder_widths == (32, 64, 128)
    assert (cfg.model.kernel_size, cfg.model.stride) == (3, 2)
    assert (cfg.model.activation, cfg.model.output_activation) == ("relu", "sigmoid")
    assert cfg.model.depth == 3


# --- precedence ----------------------------------------------------------------------------------


def test_precedence_defaults_then_profile_then_overrides():
    cfg = load_config("smoke", overrides("train.epochs=7", "noise.sigma=0.1"))
    assert cfg.train.epochs == 7  # override beats the profile's 2
    assert cfg.noise.sigma == 0.1  # override beats the default 0.2
    assert cfg.train.batch_size == 16  # profile beats the default 64
    assert cfg.data.limit == 160  # profile, not overridden
    assert cfg.train.lr == 1e-3  # default: in neither the profile nor the overrides
    assert cfg.noise.test_seed == 1234  # default
    # and the smoke profile alone keeps its own epochs
    assert load_config("smoke").train.epochs == 2


# --- parse_overrides -----------------------------------------------------------------------------


def test_parse_overrides():
    assert parse_overrides(["train.lr=0.01"]) == {"train": {"lr": "0.01"}}
    assert parse_overrides(["train.lr=0.01", "train.epochs=3", "noise.kind=poisson"]) == {
        "train": {"lr": "0.01", "epochs": "3"},
        "noise": {"kind": "poisson"},
    }
    # split at the first '=': a path may hold one; the later of two values wins
    assert parse_overrides(["data.path=/a=b", "data.path=/c"]) == {"data": {"path": "/c"}}
    assert parse_overrides(["data.path=/a=b"]) == {"data": {"path": "/a=b"}}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize(
    ("pair", "named"),
    [
        ("lr=0.01", "'lr=0.01'"),  # no section
        ("train.lr", "'train.lr'"),  # no '='
        ("train.=1", "'train.=1'"),  # no key
        ("optim.lr=0.01", "'optim'"),  # unknown section
    ],
)
def test_parse_overrides_rejects(pair, named):
    with pytest.raises(ConfigError) as e:
        parse_overrides([pair])
    assert named in str(e.value)


def test_parse_overrides_lists_the_known_sections():
    with pytest.raises(ConfigError, match="model, data, noise, train"):
        parse_overrides(["optim.lr=0.01"])


# --- validation messages -------------------------------------------------------------------------


def test_unknown_key_in_a_profile_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[train]\nepochs = 1\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(path) in str(e.value)
    assert "train.learning_rate" in str(e.value)


def test_unknown_section_in_a_profile_names_the_file_and_the_section(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[optimizer]\nlr = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(path) in str(e.value)
    assert "optimizer" in str(e.value)


def test_a_good_profile_file_anywhere_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[noise]\nkind = "speckle"\nsigma = 0.3\n[train]\nepochs = 4\n')
    cfg = load_config(str(path))
    assert cfg.profile == "mine"
    assert (cfg.noise.kind, cfg.noise.sigma, cfg.train.epochs) == ("speckle", 0.3, 4)


def test_missing_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="nosuchprofile") as e:
        load_config("nosuchprofile")
    assert all(name in str(e.value) for name in ("default", "paper", "smoke"))


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nepochs = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load_config(str(path))
    assert str(path) in str(e.value)


def test_unknown_key_in_an_override_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides("train.learning_rate=0.1"))
    assert "override" in str(e.value)
    assert "train.learning_rate" in str(e.value)


@pytest.mark.parametrize(
    ("pair", "key", "value"),
    [
        ("train.epochs=abc", "train.epochs", "'abc'"),
        ("train.epochs=1.5", "train.epochs", "'1.5'"),
        ("train.lr=fast", "train.lr", "'fast'"),
        ("train.deterministic=maybe", "train.deterministic", "'maybe'"),
        ("model.encoder_widths=16,x", "model.encoder_widths", "'x'"),
    ],
)
def test_bad_value_names_the_key_and_the_value(pair, key, value):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides(pair))
    assert key in str(e.value)
    assert value in str(e.value)


def test_bad_value_type_in_a_profile_names_the_file_and_key(tmp_path):
    path = tmp_path / "types.toml"
    path.write_text('[train]\nepochs = "five"\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(path) in str(e.value)
    assert "epochs" in str(e.value) and "'five'" in str(e.value)


def test_value_outside_a_literal_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides("noise.kind=laplace"))
    message = str(e.value)
    assert "noise.kind" in message and "'laplace'" in message
    for choice in ("gaussian", "salt_and_pepper", "poisson", "speckle"):
        assert choice in message


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("train.lr=0", "train.lr must be > 0, got 0.0 (a step size: "),
        ("train.lr=1e39", "train.lr must be <= 3.40282e+38, got 1e+39 (a step size: above float32's largest"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0 (passes over"),
        ("noise.amount=2", "noise.amount must be <= 1, got 2.0 (a fraction of the pixels)"),
        ("noise.peak=0", "noise.peak must be >= 0.01, got 0.0 (a white pixel's mean photon count"),
        ("noise.peak=1e-300", "noise.peak must be >= 0.01, got 1e-300 ("),
        ("noise.peak=2e6", "noise.peak must be <= 1,000,000, got 2000000.0 ("),
        ("noise.sigma=-0.1", "noise.sigma must be >= 0, got -0.1 ("),
        ("train.beta1=1", "train.beta1 must be < 1, got 1.0 (Adam's decay rate"),
        ("train.seed=-1", "train.seed must be >= 0, got -1 (numpy's seed range"),
        ("train.seed=4294967296", "train.seed must be <= 4,294,967,295, got 4294967296 (numpy's seed range: np.random.seed, which Keras seeds through)"),
        ("data.split_seed=-1", "data.split_seed must be >= 0, got -1 ("),
        ("noise.test_seed=-5", "noise.test_seed must be >= 0, got -5 ("),
        ("model.encoder_widths=16,5000", "model.encoder_widths must be <= 4,096, got 5000 ("),
        ("model.image_size=8192", "model.image_size must be <= 4,096, got 8192 ("),
        ("data.synthetic_images=2147483648", "data.synthetic_images must be <= 2,147,483,647, got 2147483648 ("),
        ("runtime.intra_op_threads=-1", "runtime.intra_op_threads must be >= 0, got -1 ("),
        ("profiler.min_window_s=nan", "profiler.min_window_s must be a finite number >= 0 and <= 3,600, got nan ("),
        ("model.in_channels=4", "model.in_channels must be 3, got 4 (the images are RGB)"),
    ],
)  # fmt: skip
def test_range_checks(pair, message):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides(pair))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_range_limits_themselves_are_allowed():
    cfg = load_config("smoke", overrides("noise.amount=1", "noise.sigma=0", "train.beta1=0"))
    assert (cfg.noise.amount, cfg.noise.sigma, cfg.train.beta1) == (1.0, 0.0, 0.0)


def numeric_fields() -> list[str]:
    """Every config key that holds a number or a tuple of numbers (bools are not numbers)."""
    keys = []
    for section, cls in SECTIONS.items():
        for name, tp in typing.get_type_hints(cls).items():
            items = typing.get_args(tp)[:1] if typing.get_origin(tp) is tuple else (tp,)
            if items[0] in (int, float):
                keys.append(f"{section}.{name}")
    return keys


def test_every_number_has_a_bound_with_a_reason():
    assert len(numeric_fields()) >= 30
    assert sorted(BOUNDS) == sorted(numeric_fields())
    assert all(bound.why and bound.low <= bound.high for bound in BOUNDS.values())


COMPANIONS = {
    "model.stride": ["model.image_size=4096", "model.kernel_size=16"],
    "model.image_size": ["model.stride=1"],
    "model.kernel_size": ["model.stride=1"],
}
"""What a bound value needs beside it (ModelSpec's rules): stride 16 over three layers needs
16**3 pixels and a kernel of 16; a 1-pixel image or kernel needs stride 1."""


def field_type(key: str) -> type:
    section, name = key.split(".")
    tp = typing.get_type_hints(SECTIONS[section])[name]
    return typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_each_bound_loads_and_the_next_value_beyond_it_is_refused(key):
    """The largest and smallest legal values pass; one step past either is refused by name
    (by ModelSpec's own check where it refuses first, as for image_size=0)."""
    bound, kind = BOUNDS[key], field_type(key)
    for edge, opened, outward in (
        (bound.low, bound.low_open, -1),
        (bound.high, bound.high_open, 1),
    ):
        step = 1 if kind is int else 1e-6 * max(1.0, abs(edge))
        inside, beyond = (edge - outward * step, edge) if opened else (edge, edge + outward * step)
        cfg = load_config("smoke", overrides(f"{key}={inside!r}", *COMPANIONS.get(key, [])))
        value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
        assert value in (inside, (inside,)), key
        with pytest.raises(ConfigError) as e:
            load_config("smoke", overrides(f"{key}={beyond!r}", *COMPANIONS.get(key, [])))
        assert key.split(".")[1] in str(e.value) and repr(beyond).rstrip("0") in str(e.value)


def test_model_spec_problems_are_config_errors():
    # stride 3 on 64x64 images: 64 is not divisible by 3**3
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides("model.stride=3"))
    assert "image_size=64" in str(e.value) and "stride**depth=27" in str(e.value)
    with pytest.raises(ConfigError, match="kernel_size=2 must be >= stride=3"):
        load_config("smoke", overrides("model.stride=3", "model.kernel_size=2"))


# --- coercion and round trip ---------------------------------------------------------------------


def test_command_line_values_are_coerced_to_the_field_types():
    cfg = load_config(
        "smoke",
        overrides(
            "model.encoder_widths=16,32,64,128",
            "train.lr=3e-4",
            "train.deterministic=false",
            "data.n_train=1_000",
        ),
    )
    assert cfg.model.encoder_widths == (16, 32, 64, 128)
    assert cfg.model.depth == 4
    assert [layer.out_channels for layer in cfg.model.layers()] == [16, 32, 64, 128, 64, 32, 16, 3]
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.deterministic is False
    assert cfg.data.n_train == 1000


def test_tuple_from_the_command_line_accepts_brackets_and_spaces():
    cfg = load_config("smoke", overrides("model.encoder_widths=(8, 16)"))
    assert cfg.model.encoder_widths == (8, 16)


def test_to_json_round_trips_through_load_resolved(tmp_path):
    cfg = load_config(
        "paper",
        overrides(
            "data.path=/x/EuroSAT.zip",
            "model.encoder_widths=16,32,64,128",
            "noise.kind=salt_and_pepper",
            "noise.amount=0.1",
            "train.deterministic=true",
            "train.eps=1e-8",
        ),
    )
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json() + "\n")
    back = load_resolved(path)
    assert back == cfg
    assert back.profile == "paper"
    assert back.model.encoder_widths == (16, 32, 64, 128)  # a tuple again, not a list


def test_round_trip_of_every_loadable_profile(tmp_path):
    for name in PROFILES:
        cfg = load_config(name, EUROSAT if name == "paper" else None)
        path = tmp_path / f"{name}.json"
        path.write_text(cfg.to_json())
        assert load_resolved(path) == cfg, name


# --- the launcher's flags ------------------------------------------------------------------------


def cli(*argv: str) -> list[str]:
    return flag_overrides(build_parser().parse_args(list(argv)))


def test_flags_become_overrides():
    assert cli("--data", "/x/EuroSAT.zip", "--epochs", "3", "--noise", "poisson", "--download") == [
        "data.source=eurosat",
        "data.path=/x/EuroSAT.zip",
        "train.epochs=3",
        "noise.kind=poisson",
        "data.download=true",
    ]
    assert cli("--data", "builtin") == ["data.source=builtin"]
    assert cli("--data", "synthetic") == ["data.source=synthetic"]
    assert cli("--data", "tfds", "--tfds-dir", "/tfds") == ["data.source=tfds", "data.path=/tfds"]
    assert cli() == []
    assert cli("--limit", "0", "--lr", "0.01", "--seed", "0") == [
        "data.limit=0",  # 0 is a value, not "unset"
        "train.lr=0.01",
        "train.seed=0",
    ]


def test_flags_resolve_to_a_valid_config():
    args = build_parser().parse_args(
        ["--profile", "paper", "--data", "/x/EuroSAT.zip", "--epochs", "3", "--noise", "poisson"]
    )
    cfg = load_config(args.profile, parse_overrides([*flag_overrides(args), *args.set]))
    assert (cfg.data.source, cfg.data.path) == ("eurosat", "/x/EuroSAT.zip")
    assert cfg.train.epochs == 3
    assert cfg.noise.kind == "poisson"


def test_set_comes_after_the_flags_and_wins():
    args = build_parser().parse_args(["--epochs", "3", "--set", "train.epochs=4"])
    cfg = load_config("smoke", parse_overrides([*flag_overrides(args), *args.set]))
    assert cfg.train.epochs == 4
