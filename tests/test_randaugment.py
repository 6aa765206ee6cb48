"""RandAugment in recognition training, a switch beyond ADMIS: drawn from each sample's seed
after the flip and the crop, set per dataset, and absent from every settings record while off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms.v2 import RandAugment, RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf
from workflow_runner import BASE, MICRO, snakemake

from synface.recognition.data import AugmentConfig, DecodeAugmentCollate
from synface.recognition.switches import augment_record
from synface.recognition.train import RecognitionTrainConfig

ADMIS = {"flip_p": 0.5, "crop_p": 1.0, "crop_scale": [0.2, 1.0], "crop_ratio": [0.75, 4 / 3]}


def _face() -> torch.Tensor:
    """A 3x32x32 uint8 image with detail in every channel, so every operation shows."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)


def _collate(ops: int, magnitude: int = 16) -> DecodeAugmentCollate:
    return DecodeAugmentCollate(
        32, AugmentConfig(**ADMIS, randaugment_ops=ops, randaugment_magnitude=magnitude)
    )


def test_randaugment_follows_the_flip_and_the_crop_of_the_same_seed() -> None:
    """The draws in order from the sample's seed: flip coin, crop coin, crop box, then
    RandAugment's operations (torchvision's own transforms compute the expectation)."""
    image, collate, changed = _face(), _collate(4), 0
    for seed in range(20):
        torch.manual_seed(seed)
        flipped = tvf.horizontal_flip(image) if torch.rand(()) < 0.5 else image
        assert torch.rand(()) < 1.0
        box = RandomResizedCrop.get_params(flipped, [0.2, 1.0], [0.75, 4 / 3])
        cropped = tvf.resized_crop(flipped, *box, [32, 32], antialias=True)
        expected = RandAugment(4, 16)(cropped)
        got = collate.augmented(image, seed)
        assert torch.equal(got, expected)
        assert got.dtype == torch.uint8 and got.shape == (3, 32, 32)
        changed += not torch.equal(got, cropped)
    assert changed >= 18  # four operations leave a face untouched only when all are identity


def test_a_larger_magnitude_changes_faces_more() -> None:
    image = _face()

    def mean_change(magnitude: int) -> float:
        plain, strong = _collate(0), _collate(2, magnitude)
        return sum(
            (strong.augmented(image, s).float() - plain.augmented(image, s).float()).abs().mean()
            for s in range(40)
        ).item()

    assert mean_change(24) > 1.5 * mean_change(2)


def test_augmentation_off_leaves_the_settings_record_as_before() -> None:
    """While off, the RandAugment keys are in no record: runs made before the switch existed
    are neither rerun by Snakemake nor refused on resume."""
    assert augment_record({**ADMIS, "randaugment_ops": 0, "randaugment_magnitude": 16}) == ADMIS
    on = {**ADMIS, "randaugment_ops": 2, "randaugment_magnitude": 16}
    assert augment_record(on) == on

    def fingerprint(augment: dict) -> dict[str, str]:
        settings = {"image_size": 32, "augment": augment}
        return RecognitionTrainConfig.from_settings(settings).fingerprint("data", classes=3)

    assert fingerprint(ADMIS) == fingerprint({**ADMIS, "randaugment_ops": 0})
    assert fingerprint(ADMIS) != fingerprint(on)


def _train_recognition_settings(output: str, dataset: str) -> str:
    """The --settings value of the train-recognition command that writes ``dataset``'s model."""
    out = f"--out results/recognition/{dataset}/backbone.pth"
    (line,) = [line for line in output.splitlines() if "train-recognition" in line and out in line]
    return line.split("--settings ")[1]


def test_a_dataset_switches_randaugment_on_for_its_own_training(tmp_path: Path) -> None:
    """A dataset's own ``augment`` keys go over recognition.augment for its training alone;
    the other datasets' commands carry no RandAugment key at all."""
    diff = tmp_path / "randaugment.yaml"
    overlay = {"datasets": {"syn_300": {"augment": {"randaugment_ops": 2, "crop_p": 0.0}}}}
    diff.write_text(yaml.safe_dump(overlay))
    result = snakemake(tmp_path, "-n", "-p", configfiles=(BASE, MICRO, diff))
    assert result.returncode == 0, result.stderr[-3000:]
    switched = _train_recognition_settings(result.stdout, "syn_300")
    assert '"randaugment_magnitude":9,"randaugment_ops":2' in switched
    assert '"crop_p":0.0' in switched and '"flip_p":0.5' in switched
    for other in ("real", "syn_100"):
        settings = _train_recognition_settings(result.stdout, other)
        assert "randaugment" not in settings and '"crop_p":0.2' in settings


@pytest.mark.parametrize("value", [-1, 31])
def test_a_magnitude_out_of_range_is_refused_with_its_key(tmp_path: Path, value: int) -> None:
    diff = tmp_path / "bad.yaml"
    overlay = {"datasets": {"syn_300": {"augment": {"randaugment_magnitude": value}}}}
    diff.write_text(yaml.safe_dump(overlay))
    result = snakemake(tmp_path, "-n", configfiles=(BASE, MICRO, diff))
    assert result.returncode != 0
    assert "randaugment_magnitude" in result.stdout + result.stderr
