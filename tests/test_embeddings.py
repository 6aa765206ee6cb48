"""Embedding model export (ONNX parity, dynamic batch), extraction, and ADMIS embedding files."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from reference_weights import fill_state_dict, manifest
from torchvision.transforms.v2 import functional as tvf

from synface import embeddings
from synface.cli import main
from synface.demo_world.render import (
    NuisanceStrength,
    render_face,
    sample_identity,
    sample_nuisance,
)
from synface.embeddings import OnnxParityError, extract_embeddings
from synface.io.embeddings import read_admis_embeddings, read_embeddings, write_admis_embeddings
from synface.io.pickles import UnsafePickleError
from synface.models import build_model

# A narrow iresnet at demo resolution: the real export path at a fraction of the cost.
SPEC = {
    "name": "iresnet",
    "args": {"depth": 18, "input_size": 32, "channels": [8, 16, 32, 64], "num_features": 64},
}
SIZE = 32


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """Weights + spec of a backbone with non-trivial BN statistics (the fixtures' fill rule)."""
    folder = tmp_path_factory.mktemp("backbone")
    model = build_model(SPEC["name"], **SPEC["args"])
    model.load_state_dict(fill_state_dict(manifest(model), seed=3, gain=0.7), strict=True)
    weights = folder / "backbone.pth"
    torch.save(model.state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps(SPEC))
    return weights, model.eval()


@pytest.fixture(scope="module")
def onnx_model(backbone) -> Path:
    weights, _ = backbone
    out = weights.parent / "onnx" / "model.onnx"
    main(["export-embedding-model", "--weights", str(weights), "--out", str(out)])
    return out


def _faces(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Demo-world faces with mild nuisances: realistic inputs for the parity check."""
    rng = np.random.default_rng(seed)
    strength = NuisanceStrength.uniform(0.5)
    return [
        render_face(sample_identity(rng), sample_nuisance(rng, strength), size)
        for _ in range(count)
    ]


def _write_dataset(root: Path, faces: list[np.ndarray]) -> Path:
    """PNG (lossless) faces in images/<identity>/<n>.png and a manifest in a shuffled order."""
    lines = []
    for i, face in enumerate(faces):
        path = root / "images" / f"{i % 3:03d}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(path)
        lines.append(f"images/{i % 3:03d}/{i}.png\t{i % 3}")
    manifest_path = root / "manifest.tsv"
    manifest_path.write_text("\n".join(reversed(lines)) + "\n")
    return manifest_path


def _torch_embeddings(model: torch.nn.Module, faces: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != SIZE:
        x = tvf.resize(x, [SIZE, SIZE], antialias=True)
    with torch.no_grad():
        return torch.nn.functional.normalize(model(x), dim=1).double().numpy()


def test_export_records_passing_parity_and_the_input_contract(onnx_model):
    info = json.loads(onnx_model.with_name("model.onnx.json").read_text())
    parity = info["parity"]
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["min_cosine"] >= 0.9999
    assert parity["batch_sizes"] == [1, 4]
    assert info["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert info["architecture"] == SPEC
    # Only the two outputs: the temporary export was renamed, not left behind.
    assert sorted(p.name for p in onnx_model.parent.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_onnx_runs_at_any_batch_size(onnx_model, backbone):
    _, model = backbone
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for batch_size in (1, 5):
        x = torch.rand(batch_size, 3, SIZE, SIZE, generator=generator) * 2 - 1
        (actual,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert actual.shape == (batch_size, 64)
        assert np.abs(actual - expected).max() <= 1e-4


def test_extraction_matches_torch_on_demo_faces_in_manifest_order(onnx_model, backbone, tmp_path):
    _, model = backbone
    faces = _faces(7, SIZE)
    manifest_path = _write_dataset(tmp_path / "data", faces)
    out = tmp_path / "emb"

    args = ["extract-embeddings", "--model", str(onnx_model), "--manifest", str(manifest_path)]
    main([*args, "--out-dir", str(out), "--batch-size", "3", "--threads", "1"])
    rows, names = read_embeddings(out)

    # The manifest lists the faces in reverse; rows and names follow the manifest.
    order = list(reversed(range(len(faces))))
    assert names == [f"images/{i % 3:03d}/{i}.png" for i in order]
    assert rows.dtype == np.float32
    assert rows.shape == (7, 64)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    expected = _torch_embeddings(model, [faces[i] for i in order])
    assert np.abs(rows - expected).max() <= 1e-4
    assert (rows * expected).sum(axis=1).min() >= 0.9999
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "names.txt", "rejected.tsv"]
    assert (out / "rejected.tsv").read_text() == "path\treason\n"


def test_batch_size_does_not_change_the_embeddings(onnx_model, tmp_path):
    manifest_path = _write_dataset(tmp_path / "data", _faces(5, SIZE, seed=1))
    one = extract_embeddings(onnx_model, manifest_path, tmp_path / "a", batch_size=1, threads=1)
    extract_embeddings(onnx_model, manifest_path, tmp_path / "b", batch_size=4, threads=1)
    assert one.count == 5
    assert one.providers[-1] == "CPUExecutionProvider"
    a, _ = read_embeddings(tmp_path / "a")
    b, _ = read_embeddings(tmp_path / "b")
    assert np.abs(a - b).max() <= 1e-6


def test_larger_images_are_resized_to_the_model_input(onnx_model, backbone, tmp_path):
    _, model = backbone
    faces = _faces(2, 48, seed=2)
    manifest_path = _write_dataset(tmp_path / "data", faces)
    summary = extract_embeddings(onnx_model, manifest_path, tmp_path / "emb", 2, threads=1)
    rows, _ = read_embeddings(tmp_path / "emb")
    assert summary.input_size == SIZE
    assert np.abs(rows - _torch_embeddings(model, faces[::-1])).max() <= 1e-4


def test_an_unreadable_image_is_skipped_listed_and_left_out_of_the_rows(
    onnx_model, backbone, tmp_path
):
    _, model = backbone
    faces = _faces(4, SIZE, seed=3)
    manifest_path = _write_dataset(tmp_path / "data", faces)
    (tmp_path / "data" / "images" / "001" / "1.png").write_bytes(b"not an image")
    extract_embeddings(onnx_model, manifest_path, tmp_path / "emb", 2, threads=1)
    rows, names = read_embeddings(tmp_path / "emb")
    # Manifest order is 3, 2, 1, 0; face 1 is gone from rows and names alike.
    assert names == ["images/000/3.png", "images/002/2.png", "images/000/0.png"]
    assert np.abs(rows - _torch_embeddings(model, [faces[3], faces[2], faces[0]])).max() <= 1e-4
    rejected = (tmp_path / "emb" / "rejected.tsv").read_text().splitlines()
    assert rejected[1].startswith("images/001/1.png\tundecodable: ")


def test_with_no_usable_image_extraction_stops_naming_it(onnx_model, tmp_path):
    manifest_path = _write_dataset(tmp_path / "data", _faces(1, SIZE))
    (tmp_path / "data" / "images" / "000" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"none of its 1 images .*images/000/0\.png: undecodable"):
        extract_embeddings(onnx_model, manifest_path, tmp_path / "emb", 1, threads=1)
    assert not (tmp_path / "emb" / "embeddings.npy").exists()
    assert "images/000/0.png" in (tmp_path / "emb" / "rejected.tsv").read_text()


def test_a_divergent_export_fails_the_parity_check_and_leaves_no_model(
    backbone, tmp_path, monkeypatch
):
    """The real exporter and parity check, with the exported graph made from weights that differ
    from the checkpoint's by 5 % noise on one layer (a wrong state-dict key, a lossy cast)."""
    weights, _ = backbone
    real_export = embeddings._export

    def export_perturbed(loaded: torch.nn.Module, size: int, path: Path) -> None:
        diverged = copy.deepcopy(loaded)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            conv = diverged.layer1[0].conv1.weight
            conv += 0.05 * conv.std() * torch.randn(conv.shape, generator=generator)
        real_export(diverged, size, path)

    monkeypatch.setattr(embeddings, "_export", export_perturbed)
    out = tmp_path / "model.onnx"
    with pytest.raises(OnnxParityError, match=r"backbone\.pth: the ONNX export disagrees"):
        embeddings.export_onnx(weights, out)
    assert list(tmp_path.iterdir()) == []


def test_admis_files_round_trip(tmp_path):
    rows = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    names = ["0000045/001.jpg", "0000045/002.jpg", "0000099/001.jpg"]
    npy, pkl = tmp_path / "elastic_embed.npy", tmp_path / "image_names.pkl"

    write_admis_embeddings(rows, names, npy, pkl)
    loaded, loaded_names = read_admis_embeddings(npy, pkl)

    assert loaded_names == names
    assert np.array_equal(loaded, rows)
    # The reference reads them with plain numpy and pickle (generative.md §10.1).
    assert pickle.loads(pkl.read_bytes()) == names
    assert np.array_equal(np.load(npy), rows)


def test_admis_row_count_mismatch_names_both_files(tmp_path):
    npy, pkl = tmp_path / "elastic_embed.npy", tmp_path / "image_names.pkl"
    np.save(npy, np.zeros((2, 512), np.float32))
    pkl.write_bytes(pickle.dumps(["a.jpg"]))
    with pytest.raises(ValueError, match=r"elastic_embed\.npy has 2 rows but .*image_names\.pkl"):
        read_admis_embeddings(npy, pkl)


def test_admis_names_must_be_a_list_of_str(tmp_path):
    npy, pkl = tmp_path / "elastic_embed.npy", tmp_path / "image_names.pkl"
    np.save(npy, np.zeros((1, 512), np.float32))
    pkl.write_bytes(pickle.dumps([b"a.jpg"]))
    with pytest.raises(ValueError, match=r"image_names\.pkl: expected a pickled list of str"):
        read_admis_embeddings(npy, pkl)


class _Payload:
    """What a malicious names file would carry: unpickling it creates `sentinel`."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_a_malicious_names_pickle_is_refused_unexecuted(tmp_path):
    sentinel = tmp_path / "pwned"
    npy, pkl = tmp_path / "elastic_embed.npy", tmp_path / "image_names.pkl"
    np.save(npy, np.zeros((2, 512), np.float32))
    payload = pickle.dumps(["a.jpg", _Payload(sentinel)], protocol=4)
    pkl.write_bytes(payload)

    with pytest.raises(
        UnsafePickleError, match=r"image_names\.pkl: refused to load global .*touch"
    ):
        read_admis_embeddings(npy, pkl)
    assert not sentinel.exists()

    # The payload is live: a plain unpickler runs it.
    pickle.loads(payload)
    assert sentinel.exists()


def test_a_model_whose_external_data_escapes_its_folder_is_refused(tmp_path):
    """An ONNX initializer may point at a file beside the model; ONNX Runtime must refuse one
    outside the model's folder (here a 'secret' next to it), before anything is read."""
    from onnx import TensorProto, helper

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["images", "w"], ["embeddings"])],
        "escape",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 2, 4])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 3, 2, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx_path = tmp_path / "model" / "model.onnx"
    onnx_path.parent.mkdir()
    onnx_path.write_bytes(model.SerializeToString())
    manifest_path = _write_dataset(tmp_path / "data", _faces(1, SIZE))
    with pytest.raises(Exception, match="External data path escapes model directory"):
        extract_embeddings(onnx_path, manifest_path, tmp_path / "emb", 1, threads=1)
    assert not (tmp_path / "emb").exists()
