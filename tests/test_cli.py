"""The ``synface`` command's contract: errors it can explain end in one line and exit code 1."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import re
from pathlib import Path

import pytest

import synface.io.manifest
from synface.cli import COMMANDS, build_parser, main
from synface.settings import SettingsError, schema_defaults


def _refuse(*args: object, **kwargs: object) -> None:
    raise SettingsError("unknown demo setting(s) bogus; known: seed")


def test_a_settings_error_is_one_line_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(synface.io.manifest, "read_manifest", _refuse)
    with pytest.raises(SystemExit) as stop:
        main(["manifest", "--manifest", str(tmp_path / "a.tsv"), "--out", str(tmp_path / "b")])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err == "synface manifest: error: unknown demo setting(s) bogus; known: seed\n"


def test_a_missing_named_input_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.tsv"
    with pytest.raises(SystemExit) as stop:
        main(["manifest", "--manifest", str(missing), "--out", str(tmp_path / "out.tsv")])
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert str(missing) in line and "Traceback" not in line


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only errors synface raises on purpose are shortened; anything else is a bug to report."""

    def crash(*args: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(synface.io.manifest, "read_manifest", crash)
    with pytest.raises(ZeroDivisionError):
        main(["manifest", "--manifest", str(tmp_path / "a.tsv"), "--out", str(tmp_path / "b")])


def test_the_first_stage_is_one_folder_everywhere() -> None:
    """Its weights and first_stage.json travel together: no stage takes a separate spec."""
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    options = {
        name: {option for action in sub._actions for option in action.option_strings}
        for name, sub in commands.choices.items()
    }
    assert set(options) == {name for name, *_ in COMMANDS}
    takes_first_stage = {name for name, flags in options.items() if "--first-stage" in flags}
    assert takes_first_stage >= {"encode-latents", "synthesize", "probe-contexts"}
    assert not any("--first-stage-spec" in flags for flags in options.values())


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    return dict(commands.choices)


def test_every_flag_of_every_command_says_what_it_takes() -> None:
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"synface {name} {action.option_strings[0]} has no help"


def test_the_help_shows_no_rst_markup() -> None:
    texts = [build_parser().format_help()]
    texts += [sub.format_help() for sub in _subcommands().values()]
    for text in texts:
        assert "``" not in text and ":func:" not in text and ":class:" not in text, text


SETTINGS_STAGES = {
    "demo-world": ("synface.demo_world.world", "DemoWorldConfig", "demo_world"),
    "train-recognition": ("synface.recognition.train", "RecognitionTrainConfig", "recognition"),
    "train-autoencoder": ("synface.ldm.first_stage", "AutoencoderTrainConfig", "first_stage.train"),
    "train-ldm": ("synface.ldm.train", "LDMTrainConfig", "ldm.train"),
    "check-identity": ("synface.ldm.identity_check", "IdentityCheckSettings", "ldm.identity_check"),
    "synthesize": ("synface.synthesis", "SynthesisSettings", "synthesis"),
    "select-contexts": ("synface.contexts", "SelectionConfig", "contexts.selection"),
}


@pytest.mark.parametrize("command", sorted(SETTINGS_STAGES))
def test_the_settings_help_names_the_config_section_and_exactly_the_stage_keys(
    command: str,
) -> None:
    module, name, section = SETTINGS_STAGES[command]
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    (settings,) = [a for a in _subcommands()[command]._actions if a.dest == "settings"]
    assert f"config section {section} " in settings.help
    listed = re.search(r"Keys: ([^;.]+)", settings.help).group(1).split(", ")
    also = re.findall(r"(?:also |, )(\w+) \(", settings.help.split("Keys:")[1])
    assert set(listed) | set(also) == fields


def _argv(command: str, settings: str, tmp_path: Path) -> list[str]:
    """``synface COMMAND`` with every required flag given a (non-existent) path or number."""
    argv = [command, "--settings", settings]
    for action in _subcommands()[command]._actions:
        if action.required and action.dest != "settings":
            value = "1" if action.type is int else str(tmp_path / action.dest)
            argv += [action.option_strings[0], value]
    return argv


@pytest.mark.parametrize(
    ("command", "settings", "named"),
    [
        ("train-ldm", '{"stepz": 5, "unet": {}}', "stepz"),
        ("check-identity", '{"bogus": 1}', "bogus"),
        ("train-ldm", "{}", "unet"),
        ("train-recognition", "{}", "image_size"),
        ("select-contexts", '{"steps": 5}', "identities"),
        ("check-identity", '{"steps": "many"}', "ldm.identity_check.steps"),
        ("synthesize", '{"sampler": "euler"}', "synthesis.sampler"),
        ("demo-world", '{"image_size": 32, "seed": -1}', "demo_world.seed"),
        ("demo-world", '{"image_size": 32, "benchmarks": {"lfw": {"strezz": 1}}}', "strezz"),
        ("train-recognition", '{"image_size": 32, "train": {"epochs": 2.5}}', "train.epochs"),
        ("pack-demo-weights", '{"face_sise": 32}', "face_sise"),
    ],
)
def test_bad_settings_end_in_one_line_naming_the_key(
    command: str, settings: str, named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(_argv(command, settings, tmp_path))
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"synface {command}: error: --settings: ") and named in line, line


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "@/nowhere/settings.json"])
def test_settings_that_are_no_json_object_are_a_usage_error_naming_the_flag(
    text: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(_argv("check-identity", text, tmp_path))
    assert stop.value.code == 2
    assert "argument --settings" in capsys.readouterr().err


def _stand_in(
    monkeypatch: pytest.MonkeyPatch, module: str, stage: str, seen: dict[str, object]
) -> None:
    """Replace a stage by a function of the same signature that records what it is given."""
    real = getattr(importlib.import_module(module), stage)

    @functools.wraps(real)
    def record(**given: object) -> None:
        seen.update(given)

    monkeypatch.setattr(real.__module__ + "." + stage, record)


@pytest.mark.parametrize(
    ("command", "module", "stage", "parameter"),
    [
        ("check-identity", "synface.ldm.identity_check", "check_identity", "settings"),
        ("synthesize", "synface.synthesis", "synthesize_shard", "settings"),
    ],
)
def test_empty_settings_take_the_schema_defaults(
    command: str,
    module: str,
    stage: str,
    parameter: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    seen: dict[str, object] = {}
    _stand_in(monkeypatch, module, stage, seen)
    monkeypatch.setattr("numpy.load", lambda path: None)
    main(_argv(command, "{}", tmp_path))
    section = SETTINGS_STAGES[command][2]
    defaults = schema_defaults(section)
    got = dataclasses.asdict(seen[parameter])
    assert got == {key: defaults[key] for key in got}


def test_settings_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    _stand_in(monkeypatch, "synface.ldm.identity_check", "check_identity", seen)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"steps": 3}))
    main(_argv("check-identity", f"@{path}", tmp_path))
    assert seen["settings"].steps == 3
