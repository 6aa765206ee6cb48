from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from synface.configcheck import ConfigError, config_sources, read_sources, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = sorted(ROOT.glob("config/*.yaml"))
TEST_DIFFS = sorted(ROOT.glob("tests/config/*.yaml"))


def _merged(base: dict, diff: dict) -> dict:
    """Snakemake's deep merge of a later --configfile over an earlier one."""
    out = dict(base)
    for key, value in diff.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def _layers(config: Path, default: Path | None) -> list[Path]:
    """The configs ``config`` is layered over, as the usage in its first lines names them
    (`--configfile config/frcsyn.yaml tests/config/paper_micro.yaml`), then ``config``; over
    ``default`` when the usage names none before it (a complete config: ``default`` None)."""
    first_lines = "".join(config.read_text().splitlines(keepends=True)[:4])
    usage = re.search(r"--configfile(?:[\s#\\(]+(?:tests/)?config/\S+\.yaml)+", first_lines)
    named = re.findall(r"(?:tests/)?config/[^\s)]+\.yaml", usage.group(0)) if usage else []
    names = [ROOT / name for name in named]
    before = names[: names.index(config)] if config in names else names
    if not before:
        before = [] if default is None else [default]
    return [*before, config]


def _validate_layered(layers: list[Path]) -> None:
    """Validate Snakemake's merge of ``layers`` given as --configfile, in order."""
    config = {}
    for layer in layers:
        config = _merged(config, yaml.safe_load(layer.read_text()))
    validate_config(config, SCHEMA, read_sources(layers))


def test_the_plus_preset_and_the_micro_ablation_are_layered_as_their_usage_says() -> None:
    plus, micro = ROOT / "config" / "frcsyn-plus.yaml", ROOT / "tests/config/ablation_micro.yaml"
    assert _layers(plus, None) == [ROOT / "config" / "frcsyn.yaml", plus]
    assert _layers(ROOT / "config" / "frcsyn.yaml", None) == [ROOT / "config" / "frcsyn.yaml"]
    names = ["config/config.yaml", "tests/config/micro.yaml", "config/ablation.yaml"]
    assert _layers(micro, None) == [*(ROOT / name for name in names), micro]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    """Complete configs alone; an overlay (config/frcsyn-plus.yaml) over the config it names."""
    _validate_layered(_layers(path, None))


@pytest.mark.parametrize("path", TEST_DIFFS, ids=lambda p: p.name)
def test_every_test_config_is_valid_over_its_shipped_config(path: Path) -> None:
    _validate_layered(_layers(path, ROOT / "config" / "config.yaml"))


def _config_file(tmp_path: Path, edit) -> tuple[dict, Path]:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_an_unknown_key_is_named_with_its_file_and_a_guess(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c["recognition"]["train"].update(epoch=3))
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA, read_sources([ROOT / "config" / "config.yaml", path]))
    message = str(error.value)
    assert "unknown config key 'recognition.train.epoch'" in message
    assert str(path) in message
    assert str(ROOT / "config" / "config.yaml") not in message
    assert "did you mean 'epochs'?" in message


def test_a_mistyped_value_names_the_key(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c["recognition"]["head"].update(scale="64"))
    with pytest.raises(ConfigError, match=r"config key 'recognition\.head\.scale' in .*mine\.yaml"):
        validate_config(config, SCHEMA, read_sources([path]))


def test_defaults_are_filled(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c.pop("evaluation"))
    validate_config(config, SCHEMA, read_sources([path]))
    assert config["evaluation"] == {
        "batch_size": 64,
        "threads": 4,
        "precision": "bf16",
        "consistency_columns": False,
    }


def test_a_bad_command_line_value_is_blamed_on_the_command_line() -> None:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["face_size"] = "48"
    sources = {**read_sources([ROOT / "config" / "config.yaml"]), "--config": {"face_size": "48"}}
    with pytest.raises(ConfigError, match=r"config key 'face_size' in --config: '48' is not"):
        validate_config(config, SCHEMA, sources)


def test_a_float_for_an_integer_key_is_refused_naming_key_and_file(tmp_path: Path) -> None:
    """JSON Schema's integer type accepts 2.0; planning then failed on int('2.0')."""
    config, path = _config_file(tmp_path, lambda c: c["recognition"]["train"].update(epochs=2.0))
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA, read_sources([path]))
    message = str(error.value)
    assert "config key 'recognition.train.epochs'" in message
    assert str(path) in message
    assert "is not of type 'integer'" in message


def test_booleans_are_not_integers(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c.update(face_size=True))
    with pytest.raises(ConfigError, match=r"config key 'face_size'"):
        validate_config(config, SCHEMA, read_sources([path]))


def test_the_command_line_is_a_source_only_when_it_was_used(tmp_path: Path) -> None:
    base = ROOT / "config" / "config.yaml"
    assert list(config_sources([base], {})) == [str(base)]
    assert list(config_sources([base], None)) == [str(base)]
    assert list(config_sources([base], {"face_size": 48})) == [str(base), "--config"]


def test_an_error_inside_a_list_names_its_file_not_every_source(tmp_path: Path) -> None:
    """A bad list item is located in the file that holds the list, and ``--config`` is named
    only when it was given."""
    base = ROOT / "config" / "config.yaml"
    diff = {"recognition": {"train": {"stages": [5, 7.5]}}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(diff))
    config = _merged(yaml.safe_load(base.read_text()), diff)
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA, config_sources([base, path], {}))
    message = str(error.value)
    assert f"config key 'recognition.train.stages.1' in {path}:" in message
    assert "--config" not in message
