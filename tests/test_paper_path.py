"""The paper path (config/frcsyn.yaml) executed end to end on its real inputs' released formats.

Until this test the real-input branches (ElasticFace `.pth`, CompVis VQ-f4 files, a diffusers
DDPM folder, a folder of JPEGs, py2 `.bin` packs, the ADMIS `.ckpt`) were only planned. Here
`tests/paper_inputs.py` writes each in the format the released file has (random weights, tiny
sizes) and the workflow runs frcsyn.yaml's structure with tests/config/paper_micro.yaml's counts.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from paper_inputs import BENCHMARKS, write_paper_inputs
from snakemake.utils import update_config
from workflow_runner import ROOT, RULES, snakemake

from synface.contexts import generate_diffusers_faces
from synface.io.binpack import read_bin
from synface.ldm.first_stage import FirstStageSpec
from synface.ldm.model import load_ldm
from synface.models.spec import load_backbone

PAPER = ROOT / "config" / "frcsyn.yaml"
PAPER_MICRO = ROOT / "tests" / "config" / "paper_micro.yaml"
CONFIGS = (PAPER, PAPER_MICRO)

# Demo-world rules, and the ones real inputs replace (the VQ-f4 files) or frcsyn switches off.
OFF_THE_PAPER_PATH = ["demo_world", "train_autoencoder", "identity_check", "pack_demo_weights"]
# Every other rule runs on the paper path: real inputs from resources/, the LDM trained on them.
PAPER_RULES = [rule for rule in RULES if rule not in OFF_THE_PAPER_PATH]


def paper_config() -> dict[str, Any]:
    """frcsyn.yaml with the micro diff applied the way Snakemake merges config files."""
    config = yaml.safe_load(PAPER.read_text())
    update_config(config, yaml.safe_load(PAPER_MICRO.read_text()))
    return config


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table as rule -> jobs."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir where the paper micro run completed (once per module)."""
    workdir = tmp_path_factory.mktemp("paper")
    write_paper_inputs(workdir, paper_config())
    result = snakemake(workdir, configfiles=CONFIGS, timeout=2400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return workdir


def test_each_released_format_input_loads_through_synface_readers(tmp_path: Path) -> None:
    """The written files are what the readers accept: strict key loads, the py2 pickle quirk."""
    config = paper_config()
    inputs = write_paper_inputs(tmp_path, config, identities=2, images_per_identity=2)
    for name in BENCHMARKS:
        images, issame = read_bin(inputs["benchmarks"] / f"{name}.bin")
        assert len(images) == 2 * len(issame) == 40 and sum(issame) == 10
        assert images[0][:2] == b"\xff\xd8"  # JPEG bytes, not text
        with pytest.raises(UnicodeDecodeError):  # py2 `str` elements, as the released packs
            pickle.loads((inputs["benchmarks"] / f"{name}.bin").read_bytes())
    model, size = load_backbone(inputs["embedding"])
    assert size == 112 and model.fc.out_features == 512
    spec = json.loads((inputs["first_stage"] / "first_stage.json").read_text())
    assert spec == {k: config["first_stage"][k] for k in ("ddconfig", "embed_dim", "n_embed")}
    FirstStageSpec(**spec).load(inputs["first_stage"])
    _, ldm_spec = load_ldm(inputs["ldm"])
    assert ldm_spec["latent_shape"] == [3, 32, 32]
    assert generate_diffusers_faces(inputs["contexts"], range(1), tmp_path / "f", 112, 0, 1) == 1


@pytest.mark.slow
def test_the_paper_path_runs_every_rule_on_released_format_inputs(paper_run: Path) -> None:
    for rule in PAPER_RULES:
        assert list((paper_run / "logs" / rule).rglob("*.log")), f"{rule} left no log"
    for rule in OFF_THE_PAPER_PATH:
        assert not (paper_run / "logs" / rule).exists(), f"{rule} ran on the paper path"
    rows = json.loads((paper_run / "results/tables/results.json").read_text())
    datasets = yaml.safe_load(PAPER.read_text())["datasets"]
    assert [row["model"] for row in rows] == [d["label"] for d in datasets.values()]
    for row in rows:
        for benchmark in ("LFW", "CFP-FP", "CPLFW", "AGEDB", "CALFW", "Average"):
            assert 0.0 <= row[benchmark] <= 100.0, row
    # The user's files, not demo or trained stand-ins, fed the generative half.
    onnx_info = json.loads((paper_run / "results/embedding/model.onnx.json").read_text())
    assert onnx_info["weights"] == "resources/elasticface/295672backbone.pth"
    config = paper_config()
    candidates = (paper_run / "results/contexts/candidates/manifest.tsv").read_text().splitlines()
    assert len(candidates) == config["contexts"]["candidates"]
    selected = (paper_run / "results/contexts/selected/selected.tsv").read_text().splitlines()
    assert len(selected) == 1 + config["datasets"]["syn_30k"]["identities"]  # header + contexts
    # Each ADMIS identity: its synthetic images plus `oversample` copies of its context face.
    syn_30k = config["datasets"]["syn_30k"]
    labels = [
        line.split("\t")[1]
        for line in (paper_run / "results/datasets/syn_30k/manifest.tsv").read_text().splitlines()
    ]
    assert len(set(labels)) == syn_30k["identities"]
    per_identity = syn_30k["images_per_identity"] + syn_30k["oversample"]
    assert len(labels) == syn_30k["identities"] * per_identity, f"{len(labels)} manifest rows"


@pytest.mark.slow
def test_the_released_admis_checkpoint_replaces_the_trained_ldm(
    paper_run: Path, tmp_path: Path
) -> None:
    """`ldm.source: file`: the `.ckpt` samples every set; nothing LDM-training runs again."""
    workdir = tmp_path / "w"
    shutil.copytree(paper_run, workdir, symlinks=True)
    # A pool refuses faces from another LDM and says to delete it (what a user switching does).
    shutil.rmtree(workdir / "results/synthetic/pools")
    released = tmp_path / "released.yaml"
    released.write_text(yaml.safe_dump({"ldm": {"source": "file"}}))
    result = snakemake(workdir, "-p", configfiles=(*CONFIGS, released), timeout=2400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = job_counts(output)
    assert "train_ldm" not in jobs and "encode_latents" not in jobs, jobs
    assert jobs["select_contexts"] == 1 and jobs["synthesize"] == 3, jobs
    assert jobs["results_table"] == 1, jobs
    checkpoint = paper_config()["ldm"]["checkpoint"]
    probes = jobs["probe_contexts"]
    assert output.count(f"--ldm {checkpoint}") == probes + 3  # every probe and synthesis shard
    assert "results/ldm/ema_averaged_model.ckpt" not in output
