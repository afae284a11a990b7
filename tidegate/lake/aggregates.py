"""The aggregates' event-time semantics and combine logic, in polars (no Beam).

This module is the single definition of what an aggregate *is*. The local projection after
each raw commit (`tidegate.lake.projection`), `tidegate replay` (a bounded Beam pipeline that calls these
functions on chunks) and the parity check in `tidegate verify` all go through it, so they
cannot disagree.

Three steps, each a pure function of raw-history rows:

1. `assign(rows, spec)`: every row gets its event-time windows (`event_time` is ce-time; windows
   are aligned to the Unix epoch): fixed `size` -> one window [floor(t, size), +size);
   sliding `size` every `period` -> the size/period windows that cover t; session `gap` ->
   the proto-window [t, t + gap), merged later. Session rows whose key is null are left out
   (an anonymous visitor has no identity to sessionize); fixed and sliding windows keep null
   keys as their own group.
2. lateness, Beam's rule: a (row, window) pair is **late** when
   `window_end + allowed_lateness <= watermark`, where
   `watermark = seen_max_event_time - out_of_orderness`. `seen_max_event_time` is stamped on
   every raw row at commit time (the latest event time of its type already in the table, see
   `tidegate.lake.writer`), so the decision is *recorded in the raw history*: a replay, a restart and
   the parity check exclude exactly the events ingestion excluded. Late pairs go to the late
   ledger (`<lake>/aggregates/_late`), never into an aggregate; rows committed before any
   watermark existed (null) are never late.
3. partial -> merge -> finalize: `partials()` pre-aggregates a chunk columnarly into mergeable
   partial rows (count, sums, mins, maxes per window and keys); `merge()` combines partial rows
   from any number of chunks (sessions: overlapping intervals of the same key merge, so an
   event that bridges two sessions joins them); `finalize()` turns them into metrics
   (mean = exact sum / count, so the same inputs always give the same float).

    uv run python -c "import polars as pl; from tidegate.lake.aggregates import compute; \
        from tidegate.catalog import load_catalog; c = load_catalog(); \
        print(compute(pl.read_delta('.tidegate/demo/lake/raw/shop.order.placed'), c.aggregates[0]))"
"""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

import polars as pl
import pyarrow as pa

from tidegate.catalog import AggregateSpec, Catalog, parse_duration
from tidegate.errors import ConfigError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.tables import raw_schema

_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)


def check_aggregates(catalog: Catalog, registry: ContractRegistry) -> None:
    """Every key and metric field exists in its source table; sums and means are numeric."""
    for spec in catalog.aggregates:
        schema = raw_schema(registry.types[spec.source])
        for key in spec.keys:
            if key not in schema.names:
                raise ConfigError(f"aggregate {spec.name}: key {key!r} is not a column of raw/{spec.source}")
        for m in spec.metrics:
            if m.field is None:
                continue
            if m.field not in schema.names:
                raise ConfigError(
                    f"aggregate {spec.name}: field {m.field!r} is not a column of raw/{spec.source}"
                )
            if m.fn in ("sum", "mean") and not any(test(schema.field(m.field).type) for test in _NUMERIC):
                raise ConfigError(f"aggregate {spec.name}: {m.fn} needs a numeric field, {m.field!r} is not")


WINDOW = ["window_start", "window_end"]
LINEAGE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    (
        "revision",
        pa.int64(),
        "how many times this window row was written (1 = first); a pane index in streaming mode",
    ),
    ("raw_version", pa.int64(), "version of the raw table this row incorporates"),
    ("updated_at", pa.timestamp("us", tz="UTC"), "when this row was last written"),
    ("run_id", pa.string(), "ingest run or replay that last wrote this row"),
    ("written_by", pa.string(), "projection (local ingest), replay or stream (Dataflow panes)"),
]


def _seconds(value: str) -> timedelta:

    return timedelta(seconds=parse_duration(value))


def output_schema(spec: AggregateSpec, source: pa.Schema) -> pa.Schema:
    """The aggregate table: window, keys, metrics, then lineage columns."""
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field("window_start", ts, nullable=False), pa.field("window_end", ts, nullable=False)]
    fields += [source.field(k).with_nullable(True) for k in spec.keys]
    for m in spec.metrics:
        if m.fn == "count":
            t: pa.DataType = pa.int64()
        elif m.fn == "mean":
            t = pa.float64()
        else:
            t = source.field(m.field or "").type
            if m.fn == "sum":
                if pa.types.is_decimal(t):
                    t = pa.decimal128(38, t.scale)
                elif pa.types.is_integer(t):
                    t = pa.int64()
                else:
                    t = pa.float64()
        fields.append(pa.field(m.column, t))
    for partial in extra_state(spec):
        kind, _, field = partial.removeprefix("_").partition("__")
        t = pa.int64() if kind == "n" else source.field(field).type
        if kind == "sum":
            t = (
                pa.decimal128(38, t.scale)
                if pa.types.is_decimal(t)
                else pa.int64()
                if pa.types.is_integer(t)
                else pa.float64()
            )
        fields.append(pa.field(partial, t, metadata={"doc": "merge state (no declared metric holds it)"}))
    fields += [pa.field(n, t, metadata={"doc": d}) for n, t, d in LINEAGE_COLUMNS]
    return pa.schema(fields)


def state_columns(spec: AggregateSpec) -> dict[str, str]:
    """Partial (merge state) column -> the aggregate table column that holds it.

    count holds `_n`, sum holds `_sum__f`, min / max hold `_min__f` / `_max__f`; a state no
    declared metric holds (e.g. the count behind a mean declared without a count) is stored in a
    column of its own, named like the partial. Stored rows can then be merged with new partial
    rows exactly, without re-reading the raw rows behind them."""
    out: dict[str, str] = {}
    for m in spec.metrics:
        if m.fn == "count":
            out.setdefault("_n", m.column)
        elif m.fn in ("sum", "min", "max"):
            out.setdefault(f"_{m.fn}__{m.field}", m.column)
    for partial in partial_columns(spec)[len(WINDOW) + len(spec.keys) :]:
        out.setdefault(partial, partial)
    return out


def extra_state(spec: AggregateSpec) -> list[str]:
    return [p for p, col in state_columns(spec).items() if p == col]


def stored_partials(stored: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Aggregate table rows back into mergeable partial rows."""
    return stored.select([*WINDOW, *spec.keys, *(pl.col(c).alias(p) for p, c in state_columns(spec).items())])


def source_columns(spec: AggregateSpec) -> list[str]:
    """The raw columns an aggregate reads (identity, event time, watermark base, keys, fields)."""
    wanted = [
        "event_id",
        "event_time",
        "seen_max_event_time",
        *spec.keys,
        *(m.field for m in spec.metrics if m.field),
    ]
    return list(dict.fromkeys(c for c in wanted if c))


def metric_columns(spec: AggregateSpec) -> list[str]:
    return [m.column for m in spec.metrics]


def value_columns(spec: AggregateSpec) -> list[str]:
    """What parity compares: window, keys and metrics (not the lineage columns)."""
    return [*WINDOW, *spec.keys, *metric_columns(spec)]


# -- 1. windows ------------------------------------------------------------------------------


def assign(rows: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """One row per (event, window) with window_start / window_end (sessions: proto-windows)."""
    w = spec.window
    t = pl.col("event_time")
    if w.type == "fixed":
        size = _seconds(w.size or "")
        return rows.with_columns(t.dt.truncate(size).alias("window_start")).with_columns(
            (pl.col("window_start") + size).alias("window_end")
        )
    if w.type == "sliding":
        size, period = _seconds(w.size or ""), _seconds(w.period or "")
        n = int(size / period)
        starts = pl.concat_list([t.dt.truncate(period) - period * k for k in range(n)])
        return (
            rows.with_columns(starts.alias("window_start"))
            .explode("window_start")
            .with_columns((pl.col("window_start") + size).alias("window_end"))
        )
    gap = _seconds(w.gap or "")
    keyed = rows.drop_nulls(spec.keys) if spec.keys else rows
    return keyed.with_columns(t.alias("window_start"), (t + gap).alias("window_end"))


# -- 2. lateness -----------------------------------------------------------------------------


def with_lateness(assigned: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Adds `watermark` and `late` (bool) to assigned (event, window) pairs."""
    seen = (
        pl.col("seen_max_event_time")
        if "seen_max_event_time" in assigned.columns
        else pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    )
    watermark = seen - _seconds(spec.out_of_orderness)
    deadline = pl.col("window_end") + _seconds(spec.allowed_lateness)
    return assigned.with_columns(watermark.alias("watermark")).with_columns(
        (pl.col("watermark").is_not_null() & (deadline <= pl.col("watermark"))).alias("late")
    )


class Split(NamedTuple):
    on_time: pl.DataFrame  # assigned pairs that count
    late: pl.DataFrame  # assigned pairs excluded (the late ledger's rows)


def split(rows: pl.DataFrame, spec: AggregateSpec) -> Split:
    flagged = with_lateness(assign(rows, spec), spec)
    return Split(flagged.filter(~pl.col("late")), flagged.filter(pl.col("late")))


# -- 3. partial -> merge -> finalize ---------------------------------------------------------


def _fields(spec: AggregateSpec, *fns: str) -> list[str]:
    return sorted({m.field for m in spec.metrics if m.fn in fns and m.field})


def _partial_exprs(spec: AggregateSpec) -> list[pl.Expr]:
    return (
        [pl.len().cast(pl.Int64).alias("_n")]
        + [pl.col(f).sum().alias(f"_sum__{f}") for f in _fields(spec, "sum", "mean")]
        + [pl.col(f).min().alias(f"_min__{f}") for f in _fields(spec, "min")]
        + [pl.col(f).max().alias(f"_max__{f}") for f in _fields(spec, "max")]
    )


def _merge_exprs(spec: AggregateSpec) -> list[pl.Expr]:
    return (
        [pl.col("_n").sum()]
        + [pl.col(f"_sum__{f}").sum() for f in _fields(spec, "sum", "mean")]
        + [pl.col(f"_min__{f}").min() for f in _fields(spec, "min")]
        + [pl.col(f"_max__{f}").max() for f in _fields(spec, "max")]
    )


def partial_columns(spec: AggregateSpec) -> list[str]:
    return (
        [*WINDOW, *spec.keys, "_n"]
        + [f"_sum__{f}" for f in _fields(spec, "sum", "mean")]
        + [f"_min__{f}" for f in _fields(spec, "min")]
        + [f"_max__{f}" for f in _fields(spec, "max")]
    )


def partials(on_time: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Mergeable partial rows for a chunk of on-time (event, window) pairs."""
    if spec.window.type == "session":
        # each event is its own partial session (its proto-window); merge() joins them
        proto = on_time.select(
            [*WINDOW, *spec.keys]
            + [pl.lit(1, dtype=pl.Int64).alias("_n")]
            + [pl.col(f).alias(f"_sum__{f}") for f in _fields(spec, "sum", "mean")]
            + [pl.col(f).alias(f"_min__{f}") for f in _fields(spec, "min")]
            + [pl.col(f).alias(f"_max__{f}") for f in _fields(spec, "max")]
        )
        return merge(proto, spec)
    return on_time.group_by([*WINDOW, *spec.keys]).agg(_partial_exprs(spec)).select(partial_columns(spec))


def merge(parts: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Combine partial rows: same window and keys add up; sessions of a key that overlap merge
    (Beam's rule: [a, b) and [c, d) merge when they intersect, i.e. c < b)."""
    if spec.window.type != "session":
        return parts.group_by([*WINDOW, *spec.keys]).agg(_merge_exprs(spec)).select(partial_columns(spec))
    ordered = parts.sort([*spec.keys, "window_start"])
    prev_end = pl.col("window_end").cum_max().shift(1)
    if spec.keys:
        prev_end = prev_end.over(spec.keys)
    new = prev_end.is_null() | (pl.col("window_start") >= prev_end)
    sessions = ordered.with_columns(new.cum_sum().alias("_session"))
    out = sessions.group_by(["_session", *spec.keys]).agg(
        [pl.col("window_start").min(), pl.col("window_end").max(), *_merge_exprs(spec)]
    )
    return out.select(partial_columns(spec))


def finalize(merged: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Metrics from merged partial rows, sorted by window and keys."""
    exprs: list[pl.Expr] = []
    for m in spec.metrics:
        if m.fn == "count":
            e = pl.col("_n")
        elif m.fn == "mean":
            e = pl.col(f"_sum__{m.field}").cast(pl.Float64) / pl.col("_n")
        else:
            e = pl.col(f"_{m.fn}__{m.field}")
        exprs.append(e.alias(m.column))
    exprs += [pl.col(p) for p in extra_state(spec)]
    out = merged.select([*WINDOW, *spec.keys, *exprs])
    return out.sort([*WINDOW, *spec.keys], nulls_last=True)


def compute(rows: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """The aggregate of raw-history rows, late pairs excluded: window, keys, metrics."""
    return finalize(merge(partials(split(rows, spec).on_time, spec), spec), spec)


def late_pairs(rows: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """The late ledger's view of `rows`: one row per (event, window) excluded."""
    return late_pairs_of(split(rows, spec).late, spec)


def late_pairs_of(late: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    return late.select(
        pl.lit(spec.name).alias("aggregate"),
        pl.col("event_id") if "event_id" in late.columns else pl.lit(None, pl.String).alias("event_id"),
        "event_time",
        *WINDOW,
        "watermark",
        (pl.col("watermark") - pl.col("window_end") - _seconds(spec.allowed_lateness))
        .dt.total_seconds()
        .alias("late_by_seconds"),
    ).sort(["event_time", "window_start"])
