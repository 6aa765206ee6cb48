"""Shards: how synthesis and the context stage split their items into Snakemake jobs.

Torch-free, so the workflow can plan a 300k-identity run without importing the models.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synface.io.atomic import write_json

SETTINGS_FILE = "settings.json"


def shard_ranges(num_identities: int, ids_per_shard: int) -> list[range]:
    """Contiguous ranges of at most ``ids_per_shard`` items (identities, context candidates),
    one Snakemake job each."""
    if num_identities < 0 or ids_per_shard < 1:
        raise ValueError(
            f"need num_identities >= 0 and ids_per_shard >= 1, got {num_identities} and "
            f"{ids_per_shard}"
        )
    return [
        range(start, min(start + ids_per_shard, num_identities))
        for start in range(0, num_identities, ids_per_shard)
    ]


# Journal suffix: present while a shard runs or after it was interrupted. Synthesis and the
# context stage share the rule: a journal means resume (keep finished items), none a fresh run.
JOURNAL_SUFFIX = ".running"


def journal_of(done_marker: Path) -> Path:
    """``.<stem>.running`` beside a shard's done marker (see ``JOURNAL_SUFFIX``)."""
    return done_marker.with_name(f".{done_marker.stem}{JOURNAL_SUFFIX}")


def claim_folder(
    folder: Path, record: dict[str, Any], count_finished: Callable[[], int], what: str, restore: str
) -> None:
    """Write ``folder/settings.json`` or check that the one there equals ``record``.

    The shards of one run write equal records, so concurrent first writes are harmless. A
    record with no finished item beside it (``count_finished()``, called only then) is
    replaced: a failed start must not block its fix. Otherwise a different record stops the
    job before it mixes ``what`` (e.g. "identities") of two settings.
    """
    path = Path(folder) / SETTINGS_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        if existing == record:
            return
        finished = count_finished()
        if finished:
            keys = record.keys() | existing.keys()
            changed = sorted(k for k in keys if existing.get(k) != record.get(k))
            raise ValueError(
                f"{folder} holds {finished} {what} made with other settings "
                f"({', '.join(changed)} differ from {path}); nothing was changed. To continue, "
                f"restore {restore}. To start over with the new ones, delete {folder} yourself: "
                f"that deletes its {finished} finished {what}"
            )
    write_json(path, record)


def grid_batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    """``indices`` grouped by ``i // batch_size``: the batches one job over every item would
    make, whichever shard or resumed run holds them."""
    batches: dict[int, list[int]] = {}
    for i in indices:
        batches.setdefault(i // batch_size, []).append(i)
    return list(batches.values())
