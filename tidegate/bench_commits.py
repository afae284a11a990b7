"""`tidegate bench commits`: does a table stay healthy after thousands of small commits?

    tidegate bench commits --commits 10000 [--rows 50] [--json]

What an `ingest --follow` run does to a raw table all day: one small commit per micro-batch
(`--rows` rows, today's event date), through the same writer (key index, then an append) and
with the same compactor thread (tidegate.pipelines.local.compaction: every 2 s, partitions with
16+ small files; every 2 minutes, a checkpoint and the deletion of log files older than the log
retention, 10 minutes in a lake) and delta-rs's checkpoints (every 100 versions).

The bench commits ~50-100x faster than a --follow run under load (one batch per `pace` = 2 s).
So that its table holds as many commits in its log window as the follow run's table would,
it divides the log retention and the compactor's cadences by that speedup, measured on a
scratch table with the compactor running, in two rounds of `warmup` commits, the second with
the window the first measured (`speedup_planned`; the window is rounded up to whole seconds);
`speedup_measured` and `stands_for_log_retention_s` say what the measured part turned out to
stand for. `rows_exactly_once` checks the table at the end: every committed row, once. It reports,
for the first and the last 100 commits, the commit latency (p50, p99) and the time to open the
table afresh (median of one open per 10 commits: what a reader, a restart or `status` pays),
and their ratios: the target is at most 1.5x. `--log-retention 1h` shows the old window.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from tidegate.bench_scratch import scratch_dir
from tidegate.catalog import parse_duration
from tidegate.lake.delta import LOG_RETENTION, try_open
from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.maintenance import set_log_retention
from tidegate.lake.writer import append_new
from tidegate.pipelines.local.compaction import COMPACT_EVERY_S, LOG_CLEAN_EVERY_S, Compactor

KEYS = ("event_source", "event_id")
FOLLOW_PACE_S = 2.0  # an `ingest --follow` run under steady load commits a batch every ~2 s
WARMUP = 600  # commits per calibration round
CALIBRATION_ROUNDS = 2


def _chunk(rows: int, serial: int) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table(
        {
            "event_source": pa.array(["//shop.example.com/checkout"] * rows),
            "event_id": pa.array([f"{serial:08d}-{i:04d}-{uuid.uuid4().hex[:8]}" for i in range(rows)]),
            "event_date": pa.array([date.today()] * rows, pa.date32()),
            "ingest_time": pa.array([now] * rows, pa.timestamp("us", tz="UTC")),
            "amount": pa.array([float(i) for i in range(rows)]),
        }
    )


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _window(log_retention: str | None, speedup: float) -> int | None:
    """The bench's log retention, in seconds, standing for `log_retention` of a --follow run."""
    # rounded up: the window stands for at least `log_retention` (a harder test, never an easier one)
    return None if log_retention is None else max(1, math.ceil(parse_duration(log_retention) / speedup))


def _compactor(uri: str, speedup: float, window: int | None) -> Compactor:
    return Compactor(
        [uri],
        every=COMPACT_EVERY_S / speedup,
        min_files=16,
        storage=None,
        log_retention=None if window is None else f"{window}s",
        clean_every=LOG_CLEAN_EVERY_S / speedup,
    )


def bench_commits(
    commits: int,
    rows: int = 50,
    log_retention: str | None = LOG_RETENTION,
    pace: float = FOLLOW_PACE_S,
    warmup: int = WARMUP,
    progress: Any = print,
) -> dict[str, Any]:
    work = scratch_dir("tidegate-bench-commits-")
    latencies: list[float] = []
    opens: list[tuple[int, float]] = []

    def committer(uri: str) -> Any:
        index = KeyIndex(uri, KEYS)

        def commit(serial: int) -> float:
            t = time.perf_counter()
            append_new(uri, _chunk(rows, serial), keys=KEYS, index=index, partition_by=["event_date"])
            return time.perf_counter() - t

        return commit

    # Warm up on a scratch table, with the compactor running as in the measured part: how much
    # faster than a --follow run (one commit per `pace` s) this bench commits. The log retention
    # and the compactor's cadences are divided by that speedup, so the measured table holds as
    # many commits in its log window as the --follow run's would. A commit is slower once the
    # window is full, and the window depends on the speed: two rounds of `warmup` commits, each
    # with the window the previous one measured, timed over their second half (steady state).
    scratch = str(work / "warm-up")
    warm_commit = committer(scratch)
    speedup = max(1.0, pace / statistics.median([warm_commit(-i) for i in range(1, 21)]))
    serial = 0
    for _ in range(CALIBRATION_ROUNDS):
        window = _window(log_retention, speedup)
        if window is not None:
            set_log_retention(scratch, f"{window}s")
        compactor = _compactor(scratch, speedup, window)
        try:
            t = time.perf_counter()
            for i in range(1, warmup + 1):  # the measured loop's work: a commit, an open per 10
                if i == warmup // 2:
                    t = time.perf_counter()
                serial += 1
                warm_commit(serial)
                if i % 10 == 0:
                    try_open(scratch)
            per_commit = (time.perf_counter() - t) / (warmup - warmup // 2 + 1)
        finally:
            compactor.close()
        speedup = max(1.0, pace / per_commit)
    window = _window(log_retention, speedup)

    uri = str(work / "raw")
    commit = committer(uri)
    commit(0)  # creates the table, with the product's window: then the bench's own
    if window is not None:
        set_log_retention(uri, f"{window}s")
    compactor = _compactor(uri, speedup, window)
    started = time.perf_counter()
    try:
        for serial in range(1, commits + 1):
            latencies.append(commit(serial))
            if serial % 10 == 0:
                t = time.perf_counter()
                try_open(uri)  # what every tidegate reader calls (the latest version)
                opens.append((serial, time.perf_counter() - t))
            if serial % 1000 == 0:
                progress(
                    f"  {serial:,} commits: last 100 p50 {statistics.median(latencies[-100:]) * 1000:.1f} ms, "
                    f"open {statistics.median(o for _, o in opens[-10:]) * 1000:.1f} ms, "
                    f"{len(DeltaTable(uri).file_uris())} files"
                )
    finally:
        compactor.close()
    elapsed = time.perf_counter() - started
    first, last = latencies[:100], latencies[-100:]
    first_open = statistics.median(o for n, o in opens if n <= 100)
    last_open = statistics.median(o for n, o in opens if n > commits - 100)
    table = DeltaTable(uri)
    ids = table.to_pyarrow_table(columns=["event_id"]).column("event_id")
    return {
        "commits": commits,
        "rows_per_commit": rows,
        "log_retention": log_retention or "none",
        # how many times faster than --follow (one commit per `pace` s) the bench committed:
        # planned from the warm-up, and as it turned out over the measured commits
        "speedup_planned": round(speedup, 1),
        "speedup_measured": round(pace * commits / elapsed, 1),
        "bench_log_retention_s": window,
        # the --follow log window the bench's window stood for, at the measured speedup
        "stands_for_log_retention_s": None if window is None else round(window * pace * commits / elapsed),
        "log_files_at_end": len(list((work / "raw" / "_delta_log").iterdir())),
        "seconds": round(elapsed, 1),
        "first_100_commit_p50_ms": round(statistics.median(first) * 1000, 1),
        "first_100_commit_p99_ms": round(_p(first, 0.99) * 1000, 1),
        "last_100_commit_p50_ms": round(statistics.median(last) * 1000, 1),
        "last_100_commit_p99_ms": round(_p(last, 0.99) * 1000, 1),
        "commit_p50_ratio": round(statistics.median(last) / statistics.median(first), 2),
        "first_open_ms": round(first_open * 1000, 1),
        "last_open_ms": round(last_open * 1000, 1),
        "open_ratio": round(last_open / first_open, 2),
        "files_at_end": len(table.file_uris()),
        "versions": table.version(),
        # every committed row is there once, after thousands of compactions and log cleanups
        "rows_at_end": len(ids),
        "rows_exactly_once": len(ids) == (commits + 1) * rows and len(pc.unique(ids)) == len(ids),
        "compacted_files": compactor.compacted,
    }
