"""insightface `.bin` packs: the three real-world flavours, refusal of foreign globals, writing."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from synface.io.binpack import BinPackError, read_bin, write_bin
from synface.io.pickles import UnsafePickleError

BIN_DIR = Path(__file__).parent / "fixtures" / "formats" / "bin"
PACKS = ("toy_py2.bin", "toy_py3.bin", "toy_ndarray.bin")


@pytest.fixture(scope="module")
def reference() -> tuple[list[bytes], list[bool]]:
    return read_bin(BIN_DIR / "toy_py3.bin")


@pytest.mark.parametrize("name", PACKS)
def test_all_pack_flavours_give_the_same_content(
    name: str, reference: tuple[list[bytes], list[bool]]
) -> None:
    images, issame = read_bin(BIN_DIR / name)
    assert len(images) == 40
    assert len(issame) == 20
    assert all(type(image) is bytes for image in images)
    assert all(type(flag) is bool for flag in issame)
    assert all(image.startswith(b"\xff\xd8") and image.endswith(b"\xff\xd9") for image in images)
    assert (images, issame) == reference


def test_reference_pack_has_both_labels(reference: tuple[list[bytes], list[bool]]) -> None:
    _, issame = reference
    assert sum(issame) == 10
    assert len(set(reference[0])) == 40


def test_py2_pack_needs_bytes_encoding() -> None:
    # Why read_bin exists at all: a plain Python 3 load of a Python-2 pack fails (evaluation.md §1).
    with (BIN_DIR / "toy_py2.bin").open("rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)


def test_ndarray_pack_exercises_the_numpy_allow_list() -> None:
    # Guard that the fixture really goes through the ndarray branch: it names exactly the numpy
    # globals read_bin allows, and nothing else.
    data = (BIN_DIR / "toy_ndarray.bin").read_bytes()
    names = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert names == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


class _ExecOnLoad:
    """Pickles to `builtins.exec(code)`: what a malicious pack would contain."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


def _exec_payload(marker: Path) -> bytes:
    evil = _ExecOnLoad(f"open({str(marker)!r}, 'w').close()")
    return pickle.dumps(([evil, b"x"], [True]), protocol=4)


def test_exec_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    # Control for the refusal test below: these exact bytes do run code when loaded naively.
    marker = tmp_path / "control"
    pickle.loads(_exec_payload(marker))
    assert marker.exists()


def test_builtins_exec_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pack = tmp_path / "evil.bin"
    pack.write_bytes(_exec_payload(marker))
    with pytest.raises(UnsafePickleError, match=rf"^{pack}: refused .*'builtins\.exec'"):
        read_bin(pack)
    assert not marker.exists()


def test_os_system_protocol0_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pack = tmp_path / "evil.bin"
    # Protocol-0 GLOBAL opcode, as an old-style hand-crafted exploit would be written.
    pack.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(UnsafePickleError, match=r"'os\.system'") as info:
        read_bin(pack)
    assert str(pack) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("builtins", "eval")],
)
def test_other_globals_are_refused(tmp_path: Path, module: str, name: str) -> None:
    pack = tmp_path / "odd.bin"
    pack.write_bytes(f"c{module}\n{name}\n.".encode())
    with pytest.raises(UnsafePickleError, match=rf"'{module}\.{name}'"):
        read_bin(pack)


def _pickle_to(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ((b"a", b"b", b"c"), "2-tuple"),
        ({"images": []}, "2-tuple"),
        (([b"a"], [True]), "1 images for 1 pairs"),
        (([b"a", b"b"], [1]), "list of bools"),
        (([b"a", "b"], [True]), "image 1 is a str"),
        (([b"a", np.zeros((3, 2), np.uint8)], [True]), r"image 1 is an array .*\(3, 2\)"),
    ],
)
def test_malformed_structure_names_file(tmp_path: Path, content: object, message: str) -> None:
    pack = _pickle_to(tmp_path / "bad.bin", content)
    with pytest.raises(BinPackError, match=message) as info:
        read_bin(pack)
    assert str(pack) in str(info.value)


def test_not_a_pickle_names_file(tmp_path: Path) -> None:
    pack = tmp_path / "garbage.bin"
    pack.write_bytes(b"\xff\xd8 not a pickle")
    with pytest.raises(BinPackError, match=rf"^{pack}: not a readable pickle"):
        read_bin(pack)


def test_issame_as_bool_array_is_accepted(tmp_path: Path) -> None:
    pack = _pickle_to(tmp_path / "arr.bin", ([b"a", b"b", b"c", b"d"], np.array([True, False])))
    assert read_bin(pack) == ([b"a", b"b", b"c", b"d"], [True, False])


def test_write_then_read_round_trip(
    tmp_path: Path, reference: tuple[list[bytes], list[bool]]
) -> None:
    images, issame = reference
    out = tmp_path / "packs" / "lfw.bin"
    write_bin(out, images, issame)
    assert read_bin(out) == (images, issame)
    # Plain loaders (TFace, insightface) see a protocol-4 (list of bytes, list of bool).
    raw = out.read_bytes()
    assert raw[:2] == b"\x80\x04"
    assert pickle.loads(raw) == (images, issame)
    assert [p.name for p in out.parent.iterdir()] == ["lfw.bin"]


def test_write_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "p.bin"
    write_bin(out, [b"a", b"b"], [True])
    write_bin(out, [b"c", b"d", b"e", b"f"], [False, True])
    assert read_bin(out) == ([b"c", b"d", b"e", b"f"], [False, True])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin"]


def test_write_rejects_mismatched_lengths(tmp_path: Path) -> None:
    out = tmp_path / "p.bin"
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(out, [b"a", b"b", b"c"], [True])
    assert not out.exists()
