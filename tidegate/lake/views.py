"""Current-state views folded from raw history: `views:` in the catalog, e.g. `order_state`,
the latest state per order_id from shop.order.placed and shop.payment.captured.

    fold(events, spec)                        # raw rows -> the view's rows (pure polars)
    ViewMaintainer(catalog, lake).update()    # after raw commits: only the keys they touched
    rebuild(catalog, lake, name)              # `tidegate replay <view>`: the whole view from raw
    view_parity(catalog, lake, name)          # verify: the table equals a fold of raw

**Fold.** A view's events (each a raw type) are ordered per key by event time; ties by the
order the catalog lists the types in, then ce-source, then ce-id (a documented total order,
so a replay gives the same rows). Each event sets the columns its type maps (`columns`: view
column <- event column, e.g. `paid_at: event_time`; `literals`, e.g. `status: paid`); a later
non-null value wins, a null never erases a value. An event that arrives late or out of order
folds into its place: the whole key is folded again from raw. Duplicates never count twice:
raw history holds each (source, id) once.

**Shapes.** `history: false` (SCD type 1): one row per key, the state after its last event.
`history: true` (SCD type 2): one row per event of the key, the state after it, with
`valid_from` (its event time), `valid_to` (the next event's, null for the current row) and
`is_current`. Both carry `updated_at` (event time of the last change), `events` (how many were
folded), `last_event_type`, `last_event_id`.

**Maintenance** (local mode; the projector calls `update` after aggregate rounds, at most every
2 s under load, at once when idle: tidegate.pipelines.local.projection):
per source raw table the view records, as a Delta app transaction, the raw version it
incorporates (`tidegate.view/<view>/<type>`). The rows added since (their `ingest_time` is later
than that version's commit: one writer per raw table) name the touched keys; those keys are
folded again from the raw files that hold them (`KeyFiles`, an in-memory index of which file
holds which keys: not a scan of all history) and replace their rows in one commit (a MERGE: `_commit`) that also moves the markers, so a
crash between the raw and the view commit is caught up on the next round. Retention (expire) and
vacuum commits change no state; any other rewrite of raw (an erasure) rebuilds the view.

**Streaming mode** has no view maintenance in the Dataflow job: a view is a fold over keys
across event types, i.e. state per key across the whole history. The deployment keeps it with a
scheduled `tidegate replay <view>` (or the maintain job) against the gs:// lake; see
docs/views.md for why and how.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema, Transaction, WriterProperties, write_deltalake
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from tidegate.catalog import Catalog, ViewSpec
from tidegate.lake.changes import raw_changes
from tidegate.lake.delta import OpenTables, commit_hooks, data_files, scan_table, try_open
from tidegate.lake.history import FileGroups, missing_files, readable_version, vacuumed
from tidegate.lake.tables import raw_uri

ORDER = ["_event_time", "_type_order", "_event_source", "_event_id"]
META = ["updated_at", "events", "last_event_type", "last_event_id"]
HISTORY = ["valid_from", "valid_to", "is_current"]
BUCKET_ROWS = 250_000  # raw rows folded at once (a key range); fewer: all of raw in memory
SPILL_ROWS = 200_000  # raw rows read at once while spilling by key range
ROW_GROUP_ROWS = 131_072  # a view written range by range: rows per Parquet row group
# A view's files are kept at most this big (`delta.targetFileSize`, honoured by delta-rs's MERGE
# and writes): an update rewrites only the files holding the keys it touches (the MERGE in
# `_commit`), so its cost is bounded by this size, not by the view's.
VIEW_FILE_BYTES = 4 * 1024 * 1024
VIEW_PROPERTIES = {"delta.targetFileSize": str(VIEW_FILE_BYTES)}


def view_uri(lake: str, name: str) -> str:
    return "/".join([lake.rstrip("/"), "views", name])


def app_id(view: ViewSpec, event_type: str) -> str:
    return f"tidegate.view/{view.name}/{event_type}"


def source_columns(view: ViewSpec, event_type: str) -> list[str]:
    e = next(e for e in view.events if e.type == event_type)
    return list(dict.fromkeys([view.key, "event_time", "event_source", "event_id", *e.columns.values()]))


_SCHEMAS: dict[tuple[str, str], pa.Schema] = {}


def view_schema(catalog: Catalog, view: ViewSpec) -> pa.Schema:
    """The view table's columns and types (once per process and catalog: it reads the
    contracts): a mapped column has the type of the first event column that feeds it, a literal
    its own, then the fold's own columns."""
    key = (str(catalog.path), view.model_dump_json())
    if key not in _SCHEMAS:
        _SCHEMAS[key] = _view_schema(catalog, view)
    return _SCHEMAS[key]


def _view_schema(catalog: Catalog, view: ViewSpec) -> pa.Schema:
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.lake.tables import raw_schema

    registry = ContractRegistry.from_catalog(catalog)
    types: dict[str, pa.DataType] = {}
    for e in view.events:
        schema = raw_schema(registry.types[e.type])
        types.setdefault(view.key, schema.field(view.key).type)
        for col, source in e.columns.items():
            types.setdefault(col, schema.field(source).type)
        for col, value in e.literals.items():
            types.setdefault(col, pa.scalar(value).type)
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field(c, types[c]) for c in view.columns]
    fields += [
        pa.field("updated_at", ts),
        pa.field("events", pa.int64()),
        pa.field("last_event_type", pa.string()),
        pa.field("last_event_id", pa.string()),
    ]
    if view.history:
        fields += [pa.field("valid_from", ts), pa.field("valid_to", ts), pa.field("is_current", pa.bool_())]
    return pa.schema(fields)


def _events(view: ViewSpec, raw: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """All events of the view as one long frame: order columns, then one value and one
    `_sets_<column>` flag per view column."""
    parts = []
    value_columns = [c for c in view.columns if c != view.key]
    for order, e in enumerate(view.events):
        df = raw.get(e.type)
        if df is None or df.is_empty():
            continue
        exprs: list[pl.Expr] = [
            pl.col(view.key).alias(view.key),
            pl.col("event_time").alias("_event_time"),
            pl.lit(order, pl.Int32).alias("_type_order"),
            pl.col("event_source").alias("_event_source"),
            pl.col("event_id").alias("_event_id"),
            pl.lit(e.type).alias("_event_type"),
        ]
        for c in value_columns:
            if c in e.columns:
                exprs.append(pl.col(e.columns[c]).alias(c))
            elif c in e.literals:
                exprs.append(pl.lit(e.literals[c]).alias(c))
            else:
                exprs.append(pl.lit(None).alias(c))
        parts.append(df.select(exprs).filter(pl.col(view.key).is_not_null()))
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="diagonal_relaxed")


def fold(raw: dict[str, pl.DataFrame], view: ViewSpec) -> pl.DataFrame:
    """The view's rows from raw rows (per event type: the key, event_time, event_source,
    event_id and the mapped columns)."""
    events = _events(view, raw)
    value_columns = [c for c in view.columns if c != view.key]
    if events.is_empty():
        return pl.DataFrame()
    events = events.sort([view.key, *ORDER], nulls_last=True)
    state = events.with_columns(
        [pl.col(c).forward_fill().over(view.key) for c in value_columns]
        + [
            pl.col("_event_time").alias("updated_at"),
            pl.int_range(1, pl.len() + 1).over(view.key).alias("events"),
            pl.col("_event_type").alias("last_event_type"),
            pl.col("_event_id").alias("last_event_id"),
        ]
    )
    if view.history:
        state = state.with_columns(
            pl.col("_event_time").alias("valid_from"),
            pl.col("_event_time").shift(-1).over(view.key).alias("valid_to"),
        ).with_columns(pl.col("valid_to").is_null().alias("is_current"))
        return state.select([view.key, *value_columns, *META, *HISTORY]).sort([view.key, "valid_from"])
    return (
        state.group_by(view.key, maintain_order=True)
        .last()
        .select([view.key, *value_columns, *META])
        .sort(view.key)
    )


def _read_raw(
    lake: str,
    view: ViewSpec,
    storage: dict[str, str] | None,
    keys: Sequence[Any] | None = None,
    versions: dict[str, int] | None = None,
    opened: dict[str, DeltaTable] | None = None,
    files: dict[str, list[str]] | None = None,
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """Each source's rows (only `keys` when given) and the version they were read at.
    `opened`: raw tables the caller already holds, used when at the version wanted. `files`:
    per source, the only data files that can hold one of `keys` (`KeyFiles`)."""
    out: dict[str, pl.DataFrame] = {}
    at: dict[str, int] = {}
    for e in view.events:
        if versions is not None and e.type not in versions:
            at[e.type] = -1  # no raw table when the versions were taken: the next round's
            continue
        version = (versions or {}).get(e.type)
        if version is not None and version < 0:
            at[e.type] = -1
            continue  # the source did not exist when the view last committed
        held = (opened or {}).get(e.type)
        if held is not None and version is not None and held.version() == version:
            table: DeltaTable | None = held
        else:
            table = try_open(raw_uri(lake, e.type), storage, version=version)
        if table is None:
            at[e.type] = -1  # no raw table yet: the marker says "none of it", so it folds in later
            continue
        names = set(table.schema().to_arrow().names)
        cols = [c for c in source_columns(view, e.type) if c in names]
        if keys is None:
            frame = pl.from_arrow(table.to_pyarrow_table(columns=cols))
        else:  # only the touched keys' rows leave the scan (the key column is read, no more)
            only = None if files is None else files.get(e.type)
            frame = (
                scan_table(table, storage, files=only)
                .select(cols)
                .filter(pl.col(view.key).is_in(list(keys)))
                .collect()
            )
        assert isinstance(frame, pl.DataFrame)
        out[e.type] = frame
        at[e.type] = table.version()
    return out, at


def _sources(
    lake: str, view: ViewSpec, storage: dict[str, str] | None, versions: dict[str, int] | None
) -> tuple[dict[str, FileGroups], dict[str, int]]:
    """Each source's files at the version `_read_raw` would read (nothing read yet)."""
    out: dict[str, FileGroups] = {}
    at: dict[str, int] = {}
    for e in view.events:
        version = (versions or {}).get(e.type)
        if (versions is not None and e.type not in versions) or (version is not None and version < 0):
            at[e.type] = -1
            continue
        table = try_open(raw_uri(lake, e.type), storage, version=version)
        if table is None:
            at[e.type] = -1
            continue
        out[e.type] = FileGroups.of(table)
        at[e.type] = table.version()
    return out, at


def _boundaries(sources: dict[str, FileGroups], key: str, buckets: int) -> pl.Series:
    """`buckets - 1` key values that cut the keys into ranges of about equal rows, from a
    sample of every 100th key (ranges, not hashes: buckets in order give the fold's key order)."""
    sample = [
        chunk.get_column(key).drop_nulls().gather_every(100)
        for groups in sources.values()
        for i in range(len(groups))
        for chunk in groups.chunks(i, [key], SPILL_ROWS)
    ]
    keys = pl.concat(sample).sort() if sample else pl.Series(key, [], pl.String)
    if keys.is_empty():
        return keys
    cuts = [keys[min(len(keys) - 1, len(keys) * b // buckets)] for b in range(1, buckets)]
    return pl.Series(key, cuts, dtype=keys.dtype).unique().sort()


def _spill(frames: Iterator[pl.DataFrame], key: str, cuts: pl.Series, into: Path, name: str) -> None:
    for n, frame in enumerate(frames):
        rows = frame.filter(pl.col(key).is_not_null())
        if rows.is_empty():
            continue
        bucket = (
            cuts.search_sorted(rows.get_column(key), side="right")
            if len(cuts)
            else pl.repeat(0, rows.height, eager=True)
        )
        for (b,), part in (
            rows.with_columns(bucket.alias("_bucket")).partition_by("_bucket", as_dict=True).items()
        ):
            folder = into / f"{b:05d}"
            folder.mkdir(exist_ok=True)
            part.drop("_bucket").write_parquet(folder / f"{name}-{n:06d}.parquet")


def _read_spilled(folder: Path, name: str) -> pl.DataFrame | None:
    files = sorted(folder.glob(f"{name}-*.parquet"))
    return pl.read_parquet(files) if files else None


@contextlib.contextmanager
def folds(
    lake: str,
    view: ViewSpec,
    storage: dict[str, str] | None,
    versions: dict[str, int] | None = None,
    bucket_rows: int | None = None,
    table: DeltaTable | None = None,
) -> Iterator[tuple[Iterator[tuple[pl.DataFrame, pl.DataFrame | None]], dict[str, int]]]:
    """The fold of raw history in key ranges, in key order, in bounded memory: (folded rows,
    the rows `table` holds for the same keys, if given) per range, and the versions read.

    A key's events can sit in any file of any source, so raw rows are spilled to local disk by
    key range first (one pass, only the view's columns), then each range is folded alone; a
    range holds about `bucket_rows` raw rows. A history of fewer rows is one range, in memory.
    Everything Delta is read on entering (the ranges read only the spilled files: a Delta writer
    can consume them as a stream)."""
    sources, at = _sources(lake, view, storage, versions)
    total = sum(g.rows for g in sources.values())
    buckets = max(1, math.ceil(total / (bucket_rows or BUCKET_ROWS)))
    if buckets == 1:
        raw, _ = _read_raw(lake, view, storage, versions=versions)
        have = pl.from_arrow(table.to_pyarrow_table()) if table is not None else None
        assert have is None or isinstance(have, pl.DataFrame)
        yield iter([(fold(raw, view), have)]), at
        return
    cols = {t: source_columns(view, t) for t in sources}
    cuts = _boundaries(sources, view.key, buckets)
    with tempfile.TemporaryDirectory(prefix=f"tidegate-view-{view.name}-") as tmp:
        into = Path(tmp)
        for t, groups in sources.items():
            chunks = (c for i in range(len(groups)) for c in groups.chunks(i, cols[t], SPILL_ROWS))
            _spill(chunks, view.key, cuts, into, f"raw-{len(t)}-{t}")
        if table is not None:
            stored = FileGroups.of(table)
            names = list(stored.dataset.schema.names)
            _spill(
                (c for i in range(len(stored)) for c in stored.chunks(i, names, SPILL_ROWS)),
                view.key,
                cuts,
                into,
                "view",
            )

        def ranges() -> Iterator[tuple[pl.DataFrame, pl.DataFrame | None]]:
            for folder in sorted(p for p in into.iterdir() if p.is_dir()):
                raw = {
                    t: frame
                    for t in sources
                    if (frame := _read_spilled(folder, f"raw-{len(t)}-{t}")) is not None
                }
                yield fold(raw, view), _read_spilled(folder, "view")

        yield ranges(), at


def commit_staged(
    uri: str,
    view: ViewSpec,
    schema: pa.Schema,
    files: Sequence[tuple[str, int, str]],
    versions: dict[str, int],
    run_id: str,
    storage: dict[str, str] | None = None,
) -> int:
    """Replace the view table's rows by Parquet files already written in its folder (`files`:
    path relative to the table root, size, Delta statistics JSON) in ONE commit, creating the
    table if there is none, with the one-process rebuild's commit properties (`versions`: the
    raw version of each source the files fold, recorded as the view's markers). The Dataflow
    view replay's last step (tidegate.transforms.view_fold). A retry after the commit landed
    (its run id is the table's last commit, or one of its files is live) commits nothing again.
    Returns the table version after it."""
    staged = sorted(files)
    props = commit_properties(view, versions, run_id)
    now = int(time.time() * 1000)
    actions = [AddAction(path, size, {}, now, True, stats) for path, size, stats in staged]
    table = try_open(uri, storage)
    if table is None:
        create_table_with_add_actions(
            uri,
            Schema.from_arrow(schema),
            actions,
            mode="error",
            storage_options=storage,
            commit_properties=props,
        )
    elif not _staged_landed(table, run_id, [path for path, _, _ in staged]):
        table.create_write_transaction(
            list[AddAction | RemoveAction](actions), "overwrite", schema, commit_properties=props
        )
    after = try_open(uri, storage)
    assert after is not None, uri
    return int(after.version())


def _staged_landed(table: DeltaTable, run_id: str, paths: Sequence[str]) -> bool:
    if table.history(1)[0].get("tidegate_run_id") == run_id:
        return True
    live = {u.rsplit("/", 1)[-1] for u in table.file_uris()}
    return any(p.rsplit("/", 1)[-1] in live for p in paths)


def commit_properties(view: Any, versions: dict[str, int], run_id: str) -> CommitProperties:
    """A view commit's lineage, and the raw version of each source it now reflects (its markers,
    as app transactions)."""
    return CommitProperties(
        custom_metadata={"tidegate_run_id": run_id, "tidegate_table": f"views/{view.name}"},
        app_transactions=[Transaction(app_id(view, t), v) for t, v in versions.items()],
    )


def _commit(
    catalog: Catalog,
    lake: str,
    view: ViewSpec,
    rows: pl.DataFrame,
    versions: dict[str, int],
    storage: dict[str, str] | None,
    *,
    keys: Sequence[Any] | None,
    run_id: str,
    table: DeltaTable | None = None,
) -> None:
    """Replace the rows of `keys` (all rows when None) and move the markers, one commit
    (`table`: the view as the caller just opened it, if it did; else it is opened here).

    The rows of `keys` are replaced by a MERGE, not by an overwrite with the predicate
    `key IN (...)`: delta-rs needs stack for such a predicate in proportion to its length, on
    the calling thread (deltalake 1.6.6: 20,000 keys overflowed a 1 MiB thread stack, 50,000 the
    usual 8 MiB one, and the process died of a SIGSEGV), and the MERGE's join has no such
    limit. Its source is one `delete` row per key, which matches (and deletes) every current
    row of that key, plus the keys' new rows, inserted: the same result as the overwrite, for
    SCD type 1 and 2 alike. Only the files holding a touched key are rewritten (measured on a
    256k-row view in 16 files, 1,000 keys: 0.12-0.16 s; the same view in one file, 0.6 s)."""
    props = commit_properties(view, versions, run_id)
    uri = view_uri(lake, view.name)
    existing = table if table is not None else try_open(uri, storage)
    schema = view_schema(catalog, view)
    data = arrow_rows(rows, schema) if not rows.is_empty() else schema.empty_table()
    if existing is None:
        write_deltalake(
            uri,
            data,
            mode="error",
            commit_properties=props,
            storage_options=storage,
            configuration=VIEW_PROPERTIES,
        )
        return
    existing = _bounded(existing, uri, storage)
    hooks = commit_hooks(existing)
    if keys is None:
        write_deltalake(
            existing, data, mode="overwrite", commit_properties=props, post_commithook_properties=hooks
        )
        return
    if not keys:  # no key changed (compaction, retention): only the markers move
        write_deltalake(
            existing,
            schema.empty_table(),
            mode="append",
            commit_properties=props,
            post_commithook_properties=hooks,
        )
        return
    (
        existing.merge(
            _replacing(view.key, keys, data, schema),
            predicate=f"t.{view.key} = s.{view.key} AND s.{_OP} = 'delete'",
            source_alias="s",
            target_alias="t",
            commit_properties=props,
            post_commithook_properties=hooks,
        )
        .when_matched_delete()
        .when_not_matched_insert({c: f"s.{c}" for c in schema.names}, predicate=f"s.{_OP} = 'insert'")
        .execute()
    )


_OP = "_tidegate_op"


def _bounded(table: DeltaTable, uri: str, storage: dict[str, str] | None) -> DeltaTable:
    """`table`, with VIEW_PROPERTIES set: a view made before its files were bounded gets them in
    one metadata commit, once (its writers hold the lake lock: nothing races it)."""
    if all(table.metadata().configuration.get(k) == v for k, v in VIEW_PROPERTIES.items()):
        return table
    table.alter.set_table_properties(VIEW_PROPERTIES, raise_if_not_exists=False)
    return try_open(uri, storage) or table


def _replacing(key: str, keys: Sequence[Any], data: pa.Table, schema: pa.Schema) -> pa.Table:
    """The MERGE source of `_commit`: a `delete` row per key (nulls but the key), then the new
    rows, each marked in `_OP`."""
    loose = pa.schema([f.with_nullable(True) for f in schema])
    deletes = pa.table(
        {
            f.name: pa.array(list(keys), type=f.type) if f.name == key else pa.nulls(len(keys), type=f.type)
            for f in loose
        },
        schema=loose,
    )
    inserts = data.select(schema.names).cast(loose)
    return pa.concat_tables(
        [
            deletes.append_column(_OP, pa.array(["delete"] * deletes.num_rows, type=pa.string())),
            inserts.append_column(_OP, pa.array(["insert"] * inserts.num_rows, type=pa.string())),
        ]
    )


def rebuild(
    catalog: Catalog, lake: str, name: str, *, run_id: str, storage: dict[str, str] | None = None
) -> int:
    """The whole view from raw history (`tidegate replay <view>`); returns its rows. One commit,
    written range by range (`folds`): memory holds one key range, not the view."""
    view = _view(catalog, name)
    return _rebuild(catalog, lake, view, None, storage, run_id)[1]


def _rebuild(
    catalog: Catalog,
    lake: str,
    view: ViewSpec,
    versions: dict[str, int] | None,
    storage: dict[str, str] | None,
    run_id: str,
) -> tuple[int, int]:
    """Fold all of raw into the view in one commit; (keys, rows) written."""
    with folds(lake, view, storage, versions) as (ranges, at):
        return _write_all(catalog, lake, view, ranges, at, storage, run_id)


def _write_all(
    catalog: Catalog,
    lake: str,
    view: ViewSpec,
    ranges: Iterator[tuple[pl.DataFrame, pl.DataFrame | None]],
    at: dict[str, int],
    storage: dict[str, str] | None,
    run_id: str,
) -> tuple[int, int]:
    first, second = next(ranges, None), next(ranges, None)
    if second is None:  # one range: the whole view in one table, as it always was written
        rows = first[0] if first is not None else pl.DataFrame()
        _commit(catalog, lake, view, rows, at, storage, keys=None, run_id=run_id)
        return (rows.get_column(view.key).n_unique() if rows.height else 0), rows.height
    schema = view_schema(catalog, view)
    counted = [0, 0]

    def batches() -> Iterator[pa.RecordBatch]:
        # delta-rs writes a stream's batches in parallel: rows keep their values, not their
        # order across ranges (readers sort; a Delta table promises no row order)
        assert first is not None
        assert second is not None
        for rows, _ in itertools.chain([first, second], ranges):
            if rows.is_empty():
                continue
            counted[0] += rows.get_column(view.key).n_unique()
            counted[1] += rows.height
            yield from arrow_rows(rows, schema).to_batches()

    props = commit_properties(view, at, run_id)
    uri = view_uri(lake, view.name)
    existing = try_open(uri, storage)
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    # small row groups: a reader of the view (parity, the next rebuild) decodes one at a time
    small = WriterProperties(max_row_group_size=ROW_GROUP_ROWS)
    if existing is None:
        write_deltalake(
            uri,
            reader,
            mode="error",
            commit_properties=props,
            storage_options=storage,
            writer_properties=small,
            configuration=VIEW_PROPERTIES,
        )
    else:
        write_deltalake(
            _bounded(existing, uri, storage),
            reader,
            mode="overwrite",
            commit_properties=props,
            writer_properties=small,
        )
    return counted[0], counted[1]


def arrow_rows(rows: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Folded rows as the view table's Arrow columns and types (`view_schema`)."""
    return pa.Table.from_arrays(
        [rows.get_column(f.name).to_arrow().cast(f.type) for f in schema], schema=schema
    )


def _view(catalog: Catalog, name: str) -> ViewSpec:
    for v in catalog.views:
        if v.name == name:
            return v
    raise KeyError(name)


def _marker(table: Any, app: str) -> int:
    found = table.transaction_version(app)
    return -2 if found is None else int(found)


@dataclass
class ViewUpdate:
    view: str
    keys: int  # keys folded again
    rows: int  # rows written for them


class KeyFiles:
    """Which data files of a raw table hold which view keys: a view update reads only the files
    that can hold a touched key, not every key of raw history.

    Without it, each update scanned the key column of all of its sources' raw history (a
    10-minute soak at 1.5k events/s: ~300k rows every 2 s, and growing all day), so its CPU
    and memory grew with the history, not with the traffic. Per data file (immutable: a path
    is never rewritten) it keeps the sorted 64-bit hashes of the file's keys (8 bytes a raw row
    of the view's types, built on first sight of the file: a process's first update reads every
    key once, as each update did before). A hash collision only adds a file to read (the read
    still filters on the keys themselves). Files no longer in the table are forgotten."""

    def __init__(self, storage: dict[str, str] | None) -> None:
        self.storage = storage
        # (data file, key column) -> sorted hashes; None: unknown, the file is always read
        self._hashes: dict[tuple[str, str], np.ndarray | None] = {}
        self._files: dict[tuple[str, str], list[str]] = {}  # (table uri, key column) -> its files

    def holding(self, table: DeltaTable, key: str, keys: Sequence[Any]) -> list[str]:
        """The data files of `table` (at its loaded version) that may hold one of `keys`."""
        files = data_files(table)
        known = self._files.get((table.table_uri, key), [])
        for gone in set(known) - set(files):
            self._hashes.pop((gone, key), None)
        self._files[(table.table_uri, key)] = files
        missing = [f for f in files if (f, key) not in self._hashes]
        if missing:
            found = (
                scan_table(table, self.storage, files=missing, file_column="_file")
                .select(pl.col(key), "_file")
                .collect()
            )
            parts = {str(n): p for (n,), p in found.partition_by("_file", as_dict=True).items()}
            if set(parts) <= set(missing):
                for f in missing:  # a file without rows (or only null keys) holds no key
                    part = parts.get(f)
                    hashes = _key_hashes(part.get_column(key)) if part is not None else np.empty(0, np.uint64)
                    self._hashes[(f, key)] = np.unique(hashes)
            else:  # the reader named the files otherwise: never guess, read them every time
                self._hashes.update({(f, key): None for f in missing})
        if not keys:
            return []
        probe = np.unique(_key_hashes(pl.Series(key, list(keys))))
        out = []
        for f in files:
            have = self._hashes[(f, key)]
            if have is None:
                out.append(f)
            elif len(have):
                at = np.minimum(np.searchsorted(have, probe), len(have) - 1)
                if bool((have[at] == probe).any()):
                    out.append(f)
        return out


def _key_hashes(keys: pl.Series) -> np.ndarray:
    """64-bit hashes of key values (as strings: a source's key column type never matters)."""
    return keys.drop_nulls().cast(pl.String).hash(seed=0).to_numpy()


class ViewMaintainer:
    """Keeps every view of the catalog equal to a fold of raw history, key by key."""

    def __init__(
        self, catalog: Catalog, lake: str, *, run_id: str, storage: dict[str, str] | None = None
    ) -> None:
        self.catalog = catalog
        self.lake = lake
        self.run_id = run_id
        self.storage = storage
        # the data files of a raw table (by table id) at a version: what a view's marker stood
        # at last round is this round's `done`, so a maintainer kept across rounds (the local
        # projector's) need not open the raw table at that version again (~25 ms each)
        self._files: dict[tuple[str, int], set[str]] = {}
        self._key_files = KeyFiles(storage)
        self._tables = OpenTables(storage)  # the views' raw sources, kept open across rounds

    def _new_keys(
        self, key: str, event_type: str, raw: Any, done: int, compacted_since: datetime | None
    ) -> set[Any] | None:
        """The keys of the rows the raw commits after `done` added: the data files the table
        has now and did not have then (as the aggregate projection reads them)."""
        table_id = raw.metadata().id
        before = self._files.get((table_id, done))
        if before is None:
            before = _files_at(raw_uri(self.lake, event_type), self.storage, done)
        if before is None:
            return None
        now = set(data_files(raw))
        for k in [k for k in self._files if k[0] == table_id and k[1] < raw.version()]:
            del self._files[k]
        self._files[(table_id, raw.version())] = now
        return _keys_in(sorted(now - before), key, self.storage, compacted_since)

    def update(self) -> list[ViewUpdate]:
        try:
            return [u for v in self.catalog.views if (u := self._update(v)) is not None]
        except BaseException:
            self._tables.forget()  # whatever failed, the next round opens every source afresh
            raise

    def _update(self, view: ViewSpec) -> ViewUpdate | None:
        # the view is opened afresh each round (a replay may have made it anew); its sources
        # are kept open (`_tables`)
        table = try_open(view_uri(self.lake, view.name), self.storage)
        touched: set[Any] = set()
        versions: dict[str, int] = {}
        opened: dict[str, Any] = {}  # each raw table, at the version in `versions`
        rebuild_all = table is None
        for e in view.events:
            raw = self._tables.get(raw_uri(self.lake, e.type))
            if raw is None:
                continue
            target = raw.version()
            versions[e.type] = target
            opened[e.type] = raw
            done = None if table is None else table.transaction_version(app_id(view, e.type))
            if done is None:
                rebuild_all = True
                continue
            if done >= target:
                continue
            if done < 0:  # the source appeared after the view's last commit: all of it is new
                fresh = pl.from_arrow(raw.to_pyarrow_table(columns=[view.key]))
                assert isinstance(fresh, pl.DataFrame)
                touched |= set(fresh.get_column(view.key).drop_nulls().to_list())
                continue
            changes = raw_changes(raw, done, target)
            since = changes.done_at
            if not changes.only_appends or changes.erased or since is None:
                rebuild_all = True  # rows changed in place (an erasure), or history too short
                continue
            new_keys = self._new_keys(view.key, e.type, raw, done, changes.compacted_since)
            if new_keys is None:
                rebuild_all = True  # the version it stands at is no longer in the log
                continue
            touched |= new_keys
        if rebuild_all:
            keys, written = _rebuild(self.catalog, self.lake, view, None, self.storage, self.run_id)
            return ViewUpdate(view.name, keys, written)
        if not versions or all(
            table is not None and _marker(table, app_id(view, t)) >= v for t, v in versions.items()
        ):
            return None
        # read at the versions the touched keys were taken from: a commit landing meanwhile is
        # the next round's (reading it now would move the marker past keys nobody folded)
        ordered = sorted(touched, key=str)
        holding = {t: self._key_files.holding(raw, view.key, ordered) for t, raw in opened.items()}
        raw_rows, at = _read_raw(
            self.lake, view, self.storage, keys=ordered, versions=versions, opened=opened, files=holding
        )
        rows = fold(raw_rows, view)
        _commit(
            self.catalog,
            self.lake,
            view,
            rows,
            at,
            self.storage,
            keys=ordered,
            run_id=self.run_id,
            table=table,
        )
        return ViewUpdate(view.name, len(touched), rows.height)


def _files_at(uri: str, storage: dict[str, str] | None, version: int) -> set[str] | None:
    try:
        table = try_open(uri, storage, version=version)
    except Exception:  # noqa: BLE001 - a version whose log was cleaned: the caller rebuilds
        return None
    return set(data_files(table)) if table is not None else None


def _keys_in(files: list[str], key: str, storage: dict[str, str] | None, since: datetime | None) -> set[Any]:
    if not files:
        return set()
    scan = pl.scan_parquet(files, storage_options=storage)
    if since is not None:  # compacted files hold old rows too: only those ingested later count
        scan = scan.filter(pl.col("ingest_time") > since)
    return set(scan.select(key).collect().get_column(key).drop_nulls().to_list())


def view_parity(catalog: Catalog, lake: str, name: str, storage: dict[str, str] | None = None) -> list[str]:
    """Problems (empty: none) between the view table and a fold of raw at the versions the view
    records: a missing, extra or different row per key (and valid_from, in history mode)."""
    view = _view(catalog, name)
    table = try_open(view_uri(lake, name), storage)
    if table is None:
        return [
            f"views/{name} does not exist: `tidegate ingest` builds it, `tidegate replay {name}` rebuilds it"
        ]
    versions = {
        e.type: v for e in view.events if (v := table.transaction_version(app_id(view, e.type))) is not None
    }
    # a source the view has no marker for (or -1) was not there when it last committed
    versions, problem = readable_sources(lake, view, {t: v for t, v in versions.items() if v >= 0}, storage)
    if problem:
        return [problem]
    ident = [view.key, *(["valid_from"] if view.history else [])]
    problems: list[str] = []
    with folds(lake, view, storage, versions, table=table) as (ranges, _):
        for expected, stored in ranges:  # key range by key range: one range in memory at a time
            problems += differences(name, ident, expected, stored, table)
            if len(problems) >= 40:
                break
    return problems


def readable_sources(
    lake: str, view: ViewSpec, versions: dict[str, int], storage: dict[str, str] | None = None
) -> tuple[dict[str, int], str | None]:
    """The raw versions a view records, each moved to the newest version holding the same rows
    (`tidegate maintain --retain-hours 0` vacuums the files of a compacted version), and the
    problem to report if one of them can no longer be read at all (raw changed, then a vacuum)."""
    readable: dict[str, int] = {}
    for t, version in versions.items():
        uri = raw_uri(lake, t)
        readable[t] = readable_version(uri, version, storage)
        gone = missing_files(uri, readable[t], storage)
        if gone:
            return readable, (
                f"views/{view.name}: raw/{t} version {version}, which the view incorporates, can no "
                f"longer be read ({vacuumed(gone)}); "
                f"raw changed since, so nothing holds its rows: `tidegate replay {view.name}` rebuilds "
                "the view from the current raw version"
            )
    return readable, None


def differences(
    name: str, ident: list[str], expected: pl.DataFrame, stored: pl.DataFrame | None, table: DeltaTable
) -> list[str]:
    got = stored if stored is not None else pl.DataFrame()
    if expected.is_empty() and got.is_empty():
        return []
    if got.is_empty():
        got = pl.from_arrow(pa.schema(table.schema().to_arrow()).empty_table())  # type: ignore[assignment]
        assert isinstance(got, pl.DataFrame)
    cols = [c for c in expected.columns if c in got.columns] or list(got.columns)
    exp = (
        (expected if not expected.is_empty() else got.head(0))
        .select(cols)
        .with_columns(pl.all().cast(pl.String))
    )
    have = got.select(cols).with_columns(pl.all().cast(pl.String))
    problems = [
        f"views/{name}: {', '.join(f'{k}={r[k]}' for k in ident)} differs from a fold of raw: {r}"
        for r in exp.join(have, on=cols, how="anti", nulls_equal=True).head(20).to_dicts()
    ]
    problems += [
        f"views/{name}: {', '.join(f'{k}={r[k]}' for k in ident)} is in the table, not in a fold of raw"
        for r in have.join(exp, on=cols, how="anti", nulls_equal=True).head(20).to_dicts()
    ]
    return problems
