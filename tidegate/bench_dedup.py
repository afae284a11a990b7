"""`tidegate bench dedup`: what exactly-once by (source, id) costs as a raw table grows.

    tidegate bench dedup --rows 10000000 [--json]

One raw-shaped table (event_source, event_id, event_date over 30 days, ingest_time over 30
days in write order, a payload column) grows in steps up to `--rows`. At each size a 5,000-row
commit of which half the keys are already in the table (re-sent events landed within the last
days, now with another event date) is timed four ways:

- `merge_horizon_ms`: streaming mode's commit (and a gs:// lake's): the insert-only MERGE over
  the rows ingested within the 7-day dedup horizon (`t.ingest_time >= now - 7 d`; file
  statistics skip older files), then, because the MERGE skipped re-sent keys, the lookup of
  their landed payload digests (id conflicts). `merge_horizon_fresh_ms` is the same commit for
  a chunk of new keys only (no lookup: the usual chunk). `merge_horizon_doubled` counts
  re-sent keys it inserted again: it must be 0;
- `merge_pruned_ms`: the MERGE pruned to the chunk's event dates (the commit before issue 13,
  kept for comparison: it cannot see other dates, so it inserts the re-sent keys again,
  `merge_pruned_doubled`);
- `merge_all_ms`: the MERGE over the whole table (every key column of the table is read);
- `index_append_ms`: local mode's single writer: key index check, then an append. Its one-time
  `index_load_s` (reading the keys of the whole table when a process first writes it) and the
  index's size (`index_mib`, 16 bytes a key) are reported too.

The median of three commits is reported; every commit's rows are new keys, so the table keeps
growing by what they add.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from tidegate.bench_scratch import scratch_dir
from tidegate.lake.keyindex import DEDUP_HORIZON, KeyIndex
from tidegate.lake.writer import append_new, insert_new

KEYS = ("event_source", "event_id")
DAYS = 30
CHUNK = 5_000
START = date(2026, 11, 1)


def _rows(first: int, n: int, day_of: Any, ingested: Any = None) -> pa.Table:
    ids = [f"evt-{i:012d}" for i in range(first, first + n)]
    now = datetime.now(UTC)
    when = [ingested(i) for i in range(first, first + n)] if ingested else [now] * n
    return pa.table(
        {
            "event_source": pa.array(["//shop.example.com/checkout"] * n),
            "event_id": pa.array(ids),
            "event_date": pa.array([day_of(i) for i in range(first, first + n)], pa.date32()),
            "ingest_time": pa.array(when, pa.timestamp("us", tz="UTC")),
            "amount": pa.array([float(i % 1000) for i in range(first, first + n)]),
            "payload_digest": pa.array([f"{i:016x}" for i in range(first, first + n)]),
        }
    )


def _spread(i: int) -> date:
    return START + timedelta(days=i % DAYS)


def _chunk(table_rows: int, serial: int) -> pa.Table:
    """CHUNK rows dated today: half re-send keys landed in the table's newest tenth (within the
    horizon: they must dedup across dates), half are new."""
    half = CHUNK // 2
    today = START + timedelta(days=DAYS)
    recent = max(1, table_rows // 10 - half)
    start = table_rows - table_rows // 10 + (serial * 7919 * half) % recent
    old = _rows(start, half, lambda _i: today)
    new = _rows(10**11 + serial * half, half, lambda _i: today)
    return pa.concat_tables([old, new])


def bench_dedup(rows: int, progress: Any = print) -> dict[str, Any]:
    work = scratch_dir("tidegate-bench-dedup-")
    uri = str(work / "raw")
    sizes = [s for s in (100_000, 1_000_000, 10_000_000, 100_000_000) if s < rows] + [rows]
    figures: dict[str, Any] = {"rows": rows, "chunk": CHUNK}
    have = 0
    serial = 0
    now = datetime.now(UTC)
    for size in sizes:
        progress(f"growing the table to {size:,} rows ...")

        def ingested(i: int, size: int = size) -> datetime:  # oldest first, 30 days by the end
            return now - timedelta(days=DAYS) * (1 - i / size)

        while have < size:
            n = min(1_000_000, size - have)
            write_deltalake(
                uri, _rows(have, n, _spread, ingested), mode="append", partition_by=["event_date"]
            )
            have += n
        names = (
            "merge_horizon_ms",
            "merge_horizon_fresh_ms",
            "merge_pruned_ms",
            "merge_all_ms",
            "index_append_ms",
        )
        timings: dict[str, list[float]] = {name: [] for name in names}
        doubled = {"merge_horizon_ms": 0, "merge_pruned_ms": 0}  # re-sent keys inserted again
        for _ in range(3):
            for name, prune, horizon in (
                ("merge_horizon_ms", None, DEDUP_HORIZON),
                ("merge_pruned_ms", "event_date", None),
                ("merge_all_ms", None, None),
            ):
                serial += 1
                t = time.perf_counter()
                done = insert_new(
                    uri,
                    _chunk(have, serial),
                    keys=KEYS,
                    partition_by=["event_date"],
                    prune_on=prune,
                    horizon=horizon,
                    conflict_on="payload_digest" if horizon else None,
                )
                timings[name].append(1000 * (time.perf_counter() - t))
                if name in doubled:
                    doubled[name] += done.inserted - CHUNK // 2
            serial += 1
            fresh = _rows(2 * 10**11 + serial * CHUNK, CHUNK, lambda _i: START + timedelta(days=DAYS))
            t = time.perf_counter()
            insert_new(
                uri,
                fresh,
                keys=KEYS,
                partition_by=["event_date"],
                horizon=DEDUP_HORIZON,
                conflict_on="payload_digest",
            )
            timings["merge_horizon_fresh_ms"].append(1000 * (time.perf_counter() - t))
        index = KeyIndex(uri, KEYS, value="payload_digest")
        t = time.perf_counter()
        serial += 1
        append_new(uri, _chunk(have, serial), keys=KEYS, index=index, partition_by=["event_date"])
        load_s = time.perf_counter() - t
        for _ in range(3):
            serial += 1
            t = time.perf_counter()
            append_new(uri, _chunk(have, serial), keys=KEYS, index=index, partition_by=["event_date"])
            timings["index_append_ms"].append(1000 * (time.perf_counter() - t))
        label = f"{size // 1000:,}k".replace(",", "_") if size < 1_000_000 else f"{size // 1_000_000}m"
        for name, values in timings.items():
            figures[f"{label}_{name}"] = round(statistics.median(values), 1)
        figures[f"{label}_index_load_s"] = round(load_s, 2)
        figures[f"{label}_merge_horizon_doubled"] = doubled["merge_horizon_ms"]
        figures[f"{label}_merge_pruned_doubled"] = doubled["merge_pruned_ms"]
        figures[f"{label}_index_mib"] = round(len(index) * 16 / 2**20, 1)
        progress(
            f"  {size:,} rows: MERGE horizon {figures[f'{label}_merge_horizon_ms']:,} ms "
            f"({figures[f'{label}_merge_horizon_fresh_ms']:,} ms without re-sent keys), "
            f"MERGE pruned {figures[f'{label}_merge_pruned_ms']:,} ms, "
            f"MERGE all {figures[f'{label}_merge_all_ms']:,} ms, index+append "
            f"{figures[f'{label}_index_append_ms']:,} ms (index load {load_s:.2f} s)"
        )
    return figures
