"""Writing aggregate tables, for every mode: one guarded commit each.

- `aggregate_rows` / `aggregate_commit_meta`: the rows and the commit metadata (lineage);
- `replace_all`: `tidegate replay` swaps a whole table in one commit;
- `apply_panes`: streaming mode's sink, upserting Beam's accumulating panes with a guard;
- `write_late`: the late ledger (`aggregates/_late`).

The local projector (tidegate.lake.projection) writes through `lake.writer.replace_windows` with
its own app transaction; the session rule (which stored sessions a new one absorbs) is
`tidegate.lake.aggregates.merge`'s, applied to stored rows here and there.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake

from tidegate.catalog import AggregateSpec
from tidegate.errors import TransientError
from tidegate.lake import aggregates as agg
from tidegate.lake.delta import try_open
from tidegate.lake.rows import commit_metadata
from tidegate.lake.tables import LATE, LATE_SCHEMA, aggregate_uri
from tidegate.lake.writer import insert_new, replace_windows

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")


def app_id(spec: AggregateSpec) -> str:
    """The Delta app transaction id that holds the raw version an aggregate incorporates."""
    return f"tidegate.raw/{spec.source}"


def aggregate_commit_meta(
    spec: AggregateSpec,
    *,
    run_id: str,
    code_version: str,
    git_sha: str,
    written_by: str,
    source: str | None = None,
    raw_version: int | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Lineage metadata of a commit to an aggregate table (projection, replay or stream):
    the usual tidegate_* keys plus the source table, the raw version and the declaration."""

    keys: dict[str, Any] = {
        "tidegate_table": f"aggregates/{spec.name}",
        "tidegate_aggregate_spec": spec.model_dump_json(),
        "tidegate_written_by": written_by,
        **{f"tidegate_{k}": v for k, v in extra.items()},
    }
    if source is not None:
        keys["tidegate_source"] = source
    if raw_version is not None:
        keys["tidegate_raw_version"] = raw_version
    return commit_metadata(
        run_id=run_id,
        batch_ids=[],
        code_version=code_version,
        git_sha=git_sha,
        subscriptions=[],
        message_ids=[],
        extra=keys,
    )


def aggregate_rows(
    schema: pa.Schema, frame: pl.DataFrame, raw_version: int, run_id: str, written_by: str
) -> pa.Table:
    """Window rows (window, keys, metrics) in the aggregate table's schema, lineage filled in."""
    n = frame.height
    now = datetime.now(UTC)
    provenance = {
        "revision": pa.array([1] * n, pa.int64()),
        "raw_version": pa.array([raw_version] * n, pa.int64()),
        "updated_at": pa.array([now] * n, TS),
        "run_id": pa.array([run_id] * n, pa.string()),
        "written_by": pa.array([written_by] * n, pa.string()),
    }
    data = frame.to_arrow()
    arrays = [
        provenance[f.name] if f.name in provenance else data.column(f.name).cast(f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_late(
    lake: str,
    spec: AggregateSpec,
    pairs: pl.DataFrame,
    raw_version: int,
    run_id: str,
    storage: dict[str, str] | None,
) -> int:
    """Record late (event, window) pairs in the late ledger (insert-only: idempotent)."""

    if pairs.is_empty():
        return 0
    data = pairs.with_columns(
        pl.lit(spec.source).alias("event_type"),
        pl.lit(raw_version, dtype=pl.Int64).alias("raw_version"),
        pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias("recorded_at"),
        pl.lit(run_id).alias("run_id"),
    ).to_arrow()
    table = pa.Table.from_arrays([data.column(f.name).cast(f.type) for f in LATE_SCHEMA], schema=LATE_SCHEMA)
    result = insert_new(
        LATE.uri(lake),
        table,
        keys=LATE.keys,
        partition_by=LATE.partition_by,
        prune_on="aggregate",
        metadata={"tidegate_run_id": run_id, "tidegate_table": "aggregates/_late"},
        storage_options=storage,
    )
    log.info(
        "%s: %d late (event, window) pairs, %d new in the ledger", spec.name, pairs.height, result.inserted
    )
    return pairs.height


def replace_all(
    lake: str,
    spec: AggregateSpec,
    rows: pa.Table,
    *,
    raw_version: int,
    since: datetime | None,
    until: datetime | None,
    metadata: dict[str, str],
    storage: dict[str, str] | None,
) -> int:
    """A replay's write: replace the aggregate's windows starting in [since, until) (all of them
    when neither is given) in one commit. A full replay records `raw_version` as the app
    transaction (the table now incorporates exactly that version); a ranged one leaves the marker
    alone, so the next projection still recomputes whatever is newer. Returns the version."""

    uri = aggregate_uri(lake, spec.name)
    full = since is None and until is None
    txns = [Transaction(app_id(spec), raw_version)] if full else None
    existing = try_open(uri, storage)
    if existing is not None and full:
        done = existing.transaction_version(app_id(spec))
        if done is not None and done > raw_version:
            raise TransientError(
                f"{uri} already incorporates raw version {done}, newer than this replay's {raw_version}"
            )
    predicate = None
    if not full:
        parts = []
        if since is not None:
            parts.append(f"window_start >= '{since.isoformat()}'")
        if until is not None:
            parts.append(f"window_start < '{until.isoformat()}'")
        predicate = " AND ".join(parts)
        if existing is None:
            predicate = None
    write_deltalake(
        uri,
        rows,
        mode="overwrite",
        predicate=predicate,
        schema_mode=None if predicate else "overwrite",
        commit_properties=CommitProperties(custom_metadata=metadata, app_transactions=txns),
        storage_options=storage,
    )
    table = try_open(uri, storage)
    assert table is not None
    return int(table.version())


def apply_panes(
    lake: str,
    spec: AggregateSpec,
    schema: pa.Schema,
    panes: list[dict[str, Any]],
    *,
    run_id: str,
    metadata: dict[str, str],
    storage: dict[str, str] | None = None,
) -> int:
    """Streaming mode's sink: upsert window panes (accumulating: each pane is the whole window
    so far) with a guard, in one commit. Returns the rows written.

    - per (window, keys) the pane with the highest index wins: an older pane never overwrites a
      newer one, and a retried bundle (same panes again) changes nothing;
    - sessions: a pane of a merged session replaces the stored sessions of its key that it
      contains; a pane contained in a stored, larger session of its key (it merged since) is
      dropped."""

    if not panes:
        return 0
    keys = list(spec.keys)
    incoming = pl.DataFrame(panes).select([*agg.value_columns(spec), "revision"])
    # newest pane per window within the bundle
    incoming = incoming.sort("revision").unique([*agg.WINDOW, *keys], keep="last")
    uri = aggregate_uri(lake, spec.name)
    table = try_open(uri, storage)
    stored = (
        pl.from_arrow(table.to_pyarrow_table(columns=[*agg.WINDOW, *keys, "revision"]))
        if table is not None
        else pl.DataFrame(schema={**incoming.select([*agg.WINDOW, *keys, "revision"]).schema})
    )
    assert isinstance(stored, pl.DataFrame)
    stored = stored.cast(dict(incoming.select([*agg.WINDOW, *keys, "revision"]).schema))  # type: ignore[arg-type]
    deletes = pl.DataFrame(schema={**incoming.select(["window_start", *keys]).schema})
    if spec.window.type == "session":
        both = pl.concat(
            [incoming.select([*agg.WINDOW, *keys]), stored.select([*agg.WINDOW, *keys])]
        ).unique()
        pairs = incoming.select([*agg.WINDOW, *keys]).join(
            both, on=keys, how="inner", suffix="_o", nulls_equal=True
        )
        inside = (pl.col("window_start_o") <= pl.col("window_start")) & (
            pl.col("window_end") <= pl.col("window_end_o")
        )
        same = (pl.col("window_start_o") == pl.col("window_start")) & (
            pl.col("window_end_o") == pl.col("window_end")
        )
        swallowed = pairs.filter(inside & ~same).select([*agg.WINDOW, *keys])
        incoming = incoming.join(swallowed, on=[*agg.WINDOW, *keys], how="anti", nulls_equal=True)
        contains = (pl.col("window_start") <= pl.col("window_start_o")) & (
            pl.col("window_end_o") <= pl.col("window_end")
        )
        replaced = (
            incoming.select([*agg.WINDOW, *keys])
            .join(stored.select([*agg.WINDOW, *keys]), on=keys, how="inner", suffix="_o", nulls_equal=True)
            .filter(contains & ~same)
        )
        deletes = replaced.select(pl.col("window_start_o").alias("window_start"), *keys).join(
            incoming.select(["window_start", *keys]), on=["window_start", *keys], how="anti", nulls_equal=True
        )  # same start: the upsert rewrites that row in place
    # the guard: only panes newer than what is stored
    newer = incoming.join(
        stored.select([*agg.WINDOW, *keys, pl.col("revision").alias("_stored")]),
        on=[*agg.WINDOW, *keys],
        how="left",
        nulls_equal=True,
    ).filter(pl.col("_stored").is_null() | (pl.col("revision") > pl.col("_stored")))
    rows = aggregate_rows(schema, newer.drop("revision", "_stored"), -1, run_id, "stream")
    rows = rows.set_column(
        schema.get_field_index("revision"),
        schema.field("revision"),
        pa.array(newer.get_column("revision").to_list(), pa.int64()),
    )
    if rows.num_rows == 0 and deletes.height == 0:
        return 0
    key_cols = ["window_start", *keys]
    del_table = pa.Table.from_arrays(
        [pa.array(deletes.get_column(k).to_list(), schema.field(k).type) for k in key_cols], names=key_cols
    )
    result = replace_windows(
        uri,
        rows,
        del_table,
        keys=key_cols,
        values=["window_end", *agg.metric_columns(spec), "revision"],
        app_id="tidegate.stream",
        app_version=0,
        metadata=metadata,
        storage_options=storage,
        revision_from_source=True,
    )
    return int(result.inserted)
