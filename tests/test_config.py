"""Config: profile files, defaults < profile < overrides, validation messages, the CLI flags."""

from __future__ import annotations

import tomllib

import pytest

from denoisebench.core.config import (
    PROFILES_DIR,
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
        ("train.lr=0", "train.lr must be > 0"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("noise.amount=2", "noise.amount must be in [0, 1]"),
        ("noise.peak=0", "noise.peak must be > 0"),
        ("noise.sigma=-0.1", "noise.sigma must be >= 0"),
        ("train.beta1=1", "train.beta1 must be in [0, 1)"),
    ],
)
def test_range_checks(pair, message):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides(pair))
    assert message in str(e.value)


def test_range_limits_themselves_are_allowed():
    cfg = load_config("smoke", overrides("noise.amount=1", "noise.sigma=0", "train.beta1=0"))
    assert (cfg.noise.amount, cfg.noise.sigma, cfg.train.beta1) == (1.0, 0.0, 0.0)


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
