"""A rerun after a changed input retrains, as Snakemake promises (through the real rules).

It starts from a copy of the session's shared micro run (`micro_run`, tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml
from workflow_runner import BASE, MICRO, snakemake

BACKBONE = "results/recognition/real/backbone.pth"


def test_another_demo_world_seed_retrains_the_recognition_model(
    micro_run: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "w"
    shutil.copytree(micro_run, workdir, symlinks=True)
    before = hashlib.sha256((workdir / BACKBONE).read_bytes()).hexdigest()
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump({"demo_world": {"seed": 1}}))
    result = snakemake(workdir, BACKBONE, configfiles=(BASE, MICRO, seed))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert hashlib.sha256((workdir / BACKBONE).read_bytes()).hexdigest() != before
    log = (workdir / "logs/train_recognition/real.log").read_text()
    assert "epochs 1..2" in log, log[-2000:]
    assert "the training data changed" in log, log[-2000:]
    assert (workdir / "results/runs/recognition/real.previous/META_Epoch_2_checkpoint.pth").exists()
