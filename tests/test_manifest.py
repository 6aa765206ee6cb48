from __future__ import annotations

from pathlib import Path

import pytest

from synface.cli import main
from synface.io.manifest import ManifestEntry, read_manifest, scan_image_folder, write_manifest


def test_paths_are_relative_to_the_manifest_folder(tmp_path: Path) -> None:
    image = tmp_path / "data" / "images" / "7" / "0.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    manifest = tmp_path / "lists" / "set.tsv"
    assert write_manifest(manifest, [ManifestEntry(image, 3)]) == 1
    assert manifest.read_text() == "../data/images/7/0.jpg\t3\n"
    (entry,) = read_manifest(manifest)
    assert entry.path.resolve() == image.resolve()
    assert entry.label == 3


def test_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.jpg\t0\nb.jpg\tseven\n")
    with pytest.raises(ValueError, match=r"m\.tsv:2: label 'seven'"):
        read_manifest(manifest)
    manifest.write_text("a.jpg 0\n")
    with pytest.raises(ValueError, match=r"m\.tsv:1: expected 'path<TAB>label'"):
        read_manifest(manifest)


def test_scanned_folders_get_dense_labels_in_name_order(tmp_path: Path) -> None:
    for identity, files in {"m.0042": ["b.jpg", "a.png"], "m.0007": ["x.jpg"]}.items():
        for name in files:
            path = tmp_path / identity / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    (tmp_path / "m.0007" / "notes.txt").write_text("not an image")
    entries = scan_image_folder(tmp_path)
    assert [(e.path.name, e.label) for e in entries] == [("x.jpg", 0), ("a.png", 1), ("b.jpg", 1)]


def test_a_missing_dataset_folder_says_what_belongs_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"images/<identity>/<n>\.jpg"):
        scan_image_folder(tmp_path / "casia")


@pytest.mark.parametrize("name", ["tab\there.jpg", "line\nbreak.jpg", "return\r.jpg"])
def test_a_file_name_no_manifest_line_can_hold_is_refused_by_name(
    tmp_path: Path, name: str
) -> None:
    images = tmp_path / "images"
    (images / "0").mkdir(parents=True)
    (images / "0" / "fine.jpg").write_bytes(b"x")
    (images / "0" / name).write_bytes(b"x")
    out = tmp_path / "manifest.tsv"
    with pytest.raises(ValueError, match="tab or line break in a file name") as error:
        main(["manifest", "--images", str(images), "--out", str(out)])
    assert repr(str(images / "0" / name)) in str(error.value)
    assert str(out) in str(error.value)
    assert not out.exists()
