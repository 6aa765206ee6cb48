"""Progress of long stages: a bar on a terminal, plain lines without carriage returns elsewhere."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from synface.progress import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """The stages' logging set up as the CLI does, writing to a file as a rule's log: does."""
    path = tmp_path / "rule.log"
    root = logging.getLogger()
    with path.open("w") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield path
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def test_a_file_gets_one_plain_line_every_n_steps_with_rate_and_eta(log_file: Path) -> None:
    with log_file.open() as stream:
        items = list(progress(range(25), desc="packing", every=10, unit="images", stream=stream))
    assert items == list(range(25))
    text = log_file.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if "packing" in line]
    counts = [re.search(r"packing: (\d+)/25 images", line).group(1) for line in lines]
    assert counts == ["10", "20", "25"]  # every 10 steps, and the end
    assert all("images/s" in line and "elapsed" in line for line in lines)
    assert all("ETA" in line for line in lines[:-1])


def test_update_counts_batches_and_a_line_follows_each_multiple(log_file: Path) -> None:
    with log_file.open() as stream, progress(100, "embedding", every=30, stream=stream) as bar:
        for _ in range(4):
            bar.update(25)
    lines = [line for line in log_file.read_text().splitlines() if "embedding" in line]
    assert [re.search(r"embedding: (\d+)/", line).group(1) for line in lines] == [
        "50",
        "75",
        "100",
    ]


def test_a_resumed_loop_starts_at_its_initial_step(log_file: Path) -> None:
    with (
        log_file.open() as stream,
        progress(10, "training", every=5, initial=5, stream=stream) as bar,
    ):
        bar.update(5)
    (line,) = [line for line in log_file.read_text().splitlines() if "training" in line]
    assert "training: 10/10 it (100%)" in line


def test_a_terminal_gets_a_tqdm_bar_and_no_plain_lines(log_file: Path) -> None:
    terminal = FakeTerminal()
    for _ in progress(range(50), desc="synthesis", every=10, unit="faces", stream=terminal):
        pass
    drawn = terminal.getvalue()
    assert "\r" in drawn and "synthesis" in drawn and "50/50" in drawn
    assert "faces/s" in drawn
    assert "synthesis" not in log_file.read_text()


def test_a_disabled_progress_reports_nothing(log_file: Path) -> None:
    terminal = FakeTerminal()
    with progress(10, "rank 1", every=1, stream=terminal, disable=True) as bar:
        bar.update(10)
    assert terminal.getvalue() == "" and "rank 1" not in log_file.read_text()
