"""The benchmark's own arithmetic (the benchmark itself runs with `make bench`, not in tests)."""

from __future__ import annotations

from flaskmodel.bench.memory import soak_note


def test_soak_note_reports_each_worker_and_the_largest_growth() -> None:
    note = soak_note({10: 800 * 1024, 11: 90 * 1024}, {10: 812 * 1024, 11: 91 * 1024}, 20_000)
    assert "20,000 M1 inferences" in note
    assert "800 → 812 MiB" in note
    assert "largest growth 12.0 MiB" in note


def test_soak_note_says_when_the_workers_were_replaced() -> None:
    note = soak_note({10: 1024}, {12: 2048}, 5)
    assert "restarted in between" in note
