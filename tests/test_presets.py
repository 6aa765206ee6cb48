"""The two paper presets: config/frcsyn.yaml (ADMIS as published) and the config/frcsyn-plus.yaml
overlay (synface's changes) both plan, and each switch reaches the commands of its rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflow import _paper_inputs
from workflow_runner import ROOT, snakemake

ADMIS = (ROOT / "config" / "frcsyn.yaml",)
PLUS = (*ADMIS, ROOT / "config" / "frcsyn-plus.yaml")

# What each preset's dry run must print: the rules' command lines carry the settings as compact
# JSON (sorted keys) or flags; pools are named <contexts>-<images per identity>.
EXPECTED = {
    "admis": [
        '"precision":"fp32","seed"',  # recognition training, TFace AMP: false
        "--precision fp32",  # evaluation
        '"ema_max_decay":0.0',
        '"whole_context_dropout":0.0',
        '"antialias":false',
        '"sampler":"ddim_admis"',
        "pools/selected-49/",  # 49 synthetic + 5 context copies
        "--face-size 112 --first 0 --last 500",  # the whole frame resized
    ],
    "plus": [
        '"precision":"bf16","seed"',
        "--precision bf16",
        '"ema_max_decay":0.9999',
        '"whole_context_dropout":0.1',
        '"antialias":true',
        '"sampler":"ddim"',
        "pools/selected-50/",
        """--align '{"min_confidence":0.9,"min_face":40}' --first 0 --last 500""",
    ],
}


@pytest.mark.parametrize(("name", "configfiles"), [("admis", ADMIS), ("plus", PLUS)])
def test_both_presets_plan_with_their_own_settings(
    name: str, configfiles: tuple[Path, ...], tmp_path: Path
) -> None:
    _paper_inputs(tmp_path)
    result = snakemake(tmp_path, "-n", "-p", configfiles=configfiles)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    other = "plus" if name == "admis" else "admis"
    for wanted, unwanted in zip(EXPECTED[name], EXPECTED[other], strict=True):
        assert wanted in output, wanted
        assert unwanted not in output, unwanted
