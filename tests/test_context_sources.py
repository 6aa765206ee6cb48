"""Every context source plans, its missing inputs are named at start-up, and a context database
with ADMIS's released embeddings runs through the real rules."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from workflow_runner import BASE, MICRO, snakemake

DATABASE = "resources/admis/context_database/images"
EMBED_NPY = "resources/admis/elastic_embed.npy"
NAMES_PKL = "resources/admis/image_names.pkl"
MODEL_DIR = "resources/ffhq-ddpm"

SOURCES = {
    "unconditional_ldm": {"contexts": {"source": "unconditional", "generator": "ldm"}},
    "unconditional_diffusers": {
        "contexts": {"source": "unconditional", "generator": "diffusers", "model_dir": MODEL_DIR}
    },
    "database": {"contexts": {"source": "database", "images": DATABASE}},
    "database_embed_npy": {
        "contexts": {
            "source": "database",
            "images": DATABASE,
            "embed_npy": EMBED_NPY,
            "names_pkl": NAMES_PKL,
        }
    },
    # Every synthetic set on random contexts: no context faces at all.
    "uniform": {
        "contexts": {"source": "database", "images": DATABASE},
        "datasets": {
            "syn_100": {"contexts": "uniform", "oversample": 0},
            "syn_300": {"contexts": "uniform", "oversample": 0},
            "context_only_300": {"source": "demo"},
        },
    },
}


def _diff(workdir: Path, values: dict) -> Path:
    path = workdir / "diff.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _plan(workdir: Path, values: dict) -> subprocess.CompletedProcess[str]:
    return snakemake(
        workdir, "synthetic_sets", "-n", "-p", configfiles=(BASE, MICRO, _diff(workdir, values))
    )


def _place_inputs(workdir: Path) -> None:
    """Stand-ins for every context input (the dry run checks that they exist)."""
    for folder in (DATABASE, MODEL_DIR):
        (workdir / folder).mkdir(parents=True)
    for path in (EMBED_NPY, NAMES_PKL):
        (workdir / path).touch()


def _planned(output: str) -> tuple[set[str], list[str], bool]:
    """The planned rules, the commands making context candidates, and whether the candidates
    are embedded here."""
    lines = output.splitlines()
    rules = {line.split()[1].rstrip(":") for line in lines if line.startswith("rule ")}
    candidates = [
        line for line in lines if "make-contexts" in line and "--source uniform" not in line
    ]
    embedded = any("--out-dir results/embeddings/candidates " in line for line in lines)
    return rules, candidates, embedded


@pytest.mark.parametrize(
    ("source", "command", "absent"),
    [
        ("unconditional_ldm", "--source ldm --ldm results/ldm/", "--model-dir"),
        ("unconditional_diffusers", f"--source diffusers --model-dir {MODEL_DIR}", "--ldm"),
        ("database", f"--source database --images {DATABASE} --out-dir", "--embed-npy"),
        ("database_embed_npy", f"--embed-npy {EMBED_NPY} --names-pkl {NAMES_PKL}", "--ldm"),
    ],
)  # fmt: skip
def test_each_context_source_plans_its_rules(
    tmp_path: Path, source: str, command: str, absent: str
) -> None:
    _place_inputs(tmp_path)
    result = _plan(tmp_path, SOURCES[source])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rules, candidates, embedded = _planned(result.stdout)
    # Generated candidates come in shards (8 in shards of 3 in the micro config); a database
    # is listed by one job.
    assert len(candidates) == (3 if source.startswith("unconditional") else 1), candidates
    assert all(command in line and absent not in line for line in candidates), candidates
    assert {"context_candidates", "select_contexts", "context_faces_manifest"} <= rules
    # ADMIS's embeddings are imported; every other source's candidates are embedded here.
    assert embedded == (source != "database_embed_npy")


def test_sets_on_uniform_contexts_plan_no_context_source(tmp_path: Path) -> None:
    """The database the `uniform` config names is absent: nothing uses it, nothing asks for it."""
    result = _plan(tmp_path, SOURCES["uniform"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rules, candidates, embedded = _planned(result.stdout)
    assert {"uniform_contexts", "synthesize"} <= rules, rules
    assert not {"context_candidates", "select_contexts"} & rules, rules
    assert not candidates and not embedded


def test_an_unset_diffusers_folder_is_named(tmp_path: Path) -> None:
    values = {"contexts": {"source": "unconditional", "generator": "diffusers"}}
    result = _plan(tmp_path, values)
    assert result.returncode != 0
    assert "contexts.model_dir: not set. Put a diffusers" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("unconditional_diffusers", [f"contexts.model_dir: '{MODEL_DIR}'"]),
        ("database", [f"contexts.images: '{DATABASE}'"]),
        (
            "database_embed_npy",
            [
                f"contexts.images: '{DATABASE}'",
                f"contexts.embed_npy: '{EMBED_NPY}'",
                f"contexts.names_pkl: '{NAMES_PKL}'",
            ],
        ),
    ],
)
def test_a_missing_context_input_is_named_in_one_message(
    tmp_path: Path, source: str, missing: list[str]
) -> None:
    result = _plan(tmp_path, SOURCES[source])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    message = output.split("missing real inputs", 1)[1]
    for name in missing:
        assert name in message, output[-3000:]


def _write_context_database(workdir: Path, faces: int, dim: int, face_size: int) -> np.ndarray:
    """A context database in ADMIS's release format: one face per person, `elastic_embed.npy`
    (a plain N x dim array) and `image_names.pkl` (a pickled list of relative paths) in an order
    of their own. Returns the embeddings in file-name order."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(faces, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    images = workdir / DATABASE
    images.mkdir(parents=True)
    names = []
    for i in range(faces):
        pixels = rng.integers(0, 256, size=(face_size, face_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:05d}.png")
        names.append(f"images/{i:05d}.png")
    order = rng.permutation(faces)
    np.save(workdir / EMBED_NPY, embeddings[order])
    with (workdir / NAMES_PKL).open("wb") as f:
        pickle.dump([names[i] for i in order], f, protocol=2)
    return embeddings


def test_a_context_database_with_admis_embeddings_runs(micro_run: Path, tmp_path: Path) -> None:
    """The micro run switched to a context database with `embed_npy`: the imported embeddings
    (reordered to the faces) become the contexts, and a synthetic set is made from them and the
    database's faces."""
    workdir = tmp_path / "w"
    shutil.copytree(micro_run, workdir, symlinks=True)
    face_size = yaml.safe_load(BASE.read_text())["face_size"]
    embeddings = _write_context_database(workdir, faces=7, dim=512, face_size=face_size)
    diff = _diff(workdir, SOURCES["database_embed_npy"])
    # New contexts: the pool refuses to mix them with its faces until it is deleted by hand.
    shutil.rmtree(workdir / "results/synthetic/pools/selected-2/images")
    result = snakemake(
        workdir, "results/datasets/syn_100/manifest.tsv", configfiles=(BASE, MICRO, diff)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "rule context_candidates:" in output and "rule extract_embeddings:" not in output
    assert "rule make_context_candidates:" not in output
    selected = workdir / "results/contexts/selected"
    contexts = np.load(selected / "contexts.npy")
    rows = [
        int(Path(line.split("\t")[0]).stem)
        for line in (selected / "faces.tsv").read_text().splitlines()
    ]
    assert len(rows) == 5
    np.testing.assert_array_equal(contexts, embeddings[rows])
    manifest = (workdir / "results/datasets/syn_100/manifest.tsv").read_text()
    assert "context_database" in manifest
