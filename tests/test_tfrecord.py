"""TFRecord I/O against the spec's test vectors, the TFace fixture and an independent reader."""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import crc32c
import pytest
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_loader

from synface.io.tfrecord import (
    RECORD_OVERHEAD,
    CorruptRecordError,
    IndexEntry,
    IndexFormatError,
    RecordFormatError,
    RecordLocation,
    RecordReader,
    ShardWriter,
    decode_image_example,
    encode_image_example,
    frame_record,
    iter_index_records,
    masked_crc32c,
    read_training_index,
    shard_path,
    write_training_index,
)

TFR_ROOT = Path(__file__).parent / "fixtures" / "formats" / "tfrecord"
FIXTURE_NAME = "TFR-fixture1"
FIXTURE_SHARD = TFR_ROOT / FIXTURE_NAME / f"{FIXTURE_NAME}-00000.tfrecord"
FIXTURE_WRITER_INDEX = TFR_ROOT / FIXTURE_NAME / f"{FIXTURE_NAME}.index"
FIXTURE_TRAINING_INDEX = TFR_ROOT / f"{FIXTURE_NAME}.txt"

# recognition.md §1.4 test vectors.
SPEC_JPEG = bytes.fromhex("ffd8ffd9")
SPEC_EXAMPLE = bytes.fromhex("0a130a110a05696d61676512080a060a04ffd8ffd9")
# Framed: length (21, uint64 LE), its masked CRC, the Example, the Example's masked CRC.
SPEC_RECORD = bytes.fromhex("1500000000000000d6ab6b2b") + SPEC_EXAMPLE + bytes.fromhex("e8ce3d51")


def reference_masked_crc(data: bytes) -> int:
    """Bitwise CRC-32C (reflected poly 0x82F63B78) plus the TFRecord mask, not using crc32c."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def fixture_image_paths() -> list[str]:
    return [line.split("\t")[0] for line in FIXTURE_WRITER_INDEX.read_text().splitlines()]


# --- framing and Example encoding ---------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert crc32c.crc32c(b"123456789") == 0xE3069283


def test_masked_crc_matches_bitwise_reference() -> None:
    for data in (b"", b"123456789", SPEC_EXAMPLE, bytes(range(256)) * 3):
        assert masked_crc32c(data) == reference_masked_crc(data)


def test_encode_image_example_matches_spec_vector() -> None:
    assert encode_image_example(SPEC_JPEG) == SPEC_EXAMPLE


def test_frame_record_matches_spec_vector() -> None:
    record = frame_record(SPEC_EXAMPLE)
    assert len(record) == 37 == len(SPEC_EXAMPLE) + RECORD_OVERHEAD
    assert record == SPEC_RECORD


def test_encode_uses_multibyte_varints_like_protobuf() -> None:
    jpeg = bytes(range(256)) * 60  # > 16 KiB: every nested length needs a 3-byte varint
    expected = example_pb2.Example()
    expected.features.feature["image"].bytes_list.value.append(jpeg)
    assert encode_image_example(jpeg) == expected.SerializeToString()
    assert decode_image_example(encode_image_example(jpeg), where="x") == jpeg


def test_decode_tolerates_admis_label_feature() -> None:
    example = example_pb2.Example()
    example.features.feature["label"].bytes_list.value.append(struct.pack("<i", 7))
    example.features.feature["image"].bytes_list.value.append(SPEC_JPEG)
    assert decode_image_example(example.SerializeToString(), where="admis") == SPEC_JPEG


def test_decode_without_image_names_where() -> None:
    example = example_pb2.Example()
    example.features.feature["label"].int64_list.value.append(3)
    with pytest.raises(RecordFormatError, match=r"shard-7 at 42: .*no 'image' feature"):
        decode_image_example(example.SerializeToString(), where="shard-7 at 42")


def test_decode_image_of_wrong_type_is_rejected() -> None:
    example = example_pb2.Example()
    example.features.feature["image"].float_list.value.append(1.0)
    with pytest.raises(RecordFormatError, match="not a bytes_list"):
        decode_image_example(example.SerializeToString(), where="w")


def test_decode_truncated_payload_names_where() -> None:
    with pytest.raises(RecordFormatError, match=r"^somewhere: .*past the payload end"):
        decode_image_example(SPEC_EXAMPLE[:-3], where="somewhere")


# --- the TFace fixture shard --------------------------------------------------------------------


def test_fixture_training_index_yields_labels_and_source_bytes() -> None:
    records = list(iter_index_records(FIXTURE_TRAINING_INDEX, TFR_ROOT))
    labels = [label for _, label in records]
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i, (jpeg, label) in enumerate(records):
        assert jpeg == (TFR_ROOT / "images" / str(label) / f"{i % 3}.jpg").read_bytes()


def test_fixture_writer_index_maps_records_to_source_images() -> None:
    with RecordReader() as reader:
        for line in FIXTURE_WRITER_INDEX.read_text().splitlines():
            img_path, shard, offset = line.split("\t")
            path = shard_path(TFR_ROOT, FIXTURE_NAME, int(shard))
            assert reader.read_image(path, int(offset)) == (TFR_ROOT / img_path).read_bytes()


def test_fixture_offsets_accumulate_payload_plus_16() -> None:
    entries = read_training_index(FIXTURE_TRAINING_INDEX)
    with RecordReader() as reader:
        sizes = [len(reader.read_payload(FIXTURE_SHARD, e.offset)) for e in entries]
    offsets = [e.offset for e in entries]
    assert offsets[0] == 0
    for i in range(1, len(offsets)):
        assert offsets[i] == offsets[i - 1] + sizes[i - 1] + 16
    assert FIXTURE_SHARD.stat().st_size == offsets[-1] + sizes[-1] + 16


# --- writing ------------------------------------------------------------------------------------


def test_writer_reproduces_fixture_shard_and_index(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, FIXTURE_NAME) as writer:
        for img_path in fixture_image_paths():
            writer.write((TFR_ROOT / img_path).read_bytes(), img_path)
    out = tmp_path / FIXTURE_NAME
    assert (out / FIXTURE_SHARD.name).read_bytes() == FIXTURE_SHARD.read_bytes()
    assert (out / FIXTURE_WRITER_INDEX.name).read_bytes() == FIXTURE_WRITER_INDEX.read_bytes()


def test_writer_round_trip_readable_by_independent_reader(tmp_path: Path) -> None:
    paths = fixture_image_paths()
    images = [(TFR_ROOT / p).read_bytes() for p in paths]
    with ShardWriter(tmp_path, "TFR-rt", records_per_shard=5) as writer:
        locations = [writer.write(jpeg, p) for jpeg, p in zip(images, paths, strict=True)]

    # 12 records, 5 per shard: shards 0, 1, 2; offsets restart at 0 in every shard and then
    # accumulate len(example) + 16 (recognition.md §1.2).
    expected: list[RecordLocation] = []
    offset = 0
    for i, jpeg in enumerate(images):
        offset = 0 if i % 5 == 0 else offset
        expected.append(RecordLocation(i // 5, offset))
        offset += len(encode_image_example(jpeg)) + 16
    assert locations == expected

    index_lines = (tmp_path / "TFR-rt" / "TFR-rt.index").read_text().splitlines()
    assert index_lines == [
        f"{p}\t{loc.shard}\t{loc.offset}" for p, loc in zip(paths, locations, strict=True)
    ]

    for shard in range(3):
        path = shard_path(tmp_path, "TFR-rt", shard)
        expected = images[shard * 5 : shard * 5 + 5]
        independent = [rec["image"] for rec in tfrecord_loader(str(path), None, {"image": "byte"})]
        assert independent == expected
        _assert_crcs_with_reference(path.read_bytes(), len(expected))

    with RecordReader() as reader:
        for jpeg, loc in zip(images, locations, strict=True):
            assert reader.read_image(shard_path(tmp_path, "TFR-rt", loc.shard), loc.offset) == jpeg


def _assert_crcs_with_reference(shard: bytes, n_records: int) -> None:
    pos = 0
    for _ in range(n_records):
        length_bytes = shard[pos : pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", shard[pos + 8 : pos + 12])
        payload = shard[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", shard[pos + 12 + length : pos + 16 + length])
        assert length_crc == reference_masked_crc(length_bytes)
        assert payload_crc == reference_masked_crc(payload)
        pos += length + 16
    assert pos == len(shard)


def test_writer_rejects_path_with_tab(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "TFR-x") as writer, pytest.raises(ValueError, match="tabs"):
        writer.write(SPEC_JPEG, "a\tb.jpg")


# --- corruption ---------------------------------------------------------------------------------


def _corrupt_copy(tmp_path: Path, position: int) -> Path:
    copy = tmp_path / FIXTURE_SHARD.name
    shutil.copyfile(FIXTURE_SHARD, copy)
    data = bytearray(copy.read_bytes())
    data[position] ^= 0xFF
    copy.write_bytes(bytes(data))
    return copy


def test_flipped_payload_byte_names_shard_and_offset(tmp_path: Path) -> None:
    offset = read_training_index(FIXTURE_TRAINING_INDEX)[4].offset
    copy = _corrupt_copy(tmp_path, offset + 12 + 500)
    with RecordReader() as reader:
        with pytest.raises(CorruptRecordError) as info:
            reader.read_image(copy, offset)
        # The neighbouring records are untouched and still read.
        reader.read_image(copy, 0)
    message = str(info.value)
    assert str(copy) in message
    assert f"byte offset {offset}" in message
    assert "payload CRC" in message


def test_flipped_length_byte_names_shard_and_offset(tmp_path: Path) -> None:
    offset = read_training_index(FIXTURE_TRAINING_INDEX)[2].offset
    copy = _corrupt_copy(tmp_path, offset + 1)
    with RecordReader() as reader, pytest.raises(CorruptRecordError) as info:
        reader.read_payload(copy, offset)
    assert str(copy) in str(info.value)
    assert f"byte offset {offset}" in str(info.value)
    assert "length CRC" in str(info.value)


def test_iter_index_records_reports_corruption(tmp_path: Path) -> None:
    entries = read_training_index(FIXTURE_TRAINING_INDEX)
    shard_dir = tmp_path / FIXTURE_NAME
    shard_dir.mkdir()
    corrupt = _corrupt_copy(shard_dir, entries[-1].offset + 40)
    index = tmp_path / "index.txt"
    write_training_index(index, entries)
    with pytest.raises(CorruptRecordError, match=f"{corrupt}: record at byte offset"):
        list(iter_index_records(index, tmp_path))


def test_offset_past_end_is_reported(tmp_path: Path) -> None:
    size = FIXTURE_SHARD.stat().st_size
    with RecordReader() as reader, pytest.raises(CorruptRecordError, match="truncated header"):
        reader.read_payload(FIXTURE_SHARD, size - 4)


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / FIXTURE_SHARD.name
    copy.write_bytes(FIXTURE_SHARD.read_bytes()[:-10])
    last = read_training_index(FIXTURE_TRAINING_INDEX)[-1].offset
    with RecordReader() as reader, pytest.raises(CorruptRecordError, match="truncated payload"):
        reader.read_payload(copy, last)


# --- reader lifecycle ---------------------------------------------------------------------------


def test_reader_pickles_before_and_after_use() -> None:
    reader = RecordReader()
    clone = pickle.loads(pickle.dumps(reader))
    first = clone.read_image(FIXTURE_SHARD, 0)
    # A used reader holds an open handle; pickling drops it and the copy reopens lazily.
    again = pickle.loads(pickle.dumps(clone))
    assert again.read_image(FIXTURE_SHARD, 0) == first
    clone.close()
    again.close()


def test_reader_opens_each_shard_once(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    with RecordReader() as reader:
        for entry in read_training_index(FIXTURE_TRAINING_INDEX):
            reader.read_payload(FIXTURE_SHARD, entry.offset)
    assert opened.count(FIXTURE_SHARD) == 1


# --- training index -----------------------------------------------------------------------------


def test_shard_path_layout() -> None:
    assert shard_path(Path("/data"), "TFR-x", 3) == Path("/data/TFR-x/TFR-x-00003.tfrecord")


def test_training_index_round_trip(tmp_path: Path) -> None:
    entries = [IndexEntry("TFR-a", 0, 0, 0), IndexEntry("TFR-b", 12, 345678, 9)]
    path = tmp_path / "sub" / "train.txt"
    write_training_index(path, entries)
    assert path.read_text() == "TFR-a\t0\t0\t0\nTFR-b\t12\t345678\t9\n"
    assert read_training_index(path) == entries
    assert [p.name for p in path.parent.iterdir()] == ["train.txt"]


def test_fixture_training_index_parses() -> None:
    entries = read_training_index(FIXTURE_TRAINING_INDEX)
    assert len(entries) == 12
    assert entries[3] == IndexEntry(FIXTURE_NAME, 0, 21250, 1)


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("TFR-a\t0\t0\t0\nTFR-a\t0\t7075\nTFR-a\t0\t9\t1\n")
    with pytest.raises(IndexFormatError, match=rf"^{path}:2: expected 4 .*found 3"):
        read_training_index(path)


def test_non_integer_field_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("TFR-a\t0\t0\t0\nTFR-a\t0\t0\tcat\n")
    with pytest.raises(IndexFormatError, match=rf"^{path}:2: column 'label' .*'cat'"):
        read_training_index(path)


def test_negative_label_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("TFR-a\t0\t0\t-1\n")
    with pytest.raises(IndexFormatError, match=rf"^{path}:1: column 'label'"):
        read_training_index(path)
