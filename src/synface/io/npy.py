"""Large ``.npy`` outputs filled batch by batch through a memory map, written atomically.

Embedding and latent files can exceed RAM (CASIA: 490k rows), so rows go straight into a memory
map of the final file. A stage that skips bad images ends with fewer rows than it planned; the
file is then cut to the rows written before it is put in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from synface.io.atomic import atomic_path

# Rows copied at a time when a file is cut to the rows written: bounds the copy's memory.
_COPY_ROWS = 65536


class RowWriter:
    """Appends rows to a memory-mapped array, counting them."""

    def __init__(self, rows: np.memmap) -> None:
        self.rows: np.memmap | None = rows
        self.count = 0

    def append(self, block: npt.ArrayLike) -> None:
        assert self.rows is not None, "the file is closed"
        block = np.asarray(block)
        self.rows[self.count : self.count + len(block)] = block
        self.count += len(block)

    def close(self) -> None:
        if self.rows is not None:
            self.rows.flush()
            self.rows = None


@contextlib.contextmanager
def write_rows(path: Path, shape: tuple[int, ...], dtype: npt.DTypeLike) -> Iterator[RowWriter]:
    """A `RowWriter` over at most ``shape[0]`` rows; ``path`` holds exactly the rows appended."""
    with atomic_path(path) as tmp:
        writer = RowWriter(np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape))
        yield writer
        writer.close()
        if writer.count < shape[0]:
            _keep_first_rows(tmp, writer.count)


def _keep_first_rows(path: Path, count: int) -> None:
    full = np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        kept = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=full.dtype, shape=(count, *full.shape[1:])
        )
        for start in range(0, count, _COPY_ROWS):
            stop = min(start + _COPY_ROWS, count)
            kept[start:stop] = full[start:stop]
        kept.flush()
        del kept
    del full
