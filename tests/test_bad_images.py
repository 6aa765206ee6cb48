"""Every stage that reads face images survives damaged and hostile files (issue 8, acceptance).

Each stage runs as a ``synface`` subprocess over a folder of good faces plus a short PNG, a
header-only 20000² PNG, a JPEG whose header claims 16000², a truncated JPEG and a missing file,
so a crash in a native decoder shows as a negative return code (a signal) instead of killing
pytest. Dataset stages skip the bad files and list them in ``rejected.tsv``; evaluation refuses
a benchmark pack holding one, naming the pack and the image index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_images import face, jpeg, write_bad_faces

from synface.cli import main
from synface.io.binpack import write_bin

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_weights"
SIZE = 32
GOOD_FACES = 6


def synface(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process: a signal shows as a negative return code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "synface.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def survived(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr[-2000:]}"
    assert result.returncode == code, result.stderr[-3000:]


def rejected(folder: Path) -> set[str]:
    lines = (folder / "rejected.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path\treason"
    return {Path(line.split("\t")[0]).stem for line in lines[1:]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of good 32² faces (two identities) with every bad kind interleaved."""
    root = tmp_path_factory.mktemp("bad_images")
    lines = []
    for i in range(GOOD_FACES):
        path = root / "images" / f"{i % 2}" / f"good{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(face(SIZE, seed=i)))
        lines.append(f"images/{i % 2}/good{i}.jpg\t{i % 2}")
    for i, path in enumerate(write_bad_faces(root / "images" / "bad").values()):
        lines.insert(2 * i + 1, f"images/bad/{path.name}\t{i % 2}")
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


BAD = {"short_png", "header_only_huge_png", "huge_header_jpeg", "truncated_jpeg", "missing_file"}


def first_stage_args() -> list[str]:
    """The shipped demo first stage: its folder carries the weights and first_stage.json."""
    return ["--first-stage", str(DEMO / "first_stage")]


def test_packing_lists_every_bad_file(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    result = synface(
        *("pack-tfrecords", "--manifest", str(dataset), "--out-dir", str(out)),
        *("--name", "TFR-bad", "--image-size", str(SIZE)),
    )
    survived(result, 0)
    assert rejected(out) == BAD
    assert json.loads((out / "pack.json").read_text())["records"] == GOOD_FACES


@pytest.fixture(scope="module")
def embeddings(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo embedding model, exported, run over the damaged dataset."""
    folder = tmp_path_factory.mktemp("embeddings")
    onnx = folder / "model.onnx"
    # In-process: the export is not under test, and a second interpreter start costs seconds.
    weights = DEMO / "embedding" / "backbone.pth"
    main(["export-embedding-model", "--weights", str(weights), "--out", str(onnx)])
    out = folder / "out"
    result = synface(
        *("extract-embeddings", "--model", str(onnx), "--manifest", str(dataset)),
        *("--out-dir", str(out), "--batch-size", "4"),
    )
    survived(result, 0)
    return out


def test_extraction_skips_and_lists_bad_files(embeddings: Path) -> None:
    assert rejected(embeddings) == BAD
    names = (embeddings / "names.txt").read_text().splitlines()
    assert [Path(name).stem for name in names] == [f"good{i}" for i in range(GOOD_FACES)]
    assert np.load(embeddings / "embeddings.npy").shape[0] == GOOD_FACES


def test_latent_encoding_follows_the_kept_embeddings(
    dataset: Path, embeddings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "latents"
    result = synface(
        *("encode-latents", "--manifest", str(dataset), "--embeddings", str(embeddings)),
        *first_stage_args(),
        *("--image-size", str(SIZE), "--out-dir", str(out), "--batch-size", "4"),
    )
    survived(result, 0)
    latents, contexts = np.load(out / "latents.npy"), np.load(out / "contexts.npy")
    assert latents.shape[0] == contexts.shape[0] == GOOD_FACES
    assert np.array_equal(contexts, np.load(embeddings / "embeddings.npy"))


def test_autoencoder_training_skips_and_lists_bad_files(dataset: Path, tmp_path: Path) -> None:
    config = json.loads((DEMO / "PROVENANCE.json").read_text())["config"]["first_stage"]
    spec = {key: config[key] for key in ("ddconfig", "embed_dim", "n_embed")}
    settings = {"spec": spec, "image_size": SIZE, "batch_size": 4, "steps": 2, "log_every": 1}
    out = tmp_path / "first_stage"
    result = synface(
        *("train-autoencoder", "--manifest", str(dataset), "--out-dir", str(out)),
        *("--run-dir", str(tmp_path / "run"), "--settings", json.dumps(settings)),
    )
    survived(result, 0)
    assert rejected(out) == BAD


def test_a_benchmark_pack_with_a_bad_image_stops_naming_pack_and_index(tmp_path: Path) -> None:
    """The short PNG, which killed the evaluation with SIGSEGV; the other kinds are refused
    in-process by tests/test_images.py, through the same ``decode_pack_images``."""
    images = [jpeg(face(SIZE, seed=i)) for i in range(20)]
    images[13] = write_bad_faces(tmp_path / "faces")["short_png"].read_bytes()
    pack = tmp_path / "lfw.bin"
    write_bin(pack, images, [i % 2 == 0 for i in range(10)])
    result = synface(
        *("evaluate", "--weights", str(DEMO / "embedding" / "backbone.pth")),
        *("--pack", f"lfw={pack}", "--out", str(tmp_path / "eval.json")),
    )
    survived(result, 1)
    assert f"{pack}: image 13: undecodable: PNG pixel data ends after" in result.stderr
    assert not (tmp_path / "eval.json").exists()
