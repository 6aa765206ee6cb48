from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import write_toy_dataset
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

from synface import runtime
from synface.checkpoint import load
from synface.packing import pack_tfrecords
from synface.recognition import train as train_module
from synface.recognition.data import (
    AugmentConfig,
    DecodeAugmentCollate,
    DeviceDecoded,
    GlobalBatchSampler,
    RecordDataset,
)
from synface.recognition.train import (
    RecipeConfig,
    RecognitionTrainConfig,
    learning_rate,
    train_recognition,
)

TINY = {
    "image_size": 32,
    "backbone": {"depth": 18, "channels": [8, 16, 32, 64], "embedding_size": 64},
    "head": {"scale": 16.0, "margin": 0.2},
    "train": {
        "global_batch_size": 24,
        "epochs": 3,
        "lrs": [0.05, 0.005],
        "stages": [2],
        "log_every": 1,
        "seed": 7,
        "num_workers": 0,
    },
    "augment": {"flip_p": 0.5, "crop_p": 0.0},
}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy dataset packed once for the module; tests only read it."""
    root = tmp_path_factory.mktemp("packed")
    pack_tfrecords(write_toy_dataset(root / "toy"), root / "packed", "TFR-toy", image_size=32)
    return root / "packed"


def _recipe(**train: object) -> RecipeConfig:
    return RecognitionTrainConfig.from_settings({"image_size": 32, "train": train}).train


def test_step_schedule_and_warmup_follow_tface() -> None:
    cfg = _recipe(lrs=[0.1, 0.01, 0.001, 0.0001], stages=[22, 28, 32])
    assert [learning_rate(cfg, e, 10_000) for e in (0, 21, 22, 27, 28, 32, 39)] == [
        0.1,
        0.1,
        0.01,
        0.01,
        0.001,
        0.0001,
        0.0001,
    ]
    warm = _recipe(lrs=[0.1, 0.01], stages=[5], warmup_steps=10)
    assert learning_rate(warm, 0, 0) == 0.0
    assert learning_rate(warm, 0, 5) == pytest.approx(0.05)
    assert learning_rate(warm, 0, 11) == 0.1


def test_lrs_must_have_one_more_value_than_stages() -> None:
    with pytest.raises(ValueError, match="one more learning rate"):
        _recipe(lrs=[0.1], stages=[3])


def test_every_world_size_sees_the_same_global_batches() -> None:
    single = list(GlobalBatchSampler(50, 12, rank=0, world_size=1, seed=3))
    halves = [list(GlobalBatchSampler(50, 12, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    assert len(single) == 4  # the incomplete last batch is dropped
    for step, batch in enumerate(single):
        assert halves[0][step] + halves[1][step] == batch
    sampler = GlobalBatchSampler(50, 12, rank=0, world_size=1, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != single


def test_a_batch_larger_than_the_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="global_batch_size"):
        GlobalBatchSampler(10, 12, rank=0, world_size=1, seed=0)


def test_the_gpu_loader_decodes_in_the_main_process_to_the_same_batches(packed: Path) -> None:
    """On a GPU the workers only read records and the GPU decodes and augments each batch
    (``DeviceDecoded``); run on the CPU, that path gives the CPU loader's batches exactly."""
    dataset = RecordDataset(packed / "TFR-toy.txt", packed)
    cfg = RecognitionTrainConfig.from_settings({**TINY, "augment": {"flip_p": 0.5, "crop_p": 0.7}})
    cuda = train_module._loader(dataset, cfg, runtime.Distributed(0, 1, 0, torch.device("cuda")))
    assert isinstance(cuda, DeviceDecoded) and cuda.collate.device == torch.device("cuda")
    plain = train_module._loader(dataset, cfg, runtime.Distributed(0, 1, 0, torch.device("cpu")))
    on_cpu = DeviceDecoded(cuda.loader, plain.collate_fn)
    assert len(on_cpu) == len(plain) > 1
    for epoch in (0, 1):
        plain.batch_sampler.set_epoch(epoch)
        on_cpu.batch_sampler.set_epoch(epoch)
        for (images, labels), (expected, expected_labels) in zip(on_cpu, plain, strict=True):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


def test_collate_gives_normalised_batches(packed: Path) -> None:
    dataset = RecordDataset(packed / "TFR-toy.txt", packed)
    collate = DecodeAugmentCollate(32, AugmentConfig(flip_p=1.0, crop_p=1.0, **_ranges()))
    images, labels = collate([dataset[(0, 5)], dataset[(20, 6)]])
    assert images.shape == (2, 3, 32, 32)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels.tolist() == [dataset.entries[0].label, dataset.entries[20].label]
    again, _ = collate([dataset[(0, 5)], dataset[(20, 6)]])
    assert torch.equal(images, again)  # the sample's seed alone decides its augmentation
    with pytest.raises(ValueError, match="repack"):
        collate_64 = DecodeAugmentCollate(64, AugmentConfig(flip_p=0.5, crop_p=0.2, **_ranges()))
        collate_64([dataset[(0, 0)]])


def _coordinate_image() -> torch.Tensor:
    """3x32x32 uint8 whose red value is 8 x column and green 8 x row: a crop reveals its box."""
    ramp = torch.arange(32, dtype=torch.uint8) * 8
    return torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32), torch.zeros(32, 32)])


def _box(image: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop that made ``image`` from the coordinate image.

    Upscaling a crop back to 32 px samples its first and last row/column at the borders (the
    bilinear kernel clamps there), so the extremes of the ramps are the crop's edges.
    """
    red, green = image[0].int(), image[1].int()
    left, right = round(red.min().item() / 8), round(red.max().item() / 8)
    top, bottom = round(green.min().item() / 8), round(green.max().item() / 8)
    return top, left, bottom - top + 1, right - left + 1


def test_flip_mirrors_columns_exactly() -> None:
    collate = DecodeAugmentCollate(32, AugmentConfig(flip_p=1.0, crop_p=0.0, **_ranges()))
    image = _coordinate_image()
    flipped = collate.augmented(image, seed=3)
    assert torch.equal(flipped[0], image[0].flip(-1)) and torch.equal(flipped[1], image[1])


def _ranges() -> dict[str, tuple[float, float] | int]:
    """ADMIS's crop: 20-100 % of the face, width/height 3/4 to 4/3; RandAugment off."""
    return {
        "crop_scale": (0.2, 1.0),
        "crop_ratio": (0.75, 4 / 3),
        "randaugment_ops": 0,
        "randaugment_magnitude": 9,
    }


def test_random_resized_crop_keeps_the_configured_scale_and_ratio() -> None:
    """The crop box, read off the output of a coordinate image, covers 20-100 % of the face
    with a width/height ratio in [3/4, 4/3] (up to the rounding of its sides), and the draws
    span those ranges."""
    collate = DecodeAugmentCollate(32, AugmentConfig(flip_p=0.0, crop_p=1.0, **_ranges()))
    areas, ratios = [], []
    for seed in range(200):
        top, left, h, w = _box(collate.augmented(_coordinate_image(), seed))
        assert top >= 0 and top + h <= 32 and left >= 0 and left + w <= 32
        assert (w + 0.5) * (h + 0.5) >= 0.2 * 32 * 32 and (w - 0.5) * (h - 0.5) <= 32 * 32
        assert (w + 0.5) / (h - 0.5) >= 0.75 and (w - 0.5) / (h + 0.5) <= 4 / 3
        areas.append(w * h / 32**2)
        ratios.append(w / h)
    assert min(areas) < 0.3 and max(areas) > 0.9
    assert min(ratios) < 0.85 and max(ratios) > 1.2


def test_the_crop_is_drawn_on_the_flipped_image() -> None:
    """Order of the draws: flip coin, crop coin, then the box on the flipped image, from the
    sample's seed (torchvision's own primitives compute the expectation). Cropping first and
    flipping after would mirror the box: that differs for every asymmetric box."""
    augment = AugmentConfig(flip_p=1.0, crop_p=1.0, **_ranges())
    collate = DecodeAugmentCollate(32, augment)
    image, differs = _coordinate_image(), 0
    for seed in range(20):
        torch.manual_seed(seed)
        assert torch.rand(()) < 1.0 and torch.rand(()) < 1.0
        box = RandomResizedCrop.get_params(image, list(augment.crop_scale), [0.75, 4 / 3])
        flip_then_crop = tvf.resized_crop(tvf.horizontal_flip(image), *box, [32, 32])
        crop_then_flip = tvf.horizontal_flip(tvf.resized_crop(image, *box, [32, 32]))
        got = collate.augmented(image, seed)
        assert torch.equal(got, flip_then_crop)
        differs += not torch.equal(got, crop_then_flip)
    assert differs > 10


def _train(packed: Path, run_dir: Path, out: Path, **train: object) -> list[dict[str, float]]:
    settings = {**TINY, "train": {**TINY["train"], **train}}
    cfg = RecognitionTrainConfig.from_settings(settings)
    return train_recognition(packed / "TFR-toy.txt", packed, out, run_dir, cfg)


def _logged_steps(run_dir: Path) -> list[int]:
    with (run_dir / "loss.tsv").open() as table:
        return [int(row["step"]) for row in csv.DictReader(table, delimiter="\t")]


def test_training_learns_and_resumes_from_the_newest_checkpoint(
    packed: Path, tmp_path: Path
) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "model" / "backbone.pth"
    history = _train(packed, run_dir, out, epochs=2)
    assert history[-1]["loss"] < history[0]["loss"]
    assert sorted(p.name for p in run_dir.glob("META_*")) == [
        "META_Epoch_1_checkpoint.pth",
        "META_Epoch_2_checkpoint.pth",
    ]
    # A run killed in epoch 3 after logging two of its steps: the resumed run logs them again.
    header = (run_dir / "loss.tsv").read_text().splitlines()[0].split("\t")
    with (run_dir / "loss.tsv").open("a") as log:
        for step in (7, 8):
            log.write("\t".join(str(step) if c == "step" else "1" for c in header) + "\n")
    # A later run with more epochs continues at epoch 3 with the step count it had reached.
    resumed = _train(packed, run_dir, out)
    steps_per_epoch = (6 * 12) // 24
    assert {r["epoch"] for r in resumed} == {3}
    assert resumed[0]["step"] == 2 * steps_per_epoch + 1
    assert resumed[0]["lr"] == 0.005
    assert _logged_steps(run_dir) == list(range(1, 3 * steps_per_epoch + 1))
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["args"]["channels"] == [8, 16, 32, 64]
    # keep_checkpoints=2 prunes epoch 1.
    assert not (run_dir / "Backbone_Epoch_1_checkpoint.pth").exists()


def test_a_resumed_run_equals_an_uninterrupted_one(packed: Path, tmp_path: Path) -> None:
    """Stopped after epoch 2 and resumed to 3, against 3 epochs in one go: the same backbone
    bytes, head and optimiser state. Dropout (0.4 by default), both augmentations and a loader
    worker all draw random numbers."""
    augment = {"augment": {"flip_p": 0.5, "crop_p": 0.5}}
    settings = {**TINY, **augment, "train": {**TINY["train"], "num_workers": 1}}
    index = packed / "TFR-toy.txt"
    outs = {name: tmp_path / name / "backbone.pth" for name in ("straight", "resumed")}
    straight = RecognitionTrainConfig.from_settings(settings)
    train_recognition(index, packed, outs["straight"], tmp_path / "run1", straight)
    two = {**settings, "train": {**settings["train"], "epochs": 2}}
    run_dir = tmp_path / "run2"
    train_recognition(
        index, packed, outs["resumed"], run_dir, RecognitionTrainConfig.from_settings(two)
    )
    train_recognition(index, packed, outs["resumed"], run_dir, straight)
    assert outs["straight"].read_bytes() == outs["resumed"].read_bytes()
    for name in ("HEAD_Epoch_3_Split_0_checkpoint.pth", "META_Epoch_3_checkpoint.pth"):
        a, b = (load(tmp_path / run / name) for run in ("run1", "run2"))
        a.pop("fingerprint", None), b.pop("fingerprint", None)
        assert _equal(a, b), name


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_run_folder_of_another_architecture_restarts(
    packed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "backbone.pth"
    one_epoch = {**TINY, "train": {**TINY["train"], "epochs": 1}}
    index = packed / "TFR-toy.txt"
    train_recognition(index, packed, out, run_dir, RecognitionTrainConfig.from_settings(one_epoch))
    wider = {**one_epoch, "backbone": {**TINY["backbone"], "channels": [16, 16, 32, 64]}}
    wider["train"] = {**one_epoch["train"], "epochs": 2}
    history = train_recognition(
        index, packed, out, run_dir, RecognitionTrainConfig.from_settings(wider)
    )
    assert history[0]["epoch"] == 1 and history[0]["step"] == 1
    assert "architecture differ in backbone" in caplog.text
    assert (tmp_path / "run.previous" / "META_Epoch_1_checkpoint.pth").exists()


def test_other_training_data_restarts_the_run(
    packed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fewer classes (5, not 6): a fingerprint change, never a 'size mismatch' on resume."""
    run_dir, out = tmp_path / "run", tmp_path / "backbone.pth"
    first = _train(packed, run_dir, out, epochs=1)
    other = tmp_path / "other"
    manifest = write_toy_dataset(other / "faces", identities=5, seed=1)
    pack_tfrecords(manifest, other / "packed", "TFR-toy", image_size=32)
    again = _train(other / "packed", run_dir, out, epochs=1)
    assert again[0]["step"] == 1 and again[0]["loss"] != first[0]["loss"]
    assert "the training data changed" in caplog.text
    assert "architecture differ in classes" in caplog.text
    assert _logged_steps(run_dir) == [1, 2]  # 60 faces, 2 steps
    assert load(out)["output_layer.3.weight"].shape[0] == 64


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_configured_precision_reaches_every_training_step(
    precision: str, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recognition.train.precision`` is what each step's forward runs under (recorded: on
    this CPU both are fp32); the schema's default is synface's bf16."""
    assert RecognitionTrainConfig.from_settings(TINY).train.precision == "bf16"
    used: list[str] = []
    autocast = train_module.runtime.autocast
    monkeypatch.setattr(
        train_module.runtime, "autocast", lambda d, p: used.append(p) or autocast(d, p)
    )
    settings = {**TINY, "train": {**TINY["train"], "epochs": 1, "precision": precision}}
    cfg = RecognitionTrainConfig.from_settings(settings)
    history = train_recognition(
        packed / "TFR-toy.txt", packed, tmp_path / "b.pth", tmp_path / "run", cfg
    )
    assert len(used) == history[-1]["step"] > 0
    assert set(used) == {precision}
