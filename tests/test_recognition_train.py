from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_toy_dataset

from synface.packing import pack_tfrecords
from synface.recognition.data import AugmentConfig, DecodeAugmentCollate, GlobalBatchSampler
from synface.recognition.train import (
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
    },
    "augment": {"flip_p": 0.5, "crop_p": 0.0},
}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy dataset packed once for the module; tests only read it."""
    root = tmp_path_factory.mktemp("packed")
    pack_tfrecords(write_toy_dataset(root / "toy"), root / "packed", "TFR-toy", image_size=32)
    return root / "packed"


def test_step_schedule_and_warmup_follow_tface() -> None:
    cfg = RecognitionTrainConfig(lrs=(0.1, 0.01, 0.001, 0.0001), stages=(22, 28, 32))
    assert [learning_rate(cfg, e, 10_000) for e in (0, 21, 22, 27, 28, 32, 39)] == [
        0.1,
        0.1,
        0.01,
        0.01,
        0.001,
        0.0001,
        0.0001,
    ]
    warm = RecognitionTrainConfig(lrs=(0.1, 0.01), stages=(5,), warmup_steps=10)
    assert learning_rate(warm, 0, 0) == 0.0
    assert learning_rate(warm, 0, 5) == pytest.approx(0.05)
    assert learning_rate(warm, 0, 11) == 0.1


def test_lrs_must_have_one_more_value_than_stages() -> None:
    with pytest.raises(ValueError, match="one more learning rate"):
        RecognitionTrainConfig(lrs=(0.1,), stages=(3,))


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


def test_collate_gives_normalised_batches(packed: Path) -> None:
    from synface.recognition.data import RecordDataset

    dataset = RecordDataset(packed / "TFR-toy.txt", packed)
    collate = DecodeAugmentCollate(32, AugmentConfig(flip_p=1.0, crop_p=1.0))
    images, labels = collate([dataset[0], dataset[20]])
    assert images.shape == (2, 3, 32, 32)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels.tolist() == [dataset.entries[0].label, dataset.entries[20].label]
    with pytest.raises(ValueError, match="repack"):
        DecodeAugmentCollate(64, AugmentConfig())([dataset[0]])


def test_training_learns_and_resumes_from_the_newest_checkpoint(
    packed: Path, tmp_path: Path
) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "model" / "backbone.pth"
    first = RecognitionTrainConfig.from_settings({**TINY, "train": {**TINY["train"], "epochs": 2}})
    history = train_recognition(packed / "TFR-toy.txt", packed, out, run_dir, first)
    assert history[-1]["loss"] < history[0]["loss"]
    assert sorted(p.name for p in run_dir.glob("META_*")) == [
        "META_Epoch_1_checkpoint.pth",
        "META_Epoch_2_checkpoint.pth",
    ]
    # A later run with more epochs continues at epoch 3 with the step count it had reached.
    full = RecognitionTrainConfig.from_settings(TINY)
    resumed = train_recognition(packed / "TFR-toy.txt", packed, out, run_dir, full)
    steps_per_epoch = (6 * 12) // 24
    assert {r["epoch"] for r in resumed} == {3}
    assert resumed[0]["step"] == 2 * steps_per_epoch + 1
    assert resumed[0]["lr"] == 0.005
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["args"]["channels"] == [8, 16, 32, 64]
    # keep_checkpoints=2 prunes epoch 1.
    assert not (run_dir / "Backbone_Epoch_1_checkpoint.pth").exists()


def test_a_run_folder_of_another_architecture_is_not_resumed(packed: Path, tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "backbone.pth"
    one_epoch = {**TINY, "train": {**TINY["train"], "epochs": 1}}
    index = packed / "TFR-toy.txt"
    train_recognition(index, packed, out, run_dir, RecognitionTrainConfig.from_settings(one_epoch))
    wider = {**one_epoch, "backbone": {**TINY["backbone"], "channels": [16, 16, 32, 64]}}
    with pytest.raises(ValueError, match="different model"):
        train_recognition(index, packed, out, run_dir, RecognitionTrainConfig.from_settings(wider))
