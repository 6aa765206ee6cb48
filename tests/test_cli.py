"""The ``synface`` command's contract: errors it can explain end in one line and exit code 1."""

from __future__ import annotations

from pathlib import Path

import pytest

import synface.io.manifest
from synface.cli import COMMANDS, build_parser, main
from synface.settings import SettingsError


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
