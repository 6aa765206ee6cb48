"""synface.io.atomic: durable, all-or-nothing writes whose disk-full error names the file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import write_toy_dataset

from synface import checkpoint
from synface.io import atomic
from synface.io.atomic import DiskFullError, atomic_path
from synface.io.binpack import write_bin
from synface.packing import pack_tfrecords


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_file_then_its_folder_are_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(source: Path, target: Path) -> None:
        calls.append(("replace", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    target = tmp_path / "report.json"
    atomic.write_json(target, {"a": 1})
    assert [kind for kind, _ in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1].endswith(".tmp" + str(os.getpid()))  # the data, under its temporary name
    assert calls[2][1] == str(tmp_path)  # the folder, which records the rename
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_an_exception_in_the_block_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "index.txt"
    atomic.write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.txt"]


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


@needs_dev_full
def test_a_full_disk_is_reported_with_the_path(tmp_path: Path) -> None:
    target = tmp_path / "embeddings.npy"
    message = rf"^\[Errno 28\] disk full while writing {target}"
    with (
        pytest.raises(DiskFullError, match=message),
        atomic_path(target),
        open("/dev/full", "wb") as full,
    ):
        full.write(b"x" * 65536)
        full.flush()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@needs_dev_full
def test_a_checkpoint_on_a_full_disk_names_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save by path would say `inline_container.cc ... basic_ios::clear`, no errno."""
    real_open = Path.open

    def onto_full_disk(self: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        if ".tmp" in self.name and "w" in mode:
            return real_open(Path("/dev/full"), mode, *args, **kwargs)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", onto_full_disk)
    target = tmp_path / "run" / "ldm_100.pt"
    with pytest.raises(DiskFullError, match=rf"disk full while writing {target}: free space"):
        checkpoint.atomic_save({"weights": torch.zeros(1 << 16)}, target)
    assert not target.exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        atomic.write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode


def test_packs_and_training_indexes_are_world_readable_under_umask_022(
    tmp_path: Path, umask_022: None
) -> None:
    """They were 0600 (mkstemp) before; another user's training job could not read them."""
    manifest = write_toy_dataset(tmp_path / "toy", identities=2, images_per_identity=2)
    out = tmp_path / "packed"
    pack_tfrecords(manifest, out, "TFR-toy", image_size=32)
    write_bin(tmp_path / "lfw.bin", [b"a", b"b"], [True])
    written = [tmp_path / "lfw.bin", *(p for p in out.rglob("*") if p.is_file())]
    assert {p.name for p in written} >= {"TFR-toy.txt", "TFR-toy.index", "TFR-toy-00000.tfrecord"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        p.name: "0o644" for p in written
    }
