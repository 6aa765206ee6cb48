"""Stage settings: frozen dataclasses whose defaults come from the config schema alone.

The schema (``workflow/schemas/config.schema.yaml``) is the one place a default is written. A
stage's dataclass declares fields without defaults; ``from_settings`` fills what the caller left
out from the schema section the stage reads, and refuses keys the stage does not know, so a
hand-run ``synface <stage> --settings '{...}'`` and a Snakemake rule build the same settings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

T = TypeVar("T")


class SettingsError(ValueError):
    """Settings that do not fit the stage: unknown or missing keys, named."""


class StageSettings:
    """Base of a stage's settings dataclass: ``from_settings`` reads the section it names.

    ``@dataclass(frozen=True) class X(StageSettings, section="ldm.train")`` gives
    ``X.from_settings(values)``; a class whose values hold nested settings converts them and
    calls ``super().from_settings``.
    """

    section: ClassVar[str]

    def __init_subclass__(cls, section: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.section = section

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> Self:
        """The settings from ``values`` over the schema defaults of the class's section."""
        return from_settings(cls, values, cls.section)


@functools.cache
def _schema() -> dict[str, Any]:
    if not SCHEMA_PATH.exists():
        raise SettingsError(
            f"{SCHEMA_PATH} not found: synface reads its defaults from the workflow's config "
            "schema; install the package from a checkout of the repository (pip install -e .)"
        )
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/name``); keys beside it (a ``default`` that one use
    of a shared definition has, e.g. ``demo_world.train_nuisance``) win over the target's."""
    while "$ref" in node:
        target: Any = _schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def _section_schema(section: str) -> dict[str, Any]:
    """The schema of a dotted section (``""``: the whole config); a name that is not a property
    follows the object's ``additionalProperties`` schema (a map's entries, e.g.
    ``demo_world.benchmarks.lfw``)."""
    node = _resolve(_schema())
    for part in filter(None, section.split(".")):
        entries = node.get("additionalProperties")
        sub = node.get("properties", {}).get(part, entries)
        if not isinstance(sub, dict):
            raise SettingsError(f"the config schema has no section '{section}'")
        node = _resolve(sub)
    return node


def _default_of(node: dict[str, Any]) -> Any:
    """A node's default: its own ``default`` over the defaults of its properties. An object's
    ``default: {}`` only makes the section exist; a complete one (``demo_world.train_nuisance``)
    replaces what its shared definition says."""
    if "properties" not in node:
        return node.get("default", {})
    return {**_defaults(node), **node.get("default", {})}


def _defaults(node: dict[str, Any]) -> dict[str, Any]:
    """Every default under ``node``, nested objects included."""
    values = {}
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub)
        if "default" in sub or (sub.get("type") == "object" and "properties" in sub):
            values[key] = _default_of(sub)
    return values


def section_keys(section: str) -> list[str]:
    """The keys config section ``section`` defines, in the schema's order."""
    return list(_section_schema(section).get("properties", {}))


def schema_defaults(section: str) -> dict[str, Any]:
    """The defaults of a dotted config section, e.g. ``schema_defaults("ldm.train")``.

    A copy: callers may change it without changing the cached schema.
    """
    return copy.deepcopy(_default_of(_section_schema(section)))


def check_settings(section: str, values: Mapping[str, Any]) -> None:
    """Check each value of ``values`` that config section ``section`` defines against its schema,
    as the workflow checks the config (types, ranges, choices, nested keys).

    Keys the section does not define are left to the stage (``from_settings`` refuses the ones
    it does not know), so a stage may take a value from elsewhere, e.g. ``image_size``.

    Raises:
        SettingsError: listing every bad value by its dotted key.
    """
    from synface.configcheck import Validator

    properties = _section_schema(section).get("properties", {})
    definitions = {"$defs": _schema().get("$defs", {})}
    problems = []
    for key, value in values.items():
        if key not in properties:
            continue
        for error in Validator({**definitions, **properties[key]}).iter_errors(value):
            path = [section, key, *map(str, error.absolute_path)]
            problems.append(f"{'.'.join(filter(None, path))}: {error.message}")
    if problems:
        raise SettingsError("; ".join(problems))


def from_settings(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls`` (a dataclass) from ``values`` over the schema defaults of ``section``.

    Raises:
        SettingsError: naming unknown keys, and keys that neither ``values`` nor the schema give.
    """
    fields = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise SettingsError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    merged = {k: v for k, v in schema_defaults(section).items() if k in fields}
    merged.update(values)
    missing = sorted(fields - set(merged))
    if missing:
        raise SettingsError(
            f"{section} setting(s) {', '.join(missing)} missing and without a schema default"
        )
    return cls(**merged)


def without_switches_off(
    record: Mapping[str, Any],
    off: Mapping[str, Any],
    companions: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """``record`` without each switch of ``off`` that is at its off value, nor the keys that
    matter only while it is on (``companions``): a record made before a switch existed stays
    equal to one made after, so its results are neither redone nor refused."""
    dropped = {key for key, value in off.items() if key in record and record[key] == value}
    dropped |= {c for key in dropped for c in (companions or {}).get(key, ())}
    return {key: value for key, value in record.items() if key not in dropped}
