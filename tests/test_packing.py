from __future__ import annotations

import io
from pathlib import Path

import pytest
from bad_images import huge_header_jpeg, huge_png
from PIL import Image, ImageFile

from synface import packing
from synface.io import images as images_module
from synface.io.tfrecord import iter_index_records, read_training_index
from synface.packing import pack_tfrecords


def _rejected(out_dir: Path) -> dict[str, str]:
    lines = (out_dir / "rejected.tsv").read_text().splitlines()[1:]
    return {Path(p).name: reason for p, reason in (line.split("\t") for line in lines)}


def test_broken_and_wrongly_sized_images_are_listed_and_packing_goes_on(
    toy_manifest: Path, tmp_path: Path
) -> None:
    images = toy_manifest.parent / "images"
    truncated = images / "0" / "0.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (images / "1" / "1.jpg").write_bytes(b"this is not a jpeg")
    Image.new("RGB", (40, 40)).save(images / "2" / "2.jpg")
    out = tmp_path / "packed"
    summary = pack_tfrecords(toy_manifest, out, "TFR-toy", image_size=32)
    rejected = _rejected(out)
    assert set(rejected) == {"0.jpg", "1.jpg", "2.jpg"}
    assert rejected["2.jpg"] == "wrong size: 40x40, expected 32x32"
    assert rejected["1.jpg"].startswith("undecodable")
    assert summary.records == 6 * 12 - 3
    assert summary.rejected == 3
    assert len(read_training_index(out / "TFR-toy.txt")) == summary.records


def test_valid_jpegs_are_stored_byte_for_byte_and_others_reencoded(
    toy_manifest: Path, tmp_path: Path
) -> None:
    images = toy_manifest.parent / "images"
    png = images / "3" / "0.png"
    Image.open(images / "3" / "0.jpg").save(png)
    grey = images / "4" / "0.jpg"
    Image.open(grey).convert("L").save(grey, quality=95)
    toy_manifest.write_text(toy_manifest.read_text().replace("images/3/0.jpg", "images/3/0.png"))
    out = tmp_path / "packed"
    summary = pack_tfrecords(toy_manifest, out, "TFR-toy", image_size=32)
    assert summary.reencoded == 2
    records = list(iter_index_records(out / "TFR-toy.txt", out))
    paths = [line.split("\t")[0] for line in toy_manifest.read_text().splitlines()]
    for (jpeg, _), rel in zip(records, paths, strict=True):
        source = toy_manifest.parent / rel
        if rel in ("images/3/0.png", "images/4/0.jpg"):
            decoded = Image.open(io.BytesIO(jpeg))
            assert (decoded.format, decoded.mode, decoded.size) == ("JPEG", "RGB", (32, 32))
        else:
            assert jpeg == source.read_bytes()


def test_labels_are_renumbered_densely_over_kept_identities(
    toy_manifest: Path, tmp_path: Path
) -> None:
    lines = toy_manifest.read_text().splitlines()
    # Identity 0 loses every image; the others keep labels 1..5 in the manifest -> 0..4 packed.
    for line in lines:
        path, label = line.split("\t")
        if label == "0":
            (toy_manifest.parent / path).write_bytes(b"")
    summary = pack_tfrecords(toy_manifest, tmp_path / "packed", "TFR-toy", image_size=32)
    labels = [e.label for e in read_training_index(tmp_path / "packed" / "TFR-toy.txt")]
    assert summary.classes == 5
    assert sorted(set(labels)) == [0, 1, 2, 3, 4]


def test_shards_split_and_worker_processes_give_identical_bytes(
    toy_manifest: Path, tmp_path: Path
) -> None:
    one = pack_tfrecords(toy_manifest, tmp_path / "one", "TFR-toy", 32, 25, workers=1)
    two = pack_tfrecords(toy_manifest, tmp_path / "two", "TFR-toy", 32, 25, workers=2)
    assert one == two
    assert one.shards == 3
    for shard in range(3):
        name = f"TFR-toy/TFR-toy-{shard:05d}.tfrecord"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_nothing_valid_fails_and_points_at_the_rejection_list(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.jpg\t0\n")
    with pytest.raises(ValueError, match=r"rejected\.tsv"):
        pack_tfrecords(manifest, tmp_path / "out", "TFR-x", image_size=32)
    assert "a.jpg" in (tmp_path / "out" / "rejected.tsv").read_text()


def test_tface_needs_tfr_in_the_dataset_name(toy_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must contain 'TFR'"):
        pack_tfrecords(toy_manifest, tmp_path / "out", "casia", image_size=32)


def test_huge_images_are_rejected_from_their_header_without_decoding(
    toy_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 9000² PNG used to be decoded (243 MB) before its size was found wrong."""
    images = toy_manifest.parent / "images"
    (images / "0" / "0.jpg").write_bytes(huge_png(9000))
    (images / "1" / "0.jpg").write_bytes(huge_header_jpeg(16000))
    (images / "2" / "0.jpg").write_bytes(huge_png(64))
    load = ImageFile.ImageFile.load

    def small_only(self: ImageFile.ImageFile) -> object:
        assert self.size[0] <= 64, f"a {self.size} image was decoded"
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", small_only)
    monkeypatch.setattr(images_module, "_check_png_data", lambda data, where: None)
    out = tmp_path / "packed"
    pack_tfrecords(toy_manifest, out, "TFR-toy", image_size=32)
    rejected = [line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines()]
    assert [path for path, _ in rejected[1:]] == [
        "images/0/0.jpg",
        "images/1/0.jpg",
        "images/2/0.jpg",
    ]
    assert rejected[1][1] == "too large: 9000x9000 is over the limit of 16777216 pixels"
    assert rejected[2][1].startswith("too large: over the limit of 16777216 pixels (Pillow: ")
    assert rejected[3][1] == "wrong size: 64x64, expected 32x32"


def test_an_interrupted_packing_leaves_no_shard_or_index_behind(
    toy_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any error) half-way: nothing a later training run could mistake for data."""
    real_stream = packing._prepared_stream

    def interrupted(*args: object) -> object:
        for count, prepared in enumerate(real_stream(*args)):
            if count == 30:
                raise KeyboardInterrupt
            yield prepared

    monkeypatch.setattr(packing, "_prepared_stream", interrupted)
    out = tmp_path / "packed"
    with pytest.raises(KeyboardInterrupt):
        pack_tfrecords(toy_manifest, out, "TFR-toy", image_size=32, records_per_shard=8)
    assert [p for p in out.rglob("*") if p.is_file()] == []
