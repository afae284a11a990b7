"""The `_monitors` table: every breach a stream monitor found, once (tidegate.ops.monitors).

    write_breaches(root, rows)            # insert-only on breach_id: a breach already there is skipped
    recorded_breaches(root, since=...)    # what `tidegate status` and the report show

A breach is identified by `breach_id` (monitor/kind/event type/window start[/column]), so
evaluating the monitors again, from the CLI or the ingest loop, never records one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from tidegate.lake.delta import Storage, scan_table, try_open
from tidegate.lake.tables import MONITORS, MONITORS_SCHEMA
from tidegate.lake.writer import CommitResult, insert_new


def write_breaches(
    root: str, rows: Sequence[dict[str, Any]], storage: Storage = None, *, run_id: str = ""
) -> CommitResult:
    """Insert the breaches (dicts of MONITORS_SCHEMA) whose breach_id is not recorded yet."""
    table = pa.Table.from_pylist(list(rows), schema=MONITORS_SCHEMA)
    return insert_new(
        MONITORS.uri(root),
        table,
        keys=MONITORS.keys,
        metadata={"tidegate_run_id": run_id, "tidegate_table": MONITORS.name},
        storage_options=storage,
    )


def recorded_ids(root: str, ids: Sequence[str], storage: Storage = None) -> set[str]:
    """Which of these breach ids `_monitors` already holds."""
    table = try_open(MONITORS.uri(root), storage)
    if table is None or not ids:
        return set()
    found = (
        scan_table(table, storage)
        .select("breach_id")
        .filter(pl.col("breach_id").is_in(list(ids)))
        .collect()
        .get_column("breach_id")
    )
    return set(found.to_list())


def recorded_breaches(root: str, storage: Storage = None, *, since: datetime | None = None) -> pl.DataFrame:
    """The `_monitors` table (detected at or after `since`), newest window first; empty with its
    schema when no breach was ever recorded."""
    table = try_open(MONITORS.uri(root), storage)
    if table is None:
        frame = pl.from_arrow(MONITORS_SCHEMA.empty_table())
        assert isinstance(frame, pl.DataFrame)
        return frame
    rows = scan_table(table, storage)
    if since is not None:
        rows = rows.filter(pl.col("detected_at") >= since)
    return rows.sort(["window_start", "breach_id"], descending=[True, False]).collect()
