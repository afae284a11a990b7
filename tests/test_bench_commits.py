"""`tidegate bench commits` on a real table: the figures it reports come from a table that went
through the writer, the compactor and the log cleanup as a `--follow` run's does, and lost
nothing on the way."""

from __future__ import annotations

from tidegate.bench_commits import bench_commits


def test_the_commits_bench_reports_both_ends_and_its_table_keeps_every_row_once() -> None:
    # a 1-minute log window stands for 1-2 s here: the log is cleaned several times during the run
    figures = bench_commits(300, rows=20, log_retention="1m", warmup=60, progress=lambda _: None)

    assert figures["rows_exactly_once"] is True
    assert figures["rows_at_end"] == 301 * 20
    assert figures["compacted_files"] > 0  # the compactor ran beside the writer
    assert figures["log_files_at_end"] < figures["versions"]  # and the log was cleaned
    # the bench's window: whole seconds, rounded up from 1 minute at the planned speedup (1 s on
    # a fast machine, 2 s on a slow one: it asserted 1 s and failed on a slow run), never shorter
    # than the window it stands for
    window, speedup = figures["bench_log_retention_s"], figures["speedup_planned"]
    assert window >= 1
    assert window * speedup >= 60 * 0.99
    for key in ("commit_p50_ratio", "open_ratio", "first_100_commit_p50_ms", "last_open_ms"):
        assert figures[key] > 0
