"""Recognition settings beyond ADMIS that are off by default, and their records.

Kept apart from the training code so that the workflow can import it at parse time without
torch.
"""

from __future__ import annotations

from typing import Any

from synface.settings import without_switches_off


def augment_record(augment: dict[str, Any]) -> dict[str, Any]:
    """An ``augment`` section without the RandAugment keys while it is off: the settings that
    runs made before the switch existed recorded, so they are neither rerun nor refused."""
    return without_switches_off(
        augment, {"randaugment_ops": 0}, {"randaugment_ops": ["randaugment_magnitude"]}
    )
