"""`tidegate bench commits`: does a table stay healthy after thousands of small commits?

    tidegate bench commits --commits 10000 [--rows 50] [--json]

What an `ingest --follow` run does to a raw table all day: one small commit per micro-batch
(`--rows` rows, today's event date), through the same writer (key index, then an append) and
with the same compactor thread (tidegate.pipelines.local.compaction: every 2 s, partitions with
16+ small files, and, once a minute, a checkpoint and the deletion of log files older than
`--log-retention`: 1 h in `ingest --follow`) and delta-rs's checkpoints (every 100 versions).
The bench makes its commits ~25x faster than a --follow run at one batch per 2 s, so a short
`--log-retention` (e.g. 2m) stands for the follow run's hour: without it the log grows by a file
per commit and every open, update and history read lists it. It reports, for the first and
the last 100 commits, the commit latency (p50, p99) and the time to open the table afresh (what
a reader, a restart or `status` pays), and their ratios: the target is at most 1.5x.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable

from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.maintenance import set_log_retention
from tidegate.lake.writer import append_new
from tidegate.pipelines.local.compaction import Compactor

KEYS = ("event_source", "event_id")


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


def bench_commits(
    commits: int, rows: int = 50, log_retention: str | None = "1h", progress: Any = print
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-commits-"))
    uri = str(work / "raw")
    index = KeyIndex(uri, KEYS)
    latencies: list[float] = []
    opens: list[tuple[int, float]] = []
    append_new(uri, _chunk(rows, 0), keys=KEYS, index=index, partition_by=["event_date"])
    if log_retention is not None:  # the table was made with 1 h: the bench's own window, before any writer
        set_log_retention(uri, log_retention)
    compactor = Compactor([uri], every=2.0, min_files=16, storage=None, log_retention=log_retention)
    started = time.perf_counter()
    try:
        for serial in range(1, commits + 1):
            t = time.perf_counter()
            append_new(uri, _chunk(rows, serial), keys=KEYS, index=index, partition_by=["event_date"])
            latencies.append(time.perf_counter() - t)
            if serial % 100 == 0:
                t = time.perf_counter()
                DeltaTable(uri).version()
                opens.append((serial, time.perf_counter() - t))
            if serial % 1000 == 0:
                progress(
                    f"  {serial:,} commits: last 100 p50 {statistics.median(latencies[-100:]) * 1000:.1f} ms, "
                    f"open {opens[-1][1] * 1000:.1f} ms, {len(DeltaTable(uri).file_uris())} files"
                )
    finally:
        compactor.close()
    first, last = latencies[:100], latencies[-100:]
    first_open = statistics.median(o for _, o in opens[:3])
    last_open = statistics.median(o for _, o in opens[-3:])
    table = DeltaTable(uri)
    return {
        "commits": commits,
        "rows_per_commit": rows,
        "log_retention": log_retention or "none",
        "log_files_at_end": len(list((work / "raw" / "_delta_log").iterdir())),
        "seconds": round(time.perf_counter() - started, 1),
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
        "compacted_files": compactor.compacted,
    }
