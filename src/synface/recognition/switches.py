"""Recognition settings beyond ADMIS that are off by default, and their records.

Kept apart from the training code so that the workflow can import it at parse time without
torch.
"""

from __future__ import annotations

from typing import Any


def augment_record(augment: dict[str, Any]) -> dict[str, Any]:
    """An ``augment`` section without the RandAugment keys while it is off: the settings that
    runs made before the switch existed recorded, so they are neither rerun nor refused."""
    if augment.get("randaugment_ops", 0):
        return augment
    return {k: v for k, v in augment.items() if not k.startswith("randaugment_")}
