"""Face alignment on a real photograph (scikit-image's ``astronaut``, shipped in its wheel).

Known similarity transforms of the photo must be undone: the aligned crop of a transformed photo
agrees with the crop of the untouched one. Thresholds, from the measured values (MTCNN's
landmarks jitter by 1-2 px, which in hair and eyelashes moves grey levels by several steps):
landmarks mapped back by the transform's inverse within 3 px (measured ≤ 2.2 px, the eyes are
42 px apart), crops within 12 grey levels mean absolute error over the face region (measured
2.7-9.5; a crop that ignores a 30° rotation is off by more than 30).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synface.align import AlignSettings, FaceAligner, align_folder, template, umeyama, warp_faces
from synface.io.rejected import read_rejected

skimage_data = pytest.importorskip("skimage.data")

LANDMARK_PX = 3.0
CROP_MAE = 12.0
FACE_REGION = (slice(20, 104), slice(16, 96))  # rows, columns of the 112 crop: brows to chin
TRANSFORMS = [  # (degrees, scale, shift in px)
    (-30, 1.0, (0, 0)),
    (30, 1.0, (0, 0)),
    (0, 0.7, (0, 0)),
    (0, 1.4, (0, 0)),
    (15, 0.8, (30, -20)),
    (-20, 1.25, (-25, 15)),
    (0, 1.0, (40, 30)),
]


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(AlignSettings.from_settings({}), 112)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage_data.astronaut()


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]


def similarity(degrees: float, scale: float, shift: tuple[int, int], centre: np.ndarray):
    """3×3 matrix: rotate and scale about ``centre``, then shift."""
    a = math.radians(degrees)
    rotation = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = rotation, centre + np.array(shift) - rotation @ centre
    return matrix


def transformed(photo: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The photo under ``matrix`` (Pillow's bilinear warp, black border: not the code tested)."""
    data = tuple(np.linalg.inv(matrix)[:2].ravel())
    image = Image.fromarray(photo)
    return np.asarray(image.transform(image.size, Image.AFFINE, data, Image.BILINEAR))


def test_umeyama_recovers_a_similarity_and_never_reflects():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    matrix = similarity(23, 1.7, (5, -9), np.zeros(2))[:2]
    assert np.allclose(umeyama(src, src @ matrix[:, :2].T + matrix[:, 2]), matrix)
    mirrored = src * [-1, 1]
    assert np.linalg.det(umeyama(src, mirrored)[:, :2]) > 0


def test_warp_puts_source_pixels_where_the_matrix_says():
    image = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    shift = torch.tensor([[[1.0, 0, -5], [0, 1, -7]]])  # crop pixel (x, y) = source (x+5, y+7)
    crop = warp_faces(image, shift, 20)
    assert torch.equal(crop[0], image[0, :, 7:27, 5:25])
    outside = warp_faces(image, torch.tensor([[[1.0, 0, 30], [0, 1, 0]]]), 20)
    assert outside[0, :, :, :25].eq(0).all()  # black border, as cv2.warpAffine(borderValue=0)


def test_the_photo_is_aligned_to_the_template(aligner, photo):
    batch = aligner(as_batch(photo))
    assert batch.kept == [0] and batch.faces.shape == (1, 3, 112, 112)
    found = aligner.landmarks(as_batch(photo))[0]
    matrix = umeyama(found, template(112))
    assert np.abs(found @ matrix[:, :2].T + matrix[:, 2] - template(112)).max() < 8  # her face
    # The crop holds the landmarks where the fitted transform sends them: detected again there.
    again = aligner.landmarks(batch.faces)[0]
    assert np.abs(again - (found @ matrix[:, :2].T + matrix[:, 2])).max() < LANDMARK_PX


@pytest.mark.parametrize(("degrees", "scale", "shift"), TRANSFORMS)
def test_known_similarity_transforms_are_undone(aligner, photo, degrees, scale, shift):
    canonical = aligner.landmarks(as_batch(photo))[0]
    matrix = similarity(degrees, scale, shift, canonical.mean(0))
    moved = as_batch(transformed(photo, matrix))
    found = aligner.landmarks(moved)[0]
    back = (np.linalg.inv(matrix) @ np.c_[found, np.ones(5)].T).T[:, :2]
    assert np.linalg.norm(back - canonical, axis=1).mean() < LANDMARK_PX
    expected = aligner(as_batch(photo)).faces[0].float()
    crop = aligner(moved).faces[0].float()
    assert (crop - expected)[:, *FACE_REGION].abs().mean() < CROP_MAE


def test_ignoring_the_transform_fails_the_crop_threshold(aligner, photo):
    """The threshold is tight enough to see a wrong alignment: the canonical transform applied
    to a photo rotated by 30° is far from the canonical crop."""
    canonical = aligner.landmarks(as_batch(photo))[0]
    moved = as_batch(transformed(photo, similarity(30, 1.0, (0, 0), canonical.mean(0))))
    matrix = torch.tensor(umeyama(canonical, template(112)))[None]
    expected = aligner(as_batch(photo)).faces[0].float()
    wrong = warp_faces(moved, matrix, 112)[0].float()
    assert (wrong - expected)[:, *FACE_REGION].abs().mean() > 2 * CROP_MAE


def test_pictures_without_a_face_are_dropped_with_the_reason(aligner, photo):
    noise = torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8, generator=torch.Generator())
    flat = torch.full((3, 512, 512), 128, dtype=torch.uint8)
    batch = aligner(torch.stack([noise, as_batch(photo)[0], flat]))
    assert batch.kept == [1] and len(batch.faces) == 1
    assert [i for i, _ in batch.dropped] == [0, 2]
    assert all(reason.startswith("no face found") for _, reason in batch.dropped)


def test_low_confidence_and_small_faces_are_dropped(photo):
    strict = FaceAligner(AlignSettings.from_settings({"min_confidence": 1.0}), 112)
    assert "confidence" in strict(as_batch(photo)).dropped[0][1]
    small = np.asarray(Image.fromarray(photo).resize((128, 128), Image.BILINEAR))
    batch = FaceAligner(AlignSettings.from_settings({"min_face": 40}), 112)(as_batch(small))
    assert batch.dropped and not batch.kept  # the face is ≈ 25 px: not searched


def test_align_folder_writes_crops_and_lists_the_faceless(tmp_path, photo):
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    Image.fromarray(photo).save(images / "a" / "0.jpg", quality=95)
    Image.new("RGB", (256, 256), (90, 90, 90)).save(images / "a" / "1.png")
    (images / "a" / "2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "aligned"
    assert align_folder(images, out, 112, AlignSettings.from_settings({})) == 1
    with Image.open(out / "images" / "a" / "0.png") as crop:
        assert crop.size == (112, 112)
    rejected = read_rejected(out)
    assert set(rejected) == {"a/1.png", "a/2.jpg"}
    assert rejected["a/1.png"].startswith("no face found")
    assert not (out / "images" / "a" / "1.png").exists()


def _plan(workdir, targets: list[str], values: dict):
    """The micro config with ``values`` on top, dry run (``-n -p``) for ``targets``."""
    from workflow_runner import BASE, MICRO, snakemake

    diff = workdir / "diff.yaml"
    diff.write_text(yaml.safe_dump(values))
    result = snakemake(workdir, *targets, "-n", "-p", configfiles=(BASE, MICRO, diff))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def _commands(output: str, word: str) -> list[str]:
    """The planned ``synface <word>`` command lines."""
    lines = output.splitlines()
    return [line.split("synface ", 1)[1] for line in lines if f"synface {word} " in line]


def test_a_dataset_with_align_plans_aligned_copies(tmp_path):
    (tmp_path / "resources/raw/a").mkdir(parents=True)
    dataset = {"source": "folder", "path": "resources/raw", "label": "raw", "align": True}
    output = _plan(tmp_path, ["results/datasets/raw/manifest.tsv"], {"datasets": {"raw": dataset}})
    (align,) = _commands(output, "align-faces")
    assert "--images resources/raw --out-dir results/aligned/raw " in align
    assert '"min_face":40' in align and "--face-size 32" in align
    (manifest,) = _commands(output, "manifest")
    assert "--images results/aligned/raw/images " in manifest


@pytest.mark.parametrize("generator", ["ldm", "diffusers"])
def test_unconditional_contexts_with_align_pass_the_settings(tmp_path, generator):
    (tmp_path / "resources/ffhq-ddpm").mkdir(parents=True)
    contexts = {"generator": generator, "model_dir": "resources/ffhq-ddpm", "align": True}
    output = _plan(tmp_path, ["synthetic_sets"], {"contexts": contexts})
    shards = [c for c in _commands(output, "make-contexts") if "uniform" not in c]
    assert len(shards) > 1  # one command per shard of candidates, each aligning its own
    for candidates in shards:
        assert f"--source {generator} " in candidates
        assert """--align '{"min_confidence":0.9,"min_face":40}'""" in candidates
    assert not _commands(output, "align-faces")


def test_a_context_database_with_align_is_aligned_first(tmp_path):
    (tmp_path / "resources/db").mkdir(parents=True)
    contexts = {"source": "database", "images": "resources/db", "align": True}
    output = _plan(tmp_path, ["synthetic_sets"], {"contexts": contexts})
    (align,) = _commands(output, "align-faces")
    assert "--images resources/db --out-dir results/aligned/context-database " in align
    (candidates,) = [c for c in _commands(output, "make-contexts") if "database" in c]
    assert "--images results/aligned/context-database/images " in candidates


def test_generated_candidates_are_aligned_and_the_faceless_listed(tmp_path, photo):
    """``contexts.align``: the frames a generator makes become aligned crops; a frame without a
    face gets no image and no manifest line, and is listed with the reason."""
    from synface.contexts import _write_candidate_shard
    from synface.io.manifest import read_manifest

    frames = {0: as_batch(photo)[0], 1: torch.full((3, 512, 512), 70, dtype=torch.uint8)}
    frames[2] = frames[0]

    def make_faces(jobs: list[tuple[int, int]]) -> torch.Tensor:
        return torch.stack([frames[i] for i, _ in jobs])

    settings = AlignSettings.from_settings({})
    assert _write_candidate_shard(make_faces, range(3), tmp_path, 112, 2, {}, None, settings) == 2
    assert [e.label for e in read_manifest(tmp_path / "shards/0-3.tsv")] == [0, 2]
    assert list(read_rejected(tmp_path / "rejected/0-3")) == ["images/00001/0.png"]
    assert not (tmp_path / "images/00001/0.png").exists()
    with Image.open(tmp_path / "images/00002/0.png") as face:
        crop = torch.from_numpy(np.array(face)).permute(2, 0, 1)
    assert torch.equal(crop, FaceAligner(settings, 112)(as_batch(photo)).faces[0])


def test_aligning_a_database_with_admis_embeddings_is_refused(tmp_path):
    from workflow_runner import BASE, MICRO, snakemake

    (tmp_path / "resources/db").mkdir(parents=True)
    contexts = {"source": "database", "images": "resources/db", "align": True, "embed_npy": "e"}
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump({"contexts": contexts}))
    result = snakemake(tmp_path, "-n", configfiles=(BASE, MICRO, tmp_path / "diff.yaml"))
    assert result.returncode != 0
    assert "contexts.align: true and contexts.embed_npy are set" in result.stdout + result.stderr


def test_a_folder_without_any_face_stops_naming_the_list(tmp_path):
    (tmp_path / "images/a").mkdir(parents=True)
    Image.new("RGB", (128, 128), (90, 90, 90)).save(tmp_path / "images/a/0.png")
    with pytest.raises(ValueError, match="none of its 1 images is usable") as error:
        align_folder(tmp_path / "images", tmp_path / "out", 112, AlignSettings.from_settings({}))
    assert "rejected.tsv" in str(error.value)
    assert list(read_rejected(tmp_path / "out")) == ["a/0.png"]
