"""Many writers, one committer per table: the write path that scales with workers (issue 18).

An insert-only MERGE per chunk (`lake.writer.insert_new`) makes every writer a committer: with
N workers writing one table, N commits race for each table version, the losers re-read the log
and retry, and throughput falls as workers are added (docs/deploy.md, "Many writers per table").
Flink's Delta sink avoids that by splitting the two jobs, and so does this module:

    stage_rows(uri, rows)            on every worker, in parallel: Parquet files written into the
                                     table's folder, NOT committed; returns StagedFile descriptors
                                     (path, size, partition values, statistics, and the rows' keys)
    commit_staged(uri, chunks)       on ONE committer per table (a keyed stage): the dedup check for
                                     all the chunks that arrived, then ONE commit adding their files

Commits no longer race (one committer per table), and the rows per commit grow with the load,
so throughput grows with the writers until the committer's one commit per round is the limit.

What the committer guarantees, the same as `insert_new`:
- **Exactly once per (source, id)** within the dedup horizon (`ingest_time >= now - horizon`):
  keys already in the table, or earlier in the same round, are dropped. A file holding such rows
  is rewritten without them (the rare path: redeliveries), or deleted when nothing of it is new.
- **Id conflicts** (`conflict_on=`, a digest column): a dropped copy whose digest differs from
  the landed one is reported per chunk (row position, landed digest), never inserted.
- **Idempotent retries.** A round retried after its commit landed (a bundle retry, a lost reply)
  finds its files already in the table's snapshot: they count as inserted by this round and are
  neither re-added nor deleted; rows of the round's other files are then duplicates of them.
- **Lineage.** The commit's metadata names every chunk (batch id) it carries.

`seen_max_event_time` (the lateness base of aggregates, tidegate.lake.rows) is stamped by the
worker from the snapshot it staged against, not the one the committer commits on: at most one
round older, so lateness is judged slightly more leniently under load. The value is recorded
in every row, so replaying history reproduces the aggregates exactly either way.

Staged files that no commit ever adds (a worker lost after staging) are not in the table:
readers never see them, and `vacuum` (tidegate maintain) deletes them once they are older than
its retention.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from tidegate.lake.delta import try_open
from tidegate.lake.keyindex import KeyIndex, value_of
from tidegate.lake.writer import MAX_COMMIT_ATTEMPTS, NEW_TABLE_CONFIG, _backoff, _stringify

STATS_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string)


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file a worker wrote into a table's folder, not committed yet."""

    path: str  # relative to the table root, e.g. "event_date=2026-12-01/part-<uuid>.parquet"
    size: int
    partition_values: tuple[tuple[str, str | None], ...]
    stats: str  # Delta statistics JSON (numRecords, minValues, maxValues, nullCount)
    # the file's rows' key columns (+ the digest column, + `__row`: each row's position in the
    # rows handed to stage_rows), in file order
    keys: pa.Table

    @property
    def rows(self) -> int:
        return int(self.keys.num_rows)

    def action(self) -> AddAction:
        return AddAction(
            self.path, self.size, dict(self.partition_values), int(time.time() * 1000), True, self.stats
        )


@dataclass(frozen=True)
class StagedChunk:
    """What one worker staged for one chunk of one table: the unit the committer accounts for."""

    batch_id: str
    files: tuple[StagedFile, ...]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class ChunkOutcome:
    """What the committer's round did with one chunk."""

    batch_id: str
    offered: int
    inserted: int
    # (position in the rows the chunk's worker staged, digest already landed): id conflicts
    conflicts: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class RoundResult:
    """One committer round: at most one commit, whatever the number of chunks."""

    table: str
    version: int | None  # after the commit (None: nothing new to commit)
    chunks: tuple[ChunkOutcome, ...]
    files: int = 0
    bytes: int = 0
    rewritten: int = 0  # files rewritten without their duplicate rows
    attempts: int = 1
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step of the round

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.chunks)


# -- the worker's side ----------------------------------------------------------------------


def _filesystem(uri: str, storage_options: dict[str, str] | None) -> Any:
    """The table's folder through delta-rs's own object store (the same credentials and endpoint
    as its commits): delta-rs's storage handler, used directly (`open_output_stream`,
    `open_input_file`, `delete_file`, paths relative to the table)."""
    if "://" not in uri or uri.startswith("file://"):
        Path(uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)  # a local table's first files
    return DeltaStorageHandler(uri, storage_options)


def _partition_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _stat(value: Any) -> Any:
    if isinstance(value, datetime):
        # Delta statistics are milliseconds; the reader compares with them, so round the
        # maximum up and the minimum down (a file is never skipped that holds a match)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


def _stats(rows: pa.Table) -> str:
    """Delta file statistics: what lets readers and the dedup horizon skip the file."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, column in zip(rows.column_names, rows.columns, strict=True):
        nulls[name] = column.null_count
        t = column.type
        if column.null_count == len(column) or not (
            any(check(t) for check in STATS_TYPES) or pa.types.is_timestamp(t) or pa.types.is_date(t)
        ):
            continue
        lo, hi = pc.min_max(column).values()
        lo_v, hi_v = lo.as_py(), hi.as_py()
        if pa.types.is_timestamp(t):
            hi_v = hi_v + timedelta(microseconds=999 - hi_v.microsecond % 1000) if hi_v else hi_v
            lo_v = lo_v - timedelta(microseconds=lo_v.microsecond % 1000) if lo_v else lo_v
        if (isinstance(lo_v, str) and len(lo_v) > 32) or (isinstance(hi_v, str) and len(hi_v) > 32):
            continue  # long strings: no bounds rather than wrong (truncated) ones
        mins[name], maxs[name] = _stat(lo_v), _stat(hi_v)
    return json.dumps({"numRecords": rows.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


ROW = "__row"
SUFFIX = "-c000.zstd.parquet"
REWRITTEN = "-dedup.zstd.parquet"  # a staged file without its duplicate rows: same name otherwise


def _rewritten(path: str) -> str:
    return path.removesuffix(SUFFIX) + REWRITTEN


def _write(
    fs: Any,
    rows: pa.Table,
    partition: tuple[tuple[str, str | None], ...],
    keys: pa.Table,
    path: str | None = None,
) -> StagedFile:
    if path is None:
        folder = "/".join(f"{k}={'__HIVE_DEFAULT_PARTITION__' if v is None else v}" for k, v in partition)
        path = f"{folder + '/' if folder else ''}part-00000-{uuid.uuid4()}{SUFFIX}"
    buffer = io.BytesIO()
    pq.write_table(rows, buffer, compression="zstd")
    data = buffer.getvalue()
    out = fs._handler.open_output_stream(path, None)  # raw bytes in (the pyarrow wrapper hands Buffers)
    try:
        out.write(data)
    finally:
        out.close()
    return StagedFile(path, len(data), partition, _stats(rows), keys)


def stage_rows(
    uri: str,
    rows: pa.Table,
    *,
    keys: Sequence[str],
    conflict_on: str | None = None,
    partition_by: Sequence[str] = (),
    storage_options: dict[str, str] | None = None,
) -> tuple[StagedFile, ...]:
    """Write `rows` into the table's folder as Parquet files (one per partition), uncommitted.
    The rows must already be in the table's schema (tidegate.lake.rows builds them so)."""
    if rows.num_rows == 0:
        return ()
    fs = _filesystem(uri, storage_options)
    key_columns = [*keys, *([conflict_on] if conflict_on else [])]
    positions = pa.array(range(rows.num_rows), pa.int64())
    if not partition_by:
        return (_write(fs, rows, (), rows.select(key_columns).append_column(ROW, positions)),)
    parts = rows.select(list(partition_by)).group_by(list(partition_by), use_threads=False).aggregate([])
    staged = []
    for values in parts.to_pylist():
        mask = None
        for k in partition_by:
            col = rows.column(k)
            eq = pc.is_null(col) if values[k] is None else pc.equal(col, pa.scalar(values[k], col.type))
            mask = eq if mask is None else pc.and_(mask, eq)
        part = rows.filter(mask)
        partition = tuple((k, _partition_value(values[k])) for k in partition_by)
        at = positions.filter(mask)
        staged.append(
            _write(
                fs,
                part.drop_columns(list(partition_by)),
                partition,
                part.select(key_columns).append_column(ROW, at),
            )
        )
    return tuple(staged)


# -- the committer's side ---------------------------------------------------------------------


def _landed(
    table: DeltaTable,
    keys: Sequence[str],
    conflict_on: str | None,
    wanted: pa.Table,
    where: Any,
    skip: set[str],
) -> dict[tuple[Any, ...], str | None]:
    """Key -> digest of the wanted keys already in the table (within `where`), leaving out the
    files in `skip` (this round's own files, found committed on a retry)."""
    dataset = table.to_pyarrow_dataset()
    if skip:
        fragments = [f for f in dataset.get_fragments() if f.path.rsplit("/", 1)[-1] not in skip]
        dataset = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
    last = keys[-1]
    match = pc.is_in(
        ds.field(last).cast(pa.string()), value_set=pc.unique(wanted.column(last).cast(pa.string()))
    )
    cols = [*keys, *([conflict_on] if conflict_on and conflict_on in dataset.schema.names else [])]
    found = dataset.to_table(columns=cols, filter=match if where is None else match & where)
    out: dict[tuple[Any, ...], str | None] = {}
    for row in found.to_pylist():
        out.setdefault(tuple(row[k] for k in keys), row.get(conflict_on) if conflict_on else None)
    return out


def _indexed(
    index: KeyIndex, table: DeltaTable, keys: Sequence[str], wanted: pa.Table
) -> dict[tuple[Any, ...], str | None]:
    """Key -> digest (16 hex digits, None if unknown) of the wanted keys the index holds."""
    index.sync(table)
    digests = index.digests(wanted)
    seen = index.seen(digests)
    if not any(seen):
        return {}
    values = index.values(digests)
    columns = [wanted.column(k).to_pylist() for k in keys]
    return {
        tuple(c[i] for c in columns): (f"{values[i]:016x}" if values[i] else None)
        for i, s in enumerate(seen)
        if s
    }


def _rewrite(fs: Any, staged: StagedFile, keep: list[int]) -> StagedFile:
    """The file without its dropped rows, as a new staged file with a name derived from the
    old one (a retried round recognises it, and writes the same file again if it must). The
    old file is deleted only after the commit."""
    with fs.open_input_file(staged.path) as f:
        rows = pq.read_table(f)
    idx = pa.array(keep, pa.int64())
    return _write(fs, rows.take(idx), staged.partition_values, staged.keys.take(idx), _rewritten(staged.path))


def _delete(fs: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a retried round deleted it already
        fs.delete_file(path)


def commit_staged(
    uri: str,
    chunks: Sequence[StagedChunk],
    *,
    schema: pa.Schema,
    keys: Sequence[str],
    conflict_on: str | None = None,
    horizon: timedelta | None = None,
    partition_by: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    storage_options: dict[str, str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    index: KeyIndex | None = None,
) -> RoundResult:
    """One committer round for one table: dedup every staged row of `chunks` against the table
    (within `horizon`) and against each other, then one commit adding what is new (module
    docstring). `schema` is the rows' schema (the table's, or a superset: a new contract
    version's columns). Raises TransientError after MAX_COMMIT_ATTEMPTS lost commit races.

    `index` (a `lake.keyindex.KeyIndex` of `uri` on `keys`, valued on `conflict_on`): the
    committer is its table's only raw writer, so it can keep the horizon's keys in memory and
    look a round's keys up there instead of reading the horizon's files (which grew to most of
    a round's time at 64 writers, `tidegate bench writers`). 24 bytes a key; it loads once per
    process and follows the table's log. A retried round whose files are already committed
    takes the file lookup (the index cannot leave the round's own rows out)."""
    meta = _stringify(metadata or {})
    meta.setdefault("tidegate_batch_ids", ",".join(c.batch_id for c in chunks))
    fs = _filesystem(uri, storage_options)
    timings: dict[str, float] = {}
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        t0 = time.perf_counter()
        table = try_open(uri, storage_options)
        ours = {n for c in chunks for f in c.files for n in (_name(f.path), _name(_rewritten(f.path)))}
        committed = (ours & {u.rsplit("/", 1)[-1] for u in table.file_uris()}) if table is not None else set()
        timings["open_s"] = time.perf_counter() - t0

        # every staged row, in chunk order: (chunk, file, row) -> key, digest
        t1 = time.perf_counter()
        first: dict[tuple[Any, ...], str | None] = {}  # key -> digest of the copy that lands
        landed: dict[tuple[Any, ...], str | None] = {}
        if table is not None:
            # all of the round's keys, against the table without the round's own files: a retry
            # decides exactly as the first attempt did
            pending = [f.keys for c in chunks for f in c.files]
            if pending and index is not None and not committed:
                landed = _indexed(index, table, keys, pa.concat_tables(pending))
            elif pending:
                where = None
                if horizon is not None:
                    cutoff = clock() - horizon
                    where = ds.field("ingest_time") >= pa.scalar(cutoff, pa.timestamp("us", tz="UTC"))
                landed = _landed(table, keys, conflict_on, pa.concat_tables(pending), where, committed)
        timings["lookup_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        outcomes: list[ChunkOutcome] = []
        kept: list[pa.Table] = []  # the keys this round adds (for the index)
        actions: list[AddAction] = []
        drop_files: list[str] = []  # deleted once the commit landed
        rewritten = 0
        for chunk in chunks:
            inserted, conflicts = 0, []
            for staged in chunk.files:
                at = staged.keys.column(ROW).to_pylist()
                columns = [staged.keys.column(k).to_pylist() for k in keys]
                digests = staged.keys.column(conflict_on).to_pylist() if conflict_on else [None] * staged.rows
                keep: list[int] = []
                for i in range(staged.rows):
                    key = tuple(col[i] for col in columns)
                    if key in landed:
                        there = landed[key]
                    elif key in first:
                        there = first[key]
                    else:  # new: this copy lands
                        first[key] = digests[i]
                        keep.append(i)
                        continue
                    if there and digests[i] and there != digests[i]:
                        conflicts.append((at[i], there))
                inserted += len(keep)
                if index is not None and keep and not _landed_before(staged, committed):
                    kept.append(staged.keys if len(keep) == staged.rows else staged.keys.take(keep))
                if _landed_before(staged, committed):  # this round's own, landed before a retry
                    continue
                if not keep:
                    drop_files.append(staged.path)
                elif len(keep) < staged.rows:
                    actions.append(_rewrite(fs, staged, keep).action())
                    drop_files.append(staged.path)
                    rewritten += 1
                else:
                    actions.append(staged.action())
            outcomes.append(ChunkOutcome(chunk.batch_id, chunk.rows, inserted, tuple(sorted(conflicts))))
        timings["plan_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        try:
            if actions:
                if table is None:
                    create_table_with_add_actions(
                        uri,
                        _delta_schema(schema),
                        actions,
                        mode="error",
                        partition_by=list(partition_by) or None,
                        configuration=NEW_TABLE_CONFIG,
                        storage_options=storage_options,
                        commit_properties=CommitProperties(custom_metadata=meta),
                    )
                else:
                    _add_new_columns(table, schema)
                    table.create_write_transaction(
                        list[AddAction | RemoveAction](actions),
                        "append",
                        _merged_schema(table, schema),
                        partition_by=list(partition_by) or None,
                        commit_properties=CommitProperties(custom_metadata=meta),
                    )
        except (CommitFailedError, FileExistsError) as exc:
            if index is not None:
                index.invalidate()
            _backoff(uri, attempt, exc)
            continue
        except BaseException as exc:
            if index is not None:
                index.invalidate()  # it may or may not have landed: reload next time
            if isinstance(exc, DeltaError) and "already exists" in str(exc) and attempt < MAX_COMMIT_ATTEMPTS:
                continue
            raise
        timings["commit_s"] = time.perf_counter() - t3
        for path in drop_files:
            _delete(fs, path)
        version = None
        if actions:
            after = DeltaTable(uri, storage_options=storage_options)
            version = after.version()
            if index is not None and kept:
                new = pa.concat_tables(kept)
                values = [value_of(d) for d in new.column(conflict_on).to_pylist()] if conflict_on else []
                index.added(index.digests(new), version, after, values)
        elif committed and table is not None:
            version = table.version()
        return RoundResult(
            uri,
            version,
            tuple(outcomes),
            len(actions),
            sum(a.size for a in actions),
            rewritten,
            attempt,
            timings,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _landed_before(staged: StagedFile, committed: set[str]) -> bool:
    """Whether a staged file (or its rewrite) is in the table already: this round committed it
    before it was retried."""
    return _name(staged.path) in committed or _name(_rewritten(staged.path)) in committed


def _delta_schema(schema: pa.Schema) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(schema)


def _add_new_columns(table: DeltaTable, schema: pa.Schema) -> None:
    """A new contract version's columns, added to the table's schema (nullable) before the
    files that hold them are committed: a commit's schema argument alone does not change it."""
    from deltalake import Field

    current = pa.schema(table.schema().to_arrow())
    extra = [f for f in schema if f.name not in current.names]
    if extra:
        table.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in extra])


def _merged_schema(table: DeltaTable, schema: pa.Schema) -> Any:
    """The table's schema, with the columns only the new rows have (a new contract version)
    added at the end, nullable."""
    current = pa.schema(table.schema().to_arrow())
    extra = [f.with_nullable(True) for f in schema if f.name not in current.names]
    return _delta_schema(pa.schema([*current, *extra]) if extra else current)
