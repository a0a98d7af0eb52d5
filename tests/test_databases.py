"""The list of test Redis databases: each used once, all within what the session Redis has."""

from __future__ import annotations

import re
from pathlib import Path

from tests import databases

TESTS = Path(__file__).parent


def test_databases_are_distinct_and_exist() -> None:
    values = list(databases.ALL.values())
    assert len(values) == len(set(values)), databases.ALL
    assert all(1 <= value < 32 for value in values)  # 0 is the session stack's


def test_no_test_picks_a_database_by_number() -> None:
    by_number = re.compile(r"redis_db\([^,()]+, \d+\)")
    found = [
        f"{path.relative_to(TESTS)}: {match.group(0)}"
        for path in TESTS.rglob("*.py")
        for match in by_number.finditer(path.read_text())
    ]
    assert found == []
