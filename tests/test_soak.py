"""A 2-minute soak (bench/soak.py): mixed traffic from 50 clients over four models that
must be swapped in and out; no unexpected error, every stream complete, the daemon's FDs
and RSS flat."""

from __future__ import annotations

from pathlib import Path

from bench.soak import run_soak


def test_soak_two_minutes(tmp_path: Path) -> None:
    report = run_soak(2, tmp_path)
    summary = report.markdown()
    print(summary)
    assert report.total > 1000, summary
    assert report.unexpected_errors == 0, summary
    assert report.streams_started > 0 and report.streams_ok, summary
    assert report.fd_flat, summary
    assert report.rss_flat, summary
    assert not report.daemon_log_errors, summary
    assert not report.leftovers, summary
    assert report.stops.get("evicted", 0) > 0, summary  # the capacity really forced swaps
