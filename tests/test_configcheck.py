from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synface.configcheck import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = sorted(ROOT.glob("config/*.yaml")) + sorted(ROOT.glob("tests/config/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    validate_config(yaml.safe_load(path.read_text()), SCHEMA, [path])


def _config_file(tmp_path: Path, edit) -> tuple[dict, Path]:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_an_unknown_key_is_named_with_its_file_and_a_guess(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c["recognition"]["train"].update(epoch=3))
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA, [ROOT / "config" / "config.yaml", path])
    message = str(error.value)
    assert "unknown config key 'recognition.train.epoch'" in message
    assert str(path) in message
    assert str(ROOT / "config" / "config.yaml") not in message
    assert "did you mean 'epochs'?" in message


def test_a_mistyped_value_names_the_key(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c["recognition"]["head"].update(scale="64"))
    with pytest.raises(ConfigError, match=r"config key 'recognition\.head\.scale' in .*mine\.yaml"):
        validate_config(config, SCHEMA, [path])


def test_defaults_are_filled(tmp_path: Path) -> None:
    config, path = _config_file(tmp_path, lambda c: c.pop("evaluation"))
    validate_config(config, SCHEMA, [path])
    assert config["evaluation"] == {"batch_size": 64, "threads": 4}
