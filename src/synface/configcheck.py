"""Config validation with errors a researcher can act on.

Snakemake merges every ``--configfile`` into one dict before the workflow sees it; a bare
jsonschema error then says neither which key was wrong nor in which file. This module names
both, suggests the key that was probably meant, and fills the schema's defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError


def _is_integer(checker: Any, instance: Any) -> bool:
    """Integers only: JSON Schema's own check accepts 2.0, which later fails as a count."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# Shared with synface.settings.check_settings, which checks a stage's --settings the same way.
Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


class ConfigError(ValueError):
    """The config does not follow ``workflow/schemas/config.schema.yaml``."""


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def read_sources(paths: Sequence[Path | str]) -> dict[str, Any]:
    """The raw content of each config file, keyed by its name, for locating a bad key."""
    return {str(p): yaml.safe_load(Path(p).read_text()) for p in paths if Path(p).exists()}


def config_sources(
    paths: Sequence[Path | str], command_line: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Every origin of a merged Snakemake config: the config files, then ``--config`` if given."""
    sources = read_sources(paths)
    if command_line:
        sources["--config"] = dict(command_line)
    return sources


_ABSENT = object()


def _lookup(node: Any, path: Sequence[Any]) -> Any:
    """The value at ``path`` inside one source, or ``_ABSENT``."""
    for part in path:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_dict or in_list):
            return _ABSENT
        node = node[part]
    return node


def _files_defining(
    path: Sequence[Any], sources: Mapping[str, Any], value: Any = _ABSENT
) -> list[str]:
    """Which config sources spell out ``path`` (the culprit when several are merged): those
    holding the offending ``value`` if any does, else every one that sets the key."""
    found = {name: _lookup(node, path) for name, node in sources.items()}
    found = {name: held for name, held in found.items() if held is not _ABSENT}
    holding = [name for name, held in found.items() if type(held) is type(value) and held == value]
    return holding or list(found)


def _describe(error: ValidationError, sources: Mapping[str, Any]) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        messages = []
        for key in sorted(set(error.instance) - set(known)):
            where = _files_defining([*path, key], sources) or list(sources)
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            messages.append(
                f"unknown config key '{_dotted([*path, key])}' in {', '.join(where)}{hint} "
                f"(allowed here: {', '.join(known)})"
            )
        return messages
    where = _files_defining(path, sources, error.instance) or list(sources)
    return [f"config key '{_dotted(path)}' in {', '.join(where)}: {error.message}"]


def _fill_defaults(node: dict[str, Any], schema: dict[str, Any]) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = sub["default"]
        if isinstance(node.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(node[key], sub)
        if isinstance(node.get(key), dict) and isinstance(sub.get("additionalProperties"), dict):
            for value in node[key].values():
                if isinstance(value, dict):
                    _fill_defaults(value, sub["additionalProperties"])


def validate_config(
    config: dict[str, Any], schema_path: Path, sources: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``config`` against the schema (in place), fill defaults, return it.

    ``sources`` maps each origin of the merged config (a file name, or ``--config``) to what it
    held, so that an error names the origin of the bad key.

    Raises:
        ConfigError: listing every problem, each naming the key and the file it came from.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        problems = [line for error in errors for line in _describe(error, sources)]
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    _fill_defaults(config, schema)
    return config
