"""Identity shards: how synthesis splits a set into Snakemake jobs.

Torch-free, so the workflow can plan a 30k-identity run without importing the models.
"""

from __future__ import annotations


def shard_ranges(num_identities: int, ids_per_shard: int) -> list[range]:
    """Contiguous identity ranges of at most ``ids_per_shard``, one Snakemake job each."""
    if num_identities < 0 or ids_per_shard < 1:
        raise ValueError(
            f"need num_identities >= 0 and ids_per_shard >= 1, got {num_identities} and "
            f"{ids_per_shard}"
        )
    return [
        range(start, min(start + ids_per_shard, num_identities))
        for start in range(0, num_identities, ids_per_shard)
    ]
