"""The GPU check script runs end to end in its tiny mode (CPU) and prints the README's table."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_prints_one_table(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--threads", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| work | synface img/s | MFU | peak GiB | reference img/s")
    works = [line.split(" | ")[0] for line in table[1:]]
    assert [w.split(",")[0] for w in works] == ["| synthesis", "| LDM training", "| IR-18 training"]
    assert "torch " in result.stdout and "on CPU at commit" in result.stdout
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["markdown"] in result.stdout
    # Both samplings of the identity check ran and scored (the tiny model: any value).
    assert 0 <= figures["retrieval_before"] <= 1 and 0 <= figures["retrieval_after"] <= 1
    assert all(row["synface"] > 0 and row["reference"] > 0 for row in figures["rows"])
