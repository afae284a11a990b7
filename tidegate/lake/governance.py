"""Governance of an event-sourced lake: retention that keeps the books true, and an audit trail.

    expired = expire(LakeTables(root, catalog), run_id=..., actor=actor())   # `tidegate maintain`
    cutoffs = retention_cutoffs(root)        # table -> rows before this were deleted on purpose

**Retention** is declared in the catalog: each stream's `retention` (raw rows by event date),
`quarantine.retention` (by quarantine date) and, optionally, an aggregate's own `retention`
(by window start). `expire` deletes what is older with one Delta DELETE per table (a partition
predicate: whole files go, nothing is rewritten), its commit metadata saying what and why
(`tidegate_operation=expire`, predicate, rows, reason, run), and appends one row per deletion
to the `_audit` table. The files stay on disk for the removed-file window until `maintain`
vacuums them (`--retain-hours`, 168 by default).

**The books stay true.** Aggregates keep their windows when raw history expires (they are small
and are what analysts keep), unless they declare a retention of their own: the projection
skips an expire commit (tidegate.lake.projection), and `verify` compares an aggregate with a
recompute of raw only for windows starting at or after the raw table's latest retention
cutoff, saying how many older windows it left out. verify's manifest check counts an event
older than a cutoff as expired, not lost; the ledger is history and is never rewritten.

**The audit trail** (`_audit`, tidegate.lake.tables.AUDIT_SCHEMA): who (`--actor`, else
user@host), when, which table, the predicate, how many rows, why, the run; for an erasure
(tidegate.lake.erasure) a keyed digest of the subject, never the subject.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, write_deltalake

from tidegate.catalog import parse_duration
from tidegate.lake.delta import try_open
from tidegate.lake.tables import AUDIT, AUDIT_SCHEMA, QUARANTINE, LakeTables, aggregate_table, raw_table


def actor(explicit: str | None = None) -> str:
    """Who is acting: --actor, else the OS user at this host."""
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_audit(root: str, rows: Sequence[dict[str, Any]], storage: dict[str, str] | None = None) -> None:
    """Append rows (dicts of AUDIT_SCHEMA; audit_id and at filled in) to `_audit`."""
    if not rows:
        return
    now = datetime.now(UTC)
    full = [
        {
            "audit_id": uuid.uuid4().hex,
            "at": now,
            "predicate": None,
            "cutoff": None,
            "table_version": None,
            "subject_digest": None,
            "erased_events": None,
            "removed_files": None,
            **r,
        }
        for r in rows
    ]
    write_deltalake(
        AUDIT.uri(root),
        pa.Table.from_pylist(full, schema=AUDIT_SCHEMA),
        mode="append",
        schema_mode="merge",  # an _audit made before `removed_files` gains the column
        commit_properties=CommitProperties(custom_metadata={"tidegate_table": "_audit"}),
        storage_options=storage,
    )


def _partition_values(table: Any, column: str) -> list[Any]:
    actions = pa.table(table.get_add_actions(flatten=True))
    key = f"partition.{column}"
    return actions.column(key).to_pylist() if key in actions.column_names else []


def _delete(
    uri: str,
    predicate: str,
    metadata: dict[str, str],
    storage: dict[str, str] | None,
) -> tuple[int, int | None, list[str]]:
    """One Delta DELETE; (rows deleted, version committed, the data files it removed)."""
    table = try_open(uri, storage)
    if table is None:
        return 0, None, []
    before = set(table.file_uris())
    metrics = table.delete(predicate, commit_properties=CommitProperties(custom_metadata=metadata))
    deleted = int(metrics.get("num_deleted_rows", 0))
    if not deleted:
        return 0, None, []
    table.update_incremental()  # callers hold the lake lock: only this DELETE changed the files
    return deleted, table.version(), sorted(before - set(table.file_uris()))


def expire(
    tables: LakeTables,
    *,
    run_id: str,
    actor: str,
    now: datetime | None = None,
    storage: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Delete every row older than its table's declared retention; returns the audit rows it
    wrote (one per table that lost rows)."""
    now = now or datetime.now(UTC)
    catalog = tables.catalog
    plans: list[tuple[str, str, str, datetime, Any]] = []  # uri, name, reason, cutoff, predicate builder
    for stream in catalog.streams:
        if stream.retention is None:
            continue
        cutoff = _cutoff_day(now, stream.retention)
        for event_type in stream.types:
            spec = raw_table(event_type)
            plans.append(
                (
                    spec.uri(tables.root),
                    spec.name,
                    f"retention {stream.retention} of stream {event_type} (by event date)",
                    cutoff,
                    ("event_date", cutoff.date()),
                )
            )
    if catalog.quarantine.retention is not None:
        cutoff = _cutoff_day(now, catalog.quarantine.retention)
        plans.append(
            (
                QUARANTINE.uri(tables.root),
                QUARANTINE.name,
                f"quarantine retention {catalog.quarantine.retention} (by quarantine date)",
                cutoff,
                ("quarantine_date", cutoff.date()),
            )
        )
    for aggregate in catalog.aggregates:
        if aggregate.retention is None:
            continue
        cutoff = _cutoff_day(now, aggregate.retention)
        plans.append(
            (
                aggregate_table(aggregate.name).uri(tables.root),
                f"aggregates/{aggregate.name}",
                f"retention {aggregate.retention} of aggregate {aggregate.name} (by window start)",
                cutoff,
                ("window_start", cutoff),
            )
        )
    audit: list[dict[str, Any]] = []
    for uri, name, reason, cutoff, (column, bound) in plans:
        table = try_open(uri, storage)
        if table is None:
            continue
        if column != "window_start" and not any(
            v is not None and v < bound for v in _partition_values(table, column)
        ):
            continue  # no partition is old enough: no empty commit
        literal = (
            f"'{bound.isoformat()}'"
            if isinstance(bound, date) and not isinstance(bound, datetime)
            else (f"CAST('{bound.strftime('%Y-%m-%dT%H:%M:%S')}Z' AS TIMESTAMP)")
        )
        predicate = f"{column} < {literal}"
        if column == "window_start":
            old = pl.from_arrow(table.to_pyarrow_table(columns=["window_start"]))
            assert isinstance(old, pl.DataFrame)
            if old.filter(pl.col("window_start") < bound).is_empty():
                continue
        metadata = {
            "tidegate_operation": "expire",
            "tidegate_run_id": run_id,
            "tidegate_predicate": predicate,
            "tidegate_reason": reason,
            "tidegate_actor": actor,
        }
        rows, version, removed = _delete(uri, predicate, metadata, storage)
        if rows:
            audit.append(
                entry := {
                    "action": "expire",
                    "actor": actor,
                    "run_id": run_id,
                    "table": name,
                    "predicate": predicate,
                    "rows": rows,
                    "reason": reason,
                    "cutoff": cutoff,
                    "table_version": version,
                    "removed_files": removed,
                }
            )
            # recorded at once: should a later table's delete fail, this one is already audited
            write_audit(tables.root, [entry], storage)
    return audit


def _cutoff_day(now: datetime, retention: str) -> datetime:
    """Midnight (UTC) of the first day kept: rows of earlier days are past `retention`."""
    first = (now - timedelta(seconds=parse_duration(retention))).date()
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def audit_rows(root: str, storage: dict[str, str] | None = None) -> pl.DataFrame:
    """The `_audit` table (empty with its schema when no deletion was ever made)."""
    table = try_open(AUDIT.uri(root), storage)
    if table is None:
        return pl.from_arrow(AUDIT_SCHEMA.empty_table())  # type: ignore[return-value]
    return pl.from_arrow(table.to_pyarrow_table())  # type: ignore[return-value]


def retention_cutoffs(root: str, storage: dict[str, str] | None = None) -> dict[str, datetime]:
    """Per table, the latest retention cutoff applied: rows before it were deleted on purpose."""
    rows = audit_rows(root, storage).filter(pl.col("action") == "expire")
    return {t: c for t, c in rows.group_by("table").agg(pl.col("cutoff").max()).iter_rows() if c is not None}
