"""The path a new user runs first: config/config.yaml as shipped, from the shipped demo weights.

A workdir is a clone's root: the shipped weights are linked in as `demo_weights/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from workflow_runner import BASE, ROOT, snakemake

# The generative half from the shipped weights on a tiny subset: few contexts, identities,
# images and sampler steps. The world and the architectures stay as shipped (the weights are
# refused otherwise).
TINY_GENERATION = {
    "datasets": {
        name: {"identities": 4, "images_per_identity": 4}
        for name in ("uniform_100", "syn_100", "syn_300")
    }
    | {"context_only_300": {"identities": 4}},
    "contexts": {
        "candidates": 16,
        "steps": 4,
        "batch_size": 16,
        "selection": {"probe_samples": 2, "steps": 4, "batch_size": 16},
    },
    "synthesis": {"steps": 4, "batch_size": 16, "ids_per_shard": 4},
}


def _config(workdir: Path, name: str, values: dict) -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(values))
    return path


def _job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_the_shipped_config_plans_from_the_demo_weights(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", configfiles=(BASE,))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = _job_counts(output)
    # Nothing of the generative half is trained: the shipped weights stand in for it.
    for trained in ("train_autoencoder", "encode_latents", "train_ldm", "pack_demo_weights"):
        assert trained not in jobs, jobs
    datasets = yaml.safe_load(BASE.read_text())["datasets"]
    assert jobs["train_recognition"] == jobs["evaluate"] == len(datasets)
    assert jobs["make_context_candidates"] == jobs["identity_check"] == 1
    # The shipped weights come from the checkout, whatever the working directory.
    assert f"input: {ROOT / 'demo_weights/embedding/backbone.pth'}" in output
    assert f"input: {ROOT / 'demo_weights/ldm/ema_averaged_model.ckpt'}" in output


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("face_size", {"face_size": 64}),
        ("ldm", {"ldm": {"unet": {"initial_channels": 32}}}),
    ],
)
def test_a_config_the_weights_were_not_made_for_is_refused(
    tmp_path: Path, key: str, change: dict
) -> None:
    changed = _config(tmp_path, "changed.yaml", change)
    result = snakemake(tmp_path, "-n", configfiles=(BASE, changed))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config key '{key}' differs from the one the shipped demo weights were made" in output


def test_the_shipped_generator_makes_consistent_identities(tmp_path: Path) -> None:
    """Contexts from the shipped LDM, selected with the shipped thresholds, synthesised and
    embedded by the real rules: images of one identity agree far more than those of two."""
    tiny = _config(tmp_path, "tiny.yaml", TINY_GENERATION)
    target = "results/consistency/syn_100.json"
    result = snakemake(tmp_path, target, configfiles=(BASE, tiny), timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / target).read_text())
    assert (report["identities"], report["images"]) == (4, 16)
    # Measured 0.95 vs 0.33 here (the full-size demo: about 0.9 vs 0.15); an untrained or
    # context-blind generator gives genuine and impostor cosines alike.
    assert report["genuine_mean"] > 0.7
    assert report["genuine_mean"] > report["impostor_mean"] + 0.3
    assert report["auc"] > 0.9
