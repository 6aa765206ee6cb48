"""Stage settings from the config schema: defaults filled, unknown and missing keys named.

The expected defaults are read straight from the schema file here, so these tests check
that `synface.settings` finds them (through ``$ref``s, a map's entries and a use-site
default), not that the defaults have particular values.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from synface.settings import (
    SCHEMA_PATH,
    SettingsError,
    StageSettings,
    from_settings,
    schema_defaults,
)

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFS = SCHEMA["$defs"]
WORLD = DEFS["demo_world"]["properties"]


@dataclass(frozen=True)
class World(StageSettings, section="demo_world"):
    seed: int
    train_identities: int


@dataclass(frozen=True)
class Pack:
    stress: str
    pairs_per_fold: int


def test_a_missing_key_is_filled_from_the_schema_through_a_ref() -> None:
    # `demo_world` is a `$ref` to `$defs/demo_world`.
    world = from_settings(World, {"seed": 7}, "demo_world")
    assert world == World(seed=7, train_identities=WORLD["train_identities"]["default"])


def test_a_stage_settings_class_reads_the_section_its_class_statement_names() -> None:
    world = World.from_settings({"seed": 7})
    assert world == World(seed=7, train_identities=WORLD["train_identities"]["default"])
    with pytest.raises(SettingsError, match=r"unknown demo_world setting\(s\) sede"):
        World.from_settings({"sede": 7})


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match=r"unknown demo_world setting\(s\) sede; known: seed"):
        from_settings(World, {"sede": 7}, "demo_world")


def test_a_missing_key_without_a_default_is_named() -> None:
    # A pack's stress has no default: only the five default packs have one.
    with pytest.raises(SettingsError, match=r"setting\(s\) stress missing and without a schema"):
        from_settings(Pack, {}, "demo_world.benchmarks.mine")


def test_a_map_entry_takes_the_defaults_of_the_map_s_entry_schema() -> None:
    pack = from_settings(Pack, {"stress": "mild"}, "demo_world.benchmarks.mine")
    assert pack.pairs_per_fold == DEFS["demo_pack"]["properties"]["pairs_per_fold"]["default"]


def test_a_default_beside_a_ref_wins_over_the_shared_definition() -> None:
    train = schema_defaults("demo_world.train_nuisance")
    assert train == WORLD["train_nuisance"]["default"]
    # The shared definition's own defaults still hold where no use-site default is given.
    off = DEFS["strength"]["default"]
    assert schema_defaults("demo_world.benchmarks.mine.nuisance") == dict.fromkeys(train, off)


def test_nested_defaults_of_a_section_include_objects_and_maps() -> None:
    world = schema_defaults("demo_world")
    assert world["train_nuisance"] == WORLD["train_nuisance"]["default"]
    assert world["benchmarks"] == WORLD["benchmarks"]["default"]
    assert world["seed"] == WORLD["seed"]["default"]


def test_an_empty_section_default_keeps_its_keys_defaults() -> None:
    # `synthesis: {default: {}}` only makes the section exist in a filled config.
    synthesis = SCHEMA["properties"]["synthesis"]
    assert synthesis["default"] == {}
    assert schema_defaults("synthesis")["steps"] == synthesis["properties"]["steps"]["default"]


def test_changing_returned_defaults_leaves_the_schema_alone() -> None:
    schema_defaults("demo_world")["benchmarks"]["lfw"]["nuisance"]["yaw"] = -1.0
    assert schema_defaults("demo_world")["benchmarks"] == WORLD["benchmarks"]["default"]


def test_an_unknown_section_is_named() -> None:
    with pytest.raises(SettingsError, match=r"no section 'demo_world\.colour'"):
        schema_defaults("demo_world.colour")
