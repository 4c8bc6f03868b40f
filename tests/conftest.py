from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import kill_recorded


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Path]:
    """A file the fake models append their starts and requests to; leftovers fail the test."""
    path = tmp_path / "records.jsonl"
    yield path
    leftovers = kill_recorded(path)
    assert not leftovers, f"model processes outlived the test: {leftovers}"
