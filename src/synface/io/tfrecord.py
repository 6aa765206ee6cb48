"""TFace-compatible TFRecord shards, written and read without TensorFlow or protobuf.

The byte layout is TFace's: its trainer (via DareBlopy) checks both
masked CRC-32Cs of every record, so a shard we write must carry correct CRCs, and a shard we read
is checked the same way so that corruption surfaces as an error naming the shard and offset
instead of as a garbled JPEG deep inside a DataLoader worker.
"""

from __future__ import annotations

import abc
import contextlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import crc32c

from synface.io.atomic import atomic_path

# --- Record framing -------------------------------------------------------
# uint64 little-endian payload length.
LENGTH_SIZE = 8
# uint32 little-endian masked CRC-32C, once over the 8 length bytes and once over the payload.
CRC_SIZE = 4
# What precedes the payload: length + its CRC.
HEADER_SIZE = LENGTH_SIZE + CRC_SIZE
# Bytes per record beyond the payload: the "+16" in the TFace index offsets.
RECORD_OVERHEAD = LENGTH_SIZE + 2 * CRC_SIZE
# Added after rotating the CRC so that CRCs of data containing CRCs stay well distributed.
MASK_DELTA = 0xA282EAD8
_UINT32 = 0xFFFFFFFF
_LENGTH_STRUCT = struct.Struct("<Q")
_CRC_STRUCT = struct.Struct("<I")

# --- Layout of a TFace dataset --------------------------------------------
# TFace's img2tfrecord.py starts a new shard every 500,000 records.
RECORDS_PER_SHARD = 500_000
# The single feature key TFace's parser reads; other keys (ADMIS's `label`) are ignored.
IMAGE_KEY = "image"

# --- Protobuf wire format (tf.train.Example) ----------------------------------------------------
# Every field we touch is "length-delimited" (wire type 2); the tag byte is field_number << 3 | 2.
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5
# Example.features = 1, Features.feature (map entry) = 1, entry.key = 1, entry.value = 2,
# Feature.bytes_list = 1, BytesList.value = 1.
_FIELD_FEATURES = 1
_FIELD_FEATURE_MAP = 1
_FIELD_MAP_KEY = 1
_FIELD_MAP_VALUE = 2
_FIELD_BYTES_LIST = 1
_FIELD_BYTES_VALUE = 1
# A varint carries 7 bits per byte, so a uint64 needs at most 10 bytes.
_MAX_VARINT_BYTES = 10


class CorruptRecordError(ValueError):
    """A record's framing or CRC does not check out: the shard is damaged or the offset is wrong."""


class RecordFormatError(ValueError):
    """A record's payload is not a tf.train.Example with an `image` bytes feature."""


class IndexFormatError(ValueError):
    """A line of a TFace index file cannot be parsed."""


def masked_crc32c(data: bytes) -> int:
    """CRC-32C of `data`, masked the way TFRecord stores it."""
    crc = crc32c.crc32c(data)
    rotated = ((crc >> 15) | (crc << 17)) & _UINT32
    return (rotated + MASK_DELTA) & _UINT32


def frame_record(payload: bytes) -> bytes:
    """Wrap a serialized Example in TFRecord framing: length, CRC(length), payload, CRC(payload)."""
    length = _LENGTH_STRUCT.pack(len(payload))
    return b"".join(
        (
            length,
            _CRC_STRUCT.pack(masked_crc32c(length)),
            payload,
            _CRC_STRUCT.pack(masked_crc32c(payload)),
        )
    )


# --- Protobuf encoding --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(field_number: int, body: bytes) -> bytes:
    return _varint(field_number << 3 | _WIRE_LEN) + _varint(len(body)) + body


def encode_image_example(jpeg: bytes) -> bytes:
    """Serialize `Example{features{feature{"image": bytes_list[jpeg]}}}` exactly as TFace writes it.

    Hand-encoded so that packing a dataset needs neither TensorFlow nor protobuf; the bytes match
    protobuf's own serialization (tests/test_tfrecord.py holds a test vector).
    """
    bytes_list = _len_field(_FIELD_BYTES_VALUE, jpeg)
    feature = _len_field(_FIELD_BYTES_LIST, bytes_list)
    entry = _len_field(_FIELD_MAP_KEY, IMAGE_KEY.encode()) + _len_field(_FIELD_MAP_VALUE, feature)
    features = _len_field(_FIELD_FEATURE_MAP, entry)
    return _len_field(_FIELD_FEATURES, features)


# --- Protobuf decoding --------------------------------------------------------------------------


def _read_varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise RecordFormatError(f"{where}: truncated varint in the Example payload")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise RecordFormatError(f"{where}: varint longer than {_MAX_VARINT_BYTES} bytes")


def _len_fields(buf: memoryview, field_number: int, where: str) -> Iterator[memoryview]:
    """Yield the bodies of every length-delimited occurrence of `field_number`, skipping others.

    Skipping unknown fields (rather than rejecting them) is what lets ADMIS's extra `label`
    feature and any future keys pass through, as protobuf itself would.
    """
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos, where)
        number, wire_type = tag >> 3, tag & 0x7
        if wire_type == _WIRE_VARINT:
            _, pos = _read_varint(buf, pos, where)
            continue
        if wire_type == _WIRE_FIXED64:
            size = 8
        elif wire_type == _WIRE_FIXED32:
            size = 4
        elif wire_type == _WIRE_LEN:
            size, pos = _read_varint(buf, pos, where)
        else:
            raise RecordFormatError(f"{where}: unsupported protobuf wire type {wire_type}")
        if pos + size > len(buf):
            raise RecordFormatError(f"{where}: protobuf field {number} runs past the payload end")
        if wire_type == _WIRE_LEN and number == field_number:
            yield buf[pos : pos + size]
        pos += size


def decode_image_example(payload: bytes, where: str) -> bytes:
    """Return the JPEG bytes of the `image` feature of a serialized Example.

    `where` (e.g. "shard.tfrecord at byte offset 123") is put in every error, because a bad
    record is only fixable once the user knows which file and record it is.
    """
    buf = memoryview(payload)
    for features in _len_fields(buf, _FIELD_FEATURES, where):
        for entry in _len_fields(features, _FIELD_FEATURE_MAP, where):
            keys = list(_len_fields(entry, _FIELD_MAP_KEY, where))
            if not keys or bytes(keys[-1]) != IMAGE_KEY.encode():
                continue
            return _first_bytes_value(entry, where)
    raise RecordFormatError(
        f"{where}: the Example has no '{IMAGE_KEY}' feature; TFace records store the JPEG under "
        "that key, as a bytes list"
    )


def _first_bytes_value(entry: memoryview, where: str) -> bytes:
    # Protobuf keeps the last occurrence of a repeated singular field, hence [-1].
    features = list(_len_fields(entry, _FIELD_MAP_VALUE, where))
    bytes_lists = list(_len_fields(features[-1], _FIELD_BYTES_LIST, where)) if features else []
    if not bytes_lists:
        raise RecordFormatError(f"{where}: feature '{IMAGE_KEY}' is not a bytes_list")
    first = next(_len_fields(bytes_lists[-1], _FIELD_BYTES_VALUE, where), None)
    if first is not None:
        return bytes(first)
    raise RecordFormatError(f"{where}: feature '{IMAGE_KEY}' has an empty bytes_list")


# --- Writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordLocation:
    """Where a record landed: what the `.index` and the training index point at."""

    shard: int
    offset: int


def shard_path(data_root: Path, tfr_name: str, shard: int) -> Path:
    """Path of a shard as TFace resolves it: DATA_ROOT/<name>/<name>-%05d.tfrecord."""
    return Path(data_root) / tfr_name / f"{tfr_name}-{shard:05d}.tfrecord"


class _ClosedOnExit(contextlib.AbstractContextManager):
    """``with`` support shared by the writer and the reader: leaving the block closes the object.

    When an exception leaves the block, ``_abandon`` runs instead of ``close``; the writer
    overrides it to remove its unfinished files, the reader just closes its handles.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Release every file; a writer's files are put in place."""

    def _abandon(self, *exc_info: Any) -> None:
        self.close()

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self._abandon(*exc_info)


class ShardWriter(_ClosedOnExit):
    """Write a TFace dataset directory: numbered shards plus the `<name>.index` map.

    The index line stores `img_path` verbatim, so later steps (convert_new_index-style label
    joins) can map source images to records without re-reading the shards.
    """

    def __init__(self, out_dir: Path, name: str, records_per_shard: int = RECORDS_PER_SHARD):
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        _check_field("dataset name", name)
        self.name = name
        self.records_per_shard = records_per_shard
        self.directory = Path(out_dir) / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index_path = self.directory / f"{name}.index"
        # Every file goes through synface.io.atomic: in place (fsynced) when the writer closes
        # cleanly, removed when it is left by an exception.
        self._files = contextlib.ExitStack()
        self._index = self._open(self.index_path, "w")
        self._shard_file: BinaryIO | None = None
        self._shard = -1
        self._offset = 0
        self._in_shard = 0

    def _abandon(self, *exc_info: Any) -> None:
        """Close the files and let ``atomic_path`` remove them: nothing half-written stays."""
        self._close_files()
        self._files.__exit__(*exc_info)

    def _open(self, path: Path, mode: str) -> Any:
        tmp = self._files.enter_context(atomic_path(path))
        if "b" in mode:
            return self._files.enter_context(tmp.open(mode))
        return self._files.enter_context(tmp.open(mode, encoding="utf-8", newline="\n"))

    def write(self, jpeg: bytes, img_path: str) -> RecordLocation:
        """Append one image record and its index line; returns where the record starts."""
        _check_field("img_path", img_path)
        shard_file = self._current_shard_file()
        record = frame_record(encode_image_example(jpeg))
        location = RecordLocation(self._shard, self._offset)
        shard_file.write(record)
        self._index.write(f"{img_path}\t{location.shard}\t{location.offset}\n")
        self._offset += len(record)
        self._in_shard += 1
        return location

    def close(self) -> None:
        """Put every shard and the index in place."""
        self._close_files()
        self._files.close()

    def _close_files(self) -> None:
        if self._shard_file is not None:
            self._shard_file.close()
            self._shard_file = None
        self._index.close()

    def _current_shard_file(self) -> BinaryIO:
        """The open shard, rolling over to a new one when the current one is full."""
        if self._shard_file is not None and self._in_shard < self.records_per_shard:
            return self._shard_file
        if self._shard_file is not None:
            self._shard_file.close()
        self._shard += 1
        self._offset = 0
        self._in_shard = 0
        self._shard_file = self._open(
            shard_path(self.directory.parent, self.name, self._shard), "wb"
        )
        return self._shard_file


def _check_field(what: str, value: str) -> None:
    """Index files are tab/newline separated, so those characters would silently shift columns."""
    if not value or any(ch in value for ch in "\t\r\n"):
        raise ValueError(f"{what} {value!r} must be non-empty and free of tabs and newlines")


# --- Reading ------------------------------------------------------------------------------------


class RecordReader(_ClosedOnExit):
    """Random-access record reader with one cached file handle per shard.

    Handles are opened lazily and dropped on pickling, so a reader built in the main process can
    be shipped to DataLoader workers and each worker opens each shard once (as TFace does).
    """

    def __init__(self) -> None:
        self._handles: dict[Path, BinaryIO] = {}

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._handles = {}

    def read_payload(self, shard_path: Path, offset: int) -> bytes:
        """Read the record starting at `offset`, verifying both masked CRCs."""
        handle = self._handle(Path(shard_path))
        handle.seek(offset)
        header = handle.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise CorruptRecordError(
                f"{shard_path}: record at byte offset {offset}: truncated header "
                f"({len(header)} of {HEADER_SIZE} bytes); the offset is past the end of the shard "
                f"or the shard is truncated"
            )
        length_bytes, stored_length_crc = header[:LENGTH_SIZE], header[LENGTH_SIZE:]
        _verify_crc(length_bytes, stored_length_crc, "length", shard_path, offset)
        (length,) = _LENGTH_STRUCT.unpack(length_bytes)
        body = handle.read(length + CRC_SIZE)
        if len(body) < length + CRC_SIZE:
            raise CorruptRecordError(
                f"{shard_path}: record at byte offset {offset}: truncated payload "
                f"({len(body)} of {length + CRC_SIZE} bytes); the shard is truncated"
            )
        payload, stored_payload_crc = body[:length], body[length:]
        _verify_crc(payload, stored_payload_crc, "payload", shard_path, offset)
        return payload

    def read_image(self, shard_path: Path, offset: int) -> bytes:
        """Read the record at `offset` and return its JPEG bytes."""
        payload = self.read_payload(shard_path, offset)
        return decode_image_example(payload, where=f"{shard_path} at byte offset {offset}")

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _handle(self, path: Path) -> BinaryIO:
        handle = self._handles.get(path)
        if handle is None:
            handle = path.open("rb")
            self._handles[path] = handle
        return handle


def _verify_crc(data: bytes, stored: bytes, what: str, shard_path: Path, offset: int) -> None:
    (expected,) = _CRC_STRUCT.unpack(stored)
    actual = masked_crc32c(data)
    if actual != expected:
        raise CorruptRecordError(
            f"{shard_path}: record at byte offset {offset}: {what} CRC mismatch (stored "
            f"0x{expected:08x}, computed 0x{actual:08x}); the shard is corrupt or the index "
            f"offset does not point at a record start - rebuild the shard or fix the index"
        )


# --- Training index -------------------------------------------------------

_INDEX_COLUMNS = ("tfr_name", "shard", "offset", "label")


@dataclass(frozen=True)
class IndexEntry:
    """One line of a 4-column TFace training index: which record, and its class label."""

    tfr_name: str
    shard: int
    offset: int
    label: int

    def __post_init__(self) -> None:
        _check_field("tfr_name", self.tfr_name)
        for column in _INDEX_COLUMNS[1:]:
            value = getattr(self, column)
            # bool is an int subclass; True as a label would be a silent bug.
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{column} must be a non-negative int, got {value!r}")


def read_training_index(path: Path) -> list[IndexEntry]:
    """Parse a `tfr_name<TAB>shard<TAB>offset<TAB>label` index, validating every line up front.

    Validating the whole file before training starts turns a typo on line 3,000,000 into an
    immediate error rather than a crash hours into an epoch.
    """
    path = Path(path)
    entries = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            entries.append(_parse_index_line(line, path, lineno))
    return entries


def _parse_index_line(line: str, path: Path, lineno: int) -> IndexEntry:
    # TFace splits on tabs after a right-strip; we do the same so that files it accepts
    # parse identically.
    fields = line.rstrip().split("\t")
    if len(fields) != len(_INDEX_COLUMNS):
        raise IndexFormatError(
            f"{path}:{lineno}: expected {len(_INDEX_COLUMNS)} tab-separated columns "
            f"({', '.join(_INDEX_COLUMNS)}), found {len(fields)}: {line.rstrip()!r}"
        )
    numbers = []
    for column, text in zip(_INDEX_COLUMNS[1:], fields[1:], strict=True):
        if not (text.isascii() and text.isdigit()):
            raise IndexFormatError(
                f"{path}:{lineno}: column '{column}' must be a non-negative integer, got {text!r}"
            )
        numbers.append(int(text))
    try:
        return IndexEntry(fields[0], *numbers)
    except ValueError as exc:
        raise IndexFormatError(f"{path}:{lineno}: {exc}") from exc


def write_training_index(path: Path, entries: Iterable[IndexEntry]) -> None:
    """Write a 4-column training index atomically, so a crash never leaves a half-written index."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for e in entries:
            f.write(f"{e.tfr_name}\t{e.shard}\t{e.offset}\t{e.label}\n")


def iter_index_records(index_path: Path, data_root: Path) -> Iterator[tuple[bytes, int]]:
    """Yield `(jpeg_bytes, label)` for every line of a training index, CRC-checked.

    This is the stable entry point for consumers that do not care about shard mechanics.
    """
    entries = read_training_index(index_path)
    with RecordReader() as reader:
        for entry in entries:
            path = shard_path(data_root, entry.tfr_name, entry.shard)
            yield reader.read_image(path, entry.offset), entry.label
