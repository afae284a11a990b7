"""Idempotent commits to Delta tables (delta-rs), with lineage in every commit.

`insert_new(uri, rows, keys=...)` is the only way ingestion writes raw history and
quarantine: an insert-only MERGE on the key (`when_not_matched_insert_all`), so a row whose
key is already in the table is skipped, never updated. Replaying a micro-batch (Pub/Sub
redelivery, a snapshot seek, a restart after a crash between commit and ack) therefore
inserts nothing twice, and ingestion never rewrites or deletes a row. Raw history's MERGE
looks only at rows ingested within the dedup horizon (`horizon=`: `t.ingest_time >= now - 7 d`;
file statistics skip older files, since files are written in ingest order), so an id re-sent
with any event time lands once, and a commit reads the horizon's keys, not the table's. Other
tables prune on a partition column (`prune_on=`, platform facts: ~8x faster).

**Id conflicts.** With `conflict_on=` (a digest column; raw history's `payload_digest`), a row
whose key is already in the table (or earlier in the same batch) with ANOTHER digest is an id
conflict: it is not inserted, and `CommitResult.conflicts` names it (its position in the rows
handed in, and the digest that landed) so the caller can quarantine it. A row with the same
digest is a plain duplicate.

`append_new(uri, rows, keys=..., index=...)` is the same contract for a table's only writer
(local mode holds the lake lock): the keys already in the table come from an in-memory index
(`tidegate.lake.keyindex`), the new rows are appended, and a commit costs the same whatever the table's
size. Both dedup whatever the event date, within the horizon.

Commit conflicts (another writer committed first) are retried with backoff and then raised
as `TransientError`: the batch is not acked and will be redelivered, nothing is quarantined.

    uv run python -c "import pyarrow as pa; from tidegate.lake.writer import insert_new; \
        print(insert_new('/tmp/t', pa.table({'id': ['a', 'b']}), keys=['id']))"
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from tidegate.errors import TransientError
from tidegate.lake.delta import (
    LOG_RETENTION,
    OpenTables,
    commit_hooks,
    log_cleaned_under_read,
    retention_properties,
    try_open,
)
from tidegate.lake.keyindex import value_of

log = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 6
# Every table tidegate's writers create keeps LOG_RETENTION of commit log, and of removed
# files' tombstones in its checkpoints (tidegate.lake.maintenance: the log grows a file per
# commit, and every open lists it); set at creation, so no metadata commit ever races a writer.
# `tidegate maintain` sets it on older tables.
NEW_TABLE_CONFIG = retention_properties(LOG_RETENTION)


@dataclass(frozen=True)
class CommitResult:
    """What one commit did to one table."""

    table: str
    offered: int  # rows handed to the commit (after in-batch dedup)
    inserted: int  # rows that were new
    version: int | None  # table version after the commit (None: nothing committed)
    files: int = 0  # data files the commit added
    bytes: int = 0  # their size
    # id conflicts: (position in the rows handed in, payload digest already landed), not inserted
    conflicts: tuple[tuple[int, str], ...] = ()
    attempts: int = 1  # tries it took: 1 + the retries after losing a commit race to another writer

    @property
    def skipped(self) -> int:
        return self.offered - self.inserted


def _first_of_keys(rows: pa.Table, keys: Sequence[str]) -> list[int] | None:
    """Positions of the first row of each key (input order), or None when every key is unique
    (the usual case), as Arrow compute, no Python loop."""
    if rows.num_rows <= 1:
        return None
    if len(keys) == 1 and pc.count_distinct(rows.column(keys[0]), mode="all").as_py() == rows.num_rows:
        return None  # without building groups
    idx = pa.array(range(rows.num_rows), pa.int64())
    first = (
        rows.select(list(keys))
        .append_column("__row", idx)
        .group_by(list(keys), use_threads=False)
        .aggregate([("__row", "min")])
        .column("__row_min")
    )
    if len(first) == rows.num_rows:
        return None
    return sorted(first.to_pylist())


def dedupe(rows: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Keep the first row of each key (input order)."""
    first = _first_of_keys(rows, keys)
    return rows if first is None else rows.take(first)


@dataclass
class _Offer:
    """The rows of a commit after in-batch dedup: `rows` (the first of each key), where each sits
    in the rows handed in (`at`), and the later copies (`dropped`: position in the rows handed
    in, index of their key's row in `rows`) with the digest of every row handed in."""

    rows: pa.Table
    at: list[int]
    dropped: list[tuple[int, int]]
    digests: list[str | None]

    def conflicts(self, landed: Sequence[str | None]) -> list[tuple[int, str]]:
        """Id conflicts, given the digest each of `rows`' keys has in the table after the commit
        (`landed[j]`; None: unknown, never a conflict): every row handed in whose digest differs
        from its key's landed one, with that digest."""
        out = []
        for j, there in enumerate(landed):
            ours = self.digests[self.at[j]] if self.digests else None
            if there and ours and there != ours:
                out.append((self.at[j], there))
        for i, j in self.dropped:
            there = landed[j]
            if there and self.digests[i] and there != self.digests[i]:
                out.append((i, there))
        return sorted(out)


def _offer(rows: pa.Table, keys: Sequence[str], conflict_on: str | None) -> _Offer:
    digests = rows.column(conflict_on).to_pylist() if conflict_on else []
    first = _first_of_keys(rows, keys)
    if first is None:
        return _Offer(rows, list(range(rows.num_rows)), [], digests)
    dropped: list[tuple[int, int]] = []
    if conflict_on:
        key_cols = [rows.column(k).to_pylist() for k in keys]
        slot = {tuple(c[i] for c in key_cols): j for j, i in enumerate(first)}
        keep = set(first)
        dropped = [(i, slot[tuple(c[i] for c in key_cols)]) for i in range(rows.num_rows) if i not in keep]
    return _Offer(rows.take(first), first, dropped, digests)


def _landed_digests(
    table: DeltaTable, offer: _Offer, keys: Sequence[str], conflict_on: str, where: Any
) -> list[str | None]:
    """After an insert-only MERGE: the digest each offered key has in the table (`where` is the
    MERGE's horizon as a dataset filter). Reads only the batch's keys' rows, and is only called
    when the MERGE skipped something or the batch held copies."""
    import pyarrow.dataset as ds

    dataset = table.to_pyarrow_dataset()
    if conflict_on not in dataset.schema.names:
        return [None] * offer.rows.num_rows
    last = keys[-1]
    # compared as plain strings: delta-rs writes some files' strings as string_view, and a
    # value set of one type does not bind to the other
    wanted = pc.is_in(ds.field(last).cast(pa.string()), value_set=pc.unique(offer.rows.column(last)))
    found = dataset.to_table(columns=[*keys, conflict_on], filter=wanted if where is None else wanted & where)
    landed: dict[tuple[Any, ...], str | None] = {}
    for row in found.to_pylist():
        landed.setdefault(tuple(row[k] for k in keys), row[conflict_on])
    key_cols = [offer.rows.column(k).to_pylist() for k in keys]
    return [landed.get(tuple(c[j] for c in key_cols)) for j in range(offer.rows.num_rows)]


def _literal(value: Any) -> str:
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _names(table: DeltaTable) -> set[str]:
    """Data file names of the loaded snapshot (from the log, no data read; names are unique uuids)."""
    return {u.rsplit("/", 1)[-1] for u in table.file_uris()}


def _added(table: DeltaTable, before: set[str]) -> tuple[int, int]:
    """Files and bytes in `table`'s current snapshot that were not in `before` (an insert-only
    commit only adds files, so these are exactly the ones it wrote)."""
    actions = pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pylist()
    new = [a["size_bytes"] for a in actions if a["path"].rsplit("/", 1)[-1] not in before]
    return len(new), int(sum(new))


def _backoff(uri: str, attempt: int, exc: Exception) -> None:
    """A commit lost a race: wait and let the caller retry, or give up as a transient error."""
    if attempt == MAX_COMMIT_ATTEMPTS:
        raise TransientError(f"commit to {uri} kept conflicting after {attempt} attempts: {exc}") from exc
    time.sleep(min(0.05 * 2**attempt, 2.0))


def _stringify(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else str(v) for k, v in metadata.items()}


def insert_new(
    uri: str,
    rows: pa.Table,
    *,
    keys: Sequence[str],
    metadata: dict[str, Any] | None = None,
    partition_by: Sequence[str] = (),
    prune_on: str | None = None,
    horizon: timedelta | None = None,
    conflict_on: str | None = None,
    storage_options: dict[str, str] | None = None,
    prepare: Callable[[DeltaTable | None, pa.Table], pa.Table] | None = None,
) -> CommitResult:
    """Insert the rows whose key is not in the table yet; one commit, lineage in its metadata.

    `prune_on` names a partition column; the MERGE only looks at target partitions holding
    values the batch has (a key can only match within its own partition). `horizon` limits the
    MERGE to target rows whose `ingest_time` is within it (raw history: dedup whatever the event
    date, at the cost of the horizon's keys). `conflict_on`: see the module docstring.
    `prepare(table, rows)` runs on every attempt against the snapshot the commit is based on
    (raw history stamps its watermark base there, so a retried commit re-reads it).
    """
    offer = _offer(rows, keys, conflict_on)
    rows = offer.rows
    if rows.num_rows == 0:
        return CommitResult(uri, 0, 0, None)
    meta = _stringify(metadata or {})
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            table = try_open(uri, storage_options)
            batch = prepare(table, rows) if prepare else rows
            if table is None:
                # First write creates the table with this batch in one commit. Two writers racing
                # here: the loser gets a conflict and retries as a MERGE.
                write_deltalake(
                    uri,
                    batch,
                    mode="error",
                    partition_by=list(partition_by) or None,
                    configuration=NEW_TABLE_CONFIG,
                    commit_properties=CommitProperties(custom_metadata=meta),
                    storage_options=storage_options,
                )
                created = DeltaTable(uri, storage_options=storage_options)
                files, size = _added(created, set())
                return CommitResult(
                    uri,
                    rows.num_rows,
                    rows.num_rows,
                    created.version(),
                    files,
                    size,
                    tuple(offer.conflicts([offer.digests[i] for i in offer.at]) if conflict_on else ()),
                    attempt,
                )
            before = _names(table)
            predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
            if prune_on:
                values = pc.unique(rows.column(prune_on)).to_pylist()
                predicate = f"t.{prune_on} IN ({', '.join(_literal(v) for v in values)}) AND {predicate}"
            where = None
            if horizon is not None:
                import pyarrow.dataset as ds

                cutoff = datetime.now(UTC) - horizon
                predicate = (
                    f"t.ingest_time >= CAST('{cutoff:%Y-%m-%dT%H:%M:%S.%fZ}' AS TIMESTAMP) AND {predicate}"
                )
                where = ds.field("ingest_time") >= pa.scalar(cutoff, pa.timestamp("us", tz="UTC"))
            metrics = (
                table.merge(
                    batch,
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    merge_schema=True,
                    commit_properties=CommitProperties(custom_metadata=meta),
                )
                .when_not_matched_insert_all()
                .execute()
            )
            inserted = int(metrics.get("num_target_rows_inserted", 0))
            files, size = _added(table, before) if inserted else (0, 0)
            conflicts: list[tuple[int, str]] = []
            if conflict_on and (inserted < rows.num_rows or offer.dropped):
                conflicts = offer.conflicts(_landed_digests(table, offer, keys, conflict_on, where))
            return CommitResult(
                uri, rows.num_rows, inserted, table.version(), files, size, tuple(sorted(conflicts)), attempt
            )
        except (CommitFailedError, FileExistsError) as exc:
            _backoff(uri, attempt, exc)
        except DeltaError as exc:
            if "already exists" in str(exc) and attempt < MAX_COMMIT_ATTEMPTS:
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _current(index: Any, uri: str, storage_options: dict[str, str] | None) -> DeltaTable | None:
    """The table at its latest version: the single writer keeps its DeltaTable open
    (`lake.delta.OpenTables`, in the key index: `invalidate` drops it with the keys)."""
    if index.opened is None:
        index.opened = OpenTables(storage_options)
    return index.opened.get(uri)  # type: ignore[no-any-return]


def append_new(
    uri: str,
    rows: pa.Table,
    *,
    keys: Sequence[str],
    index: Any,  # lake.keyindex.KeyIndex of `uri` on `keys`
    metadata: dict[str, Any] | None = None,
    partition_by: Sequence[str] = (),
    storage_options: dict[str, str] | None = None,
    prepare: Callable[[DeltaTable | None, pa.Table], pa.Table] | None = None,
) -> CommitResult:
    """`insert_new` for a table's only writer (local mode holds the lake lock): the rows whose
    key the in-memory index does not know are appended, one commit, no MERGE, so a commit costs
    the same whatever the table's size (tidegate/lake/keyindex.py says why and how the index stays right).
    Id conflicts are found on the index's value column (`index.value`), as `insert_new`'s
    `conflict_on`.
    """
    conflict_on = index.value
    offer = _offer(rows, keys, conflict_on)
    rows = offer.rows
    if rows.num_rows == 0:
        return CommitResult(uri, 0, 0, None)
    meta = _stringify(metadata or {})
    with index.lock:
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            try:
                table = _current(index, uri, storage_options)
                index.sync(table)
                digests = index.digests(rows)
                seen = index.seen(digests)
                conflicts: list[tuple[int, str]] = []
                ours: list[int] = []
                if conflict_on:
                    hexes = [offer.digests[i] for i in offer.at]
                    ours = [value_of(h) for h in hexes]
                    if any(seen) or offer.dropped:
                        values = index.values(digests) if any(seen) else [0] * len(hexes)
                        landed = [  # what the key holds after this commit: the table's, or ours
                            (f"{v:016x}" if v else None) if s else h
                            for v, s, h in zip(values, seen, hexes, strict=True)
                        ]
                        conflicts = offer.conflicts(landed)
                new = rows.filter(pa.array([not s for s in seen], pa.bool_())) if any(seen) else rows
                if new.num_rows == 0:
                    return CommitResult(uri, rows.num_rows, 0, None, conflicts=tuple(conflicts))
                batch = prepare(table, new) if prepare else new
                before = _names(table) if table is not None else set()
                write_deltalake(
                    table if table is not None else uri,
                    batch,
                    mode="append" if table is not None else "error",
                    schema_mode="merge" if table is not None else None,  # a new contract version's columns
                    partition_by=list(partition_by) or None,
                    configuration=None if table is not None else NEW_TABLE_CONFIG,
                    commit_properties=CommitProperties(custom_metadata=meta),
                    post_commithook_properties=commit_hooks(table),
                    storage_options=storage_options,
                )
                if table is None:
                    table = DeltaTable(uri, storage_options=storage_options)
                    index.opened.adopt(uri, table)
                version = table.version()
                index.added(
                    [d for d, s in zip(digests, seen, strict=True) if not s],
                    version,
                    table,
                    [v for v, s in zip(ours, seen, strict=True) if not s] if ours else (),
                )
                files, size = _added(table, before)
                return CommitResult(
                    uri, rows.num_rows, new.num_rows, version, files, size, tuple(conflicts), attempt
                )
            except (CommitFailedError, FileExistsError) as exc:
                index.invalidate()
                _backoff(uri, attempt, exc)
            except BaseException as exc:
                index.invalidate()  # the commit may or may not have landed: reload next time
                if (
                    isinstance(exc, DeltaError)
                    and "already exists" in str(exc)
                    and attempt < MAX_COMMIT_ATTEMPTS
                ):
                    continue
                if log_cleaned_under_read(exc) and attempt < MAX_COMMIT_ATTEMPTS:
                    continue  # a log cleanup beside us deleted what it read: reopened next attempt
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def append(
    uri: str,
    rows: pa.Table,
    *,
    metadata: dict[str, Any] | None = None,
    storage_options: dict[str, str] | None = None,
    opened: OpenTables | None = None,
) -> int:
    """Plain append (the ledger: one row per batch, never deduplicated). Returns the version.
    `opened`: the caller's open tables (the bookkeeper's), brought up to date, not reopened."""
    for attempt in (1, 2):
        table = opened.get(uri) if opened is not None else try_open(uri, storage_options)
        try:
            write_deltalake(
                table if table is not None else uri,
                rows,
                mode="append",
                schema_mode="merge",
                configuration=None if table is not None else NEW_TABLE_CONFIG,
                commit_properties=CommitProperties(custom_metadata=_stringify(metadata or {})),
                post_commithook_properties=commit_hooks(table),
                storage_options=storage_options,
            )
            break
        except BaseException as exc:
            if opened is None:
                raise
            opened.forget(uri)  # landed or not: open it afresh next time
            # an open table whose log a cleanup deleted under it fails reading that log, before
            # anything is written: once more, freshly opened
            if attempt == 2 or "_delta_log" not in str(exc):
                raise
    if table is None:
        table = DeltaTable(uri, storage_options=storage_options)
        if opened is not None:
            opened.adopt(uri, table)
    return int(table.version())


def _null_safe_eq(col: str) -> str:
    return f"(t.{col} IS NOT DISTINCT FROM s.{col})"


def replace_windows(
    uri: str,
    upserts: pa.Table,
    deletes: pa.Table,
    *,
    keys: Sequence[str],
    values: Sequence[str],
    app_id: str,
    app_version: int,
    metadata: dict[str, Any] | None = None,
    storage_options: dict[str, str] | None = None,
    revision_from_source: bool = False,
    table: DeltaTable | None = None,
) -> CommitResult:
    """One atomic commit to an aggregate table: upsert window rows, delete replaced ones, and
    record `app_version` (the raw table version incorporated) as the Delta app transaction
    `app_id`.

    `upserts` is in the table's schema; `revision` is 1 for a new window and goes up by one
    only when a metric value changes (rewriting a window with the same values changes nothing,
    so a retried or repeated projection is a no-op on the data). `deletes` holds the key
    columns of rows to remove (sessions that merged into a bigger one). Keys compare null-safe.
    Conflicts are retried; an older `app_version` than the table already holds is refused
    (delta-rs would accept it and move the marker backwards; platform facts). `table`: the
    table as the caller just opened it (the projector reads its stored windows from it): the
    first attempt commits through it instead of opening it again; a retry opens it afresh.
    """

    meta = _stringify(metadata or {})
    txn = [Transaction(app_id, app_version)]
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            if attempt > 1 or table is None:
                table = try_open(uri, storage_options)
            props = CommitProperties(custom_metadata=meta, app_transactions=txn)
            if table is None:
                write_deltalake(
                    uri, upserts, mode="error", commit_properties=props, storage_options=storage_options
                )
                created = DeltaTable(uri, storage_options=storage_options)
                return CommitResult(uri, upserts.num_rows, upserts.num_rows, created.version())
            done = table.transaction_version(app_id)
            if done is not None and done > app_version:
                raise TransientError(
                    f"{uri} already incorporates version {done} of its source, newer than {app_version}"
                )
            if upserts.num_rows == 0 and deletes.num_rows == 0:
                write_deltalake(
                    table,
                    upserts,
                    mode="append",
                    commit_properties=props,
                    post_commithook_properties=commit_hooks(table),
                )
                return CommitResult(uri, 0, 0, table.version())
            ops = [
                pa.array(["upsert"] * upserts.num_rows, pa.string()),
                pa.array(["delete"] * deletes.num_rows, pa.string()),
            ]
            loose = pa.schema([f.with_nullable(True) for f in upserts.schema.remove_metadata()])
            filler = pa.table(
                {
                    f.name: deletes.column(f.name)
                    if f.name in deletes.column_names
                    else pa.nulls(deletes.num_rows, f.type)
                    for f in upserts.schema
                },
                schema=loose,
            )
            source = pa.concat_tables([upserts.cast(loose), filler])
            source = source.append_column("_op", pa.concat_arrays(ops))
            match = " AND ".join(_null_safe_eq(k) for k in keys)
            changed = " OR ".join(f"(t.{v} IS DISTINCT FROM s.{v})" for v in values)
            cols = [f.name for f in upserts.schema]
            metrics = (
                table.merge(
                    source,
                    predicate=match,
                    source_alias="s",
                    target_alias="t",
                    commit_properties=props,
                    post_commithook_properties=commit_hooks(table),
                )
                .when_matched_delete(predicate="s._op = 'delete'")
                .when_matched_update(
                    {
                        c: ("t.revision + 1" if c == "revision" and not revision_from_source else f"s.{c}")
                        for c in cols
                    },
                    predicate=f"s._op = 'upsert' AND ({changed})",
                )
                .when_not_matched_insert({c: f"s.{c}" for c in cols}, predicate="s._op = 'upsert'")
                .execute()
            )
            written = int(metrics.get("num_target_rows_inserted", 0)) + int(
                metrics.get("num_target_rows_updated", 0)
            )
            if table.transaction_version(app_id) != app_version:
                # nothing changed, so delta-rs made no commit: record the version anyway (an
                # empty append carries the app transaction), or the next run redoes this work
                write_deltalake(
                    table,
                    upserts.schema.empty_table(),
                    mode="append",
                    commit_properties=props,
                    post_commithook_properties=commit_hooks(table),
                )
            return CommitResult(uri, upserts.num_rows, written, table.version())
        except (CommitFailedError, FileExistsError) as exc:
            _backoff(uri, attempt, exc)
    raise AssertionError("unreachable")  # pragma: no cover
