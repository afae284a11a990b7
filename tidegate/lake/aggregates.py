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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

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


def duration(value: str) -> timedelta:
    """A catalog duration ("5m", "30s", "1h") as a timedelta."""
    return timedelta(seconds=parse_duration(value))


def output_schema(spec: AggregateSpec, source: pa.Schema) -> pa.Schema:
    """The aggregate table: window, keys, metrics, then lineage columns."""
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field("window_start", ts, nullable=False), pa.field("window_end", ts, nullable=False)]
    fields += [source.field(k).with_nullable(True) for k in spec.keys]
    for m in spec.metrics:
        field_type = source.field(m.field).type if m.field else None
        fields.append(pa.field(m.column, METRICS[m.fn].output_type(field_type)))
    held = state_columns(spec)
    for state in states(spec):
        if held[state.column] == state.column:  # no declared metric holds it: a column of its own
            fields.append(
                pa.field(
                    state.column,
                    state_type(state, source),
                    metadata={"doc": "merge state (no declared metric holds it)"},
                )
            )
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
        held = METRICS[m.fn].holds(m.field)
        if held is not None:
            out.setdefault(held.column, m.column)
    for state in states(spec):
        out.setdefault(state.column, state.column)
    return out


def extra_state(spec: AggregateSpec) -> list[str]:
    return [p for p, col in state_columns(spec).items() if p == col]


def stored_partials(stored: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Aggregate table rows back into mergeable partial rows."""
    return stored.select([*WINDOW, *spec.keys, *(pl.col(c).alias(p) for p, c in state_columns(spec).items())])


def source_columns(spec: AggregateSpec) -> list[str]:
    """The raw columns an aggregate reads (identity, event time, watermark base, keys, fields)."""
    wanted = [
        "event_source",
        "event_id",
        "event_time",
        "seen_max_event_time",
        *spec.keys,
        *(m.field for m in spec.metrics if m.field),
    ]
    return list(dict.fromkeys(c for c in wanted if c))


def read_columns(spec: AggregateSpec, schema: pa.Schema) -> list[str]:
    """The source columns of `spec` that a raw table with `schema` has (older versions may lack some)."""
    return [c for c in source_columns(spec) if c in schema.names]


def frame(table: pa.Table) -> pl.DataFrame:
    """Raw rows as the frame these functions read (`seen_max_event_time` null where a table
    written before it existed lacks it)."""
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    if "seen_max_event_time" not in out.columns:
        out = out.with_columns(pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("seen_max_event_time"))
    return out


def metric_columns(spec: AggregateSpec) -> list[str]:
    return [m.column for m in spec.metrics]


def value_columns(spec: AggregateSpec) -> list[str]:
    """What parity compares: window, keys and metrics (not the lineage columns)."""
    return [*WINDOW, *spec.keys, *metric_columns(spec)]


# -- the metric registry ---------------------------------------------------------------------
#
# A metric is finalized from mergeable states; a state is one of four reductions (`REDUCERS`).
# Every path computes metrics from these two tables: the polars partial/merge/finalize below,
# the Beam CombineFn of streaming mode (tidegate.transforms.aggregate.AggregateCombineFn), the
# aggregate table's schema and the states a stored row keeps for later merges. Adding a metric
# is one `MetricKind` entry (plus its tests and the catalog's `fn` literal).


@dataclass(frozen=True)
class Reducer:
    """How one state is built from rows and merged: in polars (columnar) and in Python (the
    Beam CombineFn's accumulators, one row at a time)."""

    partial: Callable[[str | None], pl.Expr]  # over a group of rows (field name or None)
    single: Callable[[str | None], pl.Expr]  # the state of one row (a session's proto-window)
    merge: Callable[[str], pl.Expr]  # over a group of partial rows (state column name)
    add: Callable[[Any, Any], Any]  # accumulator, one row's value -> accumulator
    combine: Callable[[Any, Any], Any]  # two accumulators -> one


def _field(name: str | None) -> pl.Expr:
    assert name is not None, "a sum, min or max state reads a field"
    return pl.col(name)


def _keep(pick: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A null-skipping binary reduction (min, max: nulls are ignored, as polars ignores them)."""
    return lambda acc, v: acc if v is None else v if acc is None else pick(acc, v)


def _plus(acc: Any, v: Any) -> Any:
    return acc if v is None else v if acc is None else acc + v


REDUCERS: dict[str, Reducer] = {
    "n": Reducer(
        partial=lambda _f: pl.len().cast(pl.Int64),
        single=lambda _f: pl.lit(1, dtype=pl.Int64),
        merge=lambda c: pl.col(c).sum(),
        add=lambda acc, _v: (acc or 0) + 1,
        combine=lambda a, b: (a or 0) + (b or 0),
    ),
    "sum": Reducer(
        partial=lambda f: _field(f).sum(),
        single=_field,
        merge=lambda c: pl.col(c).sum(),
        add=_plus,
        combine=_plus,
    ),
    "min": Reducer(
        partial=lambda f: _field(f).min(),
        single=_field,
        merge=lambda c: pl.col(c).min(),
        add=_keep(min),
        combine=_keep(min),
    ),
    "max": Reducer(
        partial=lambda f: _field(f).max(),
        single=_field,
        merge=lambda c: pl.col(c).max(),
        add=_keep(max),
        combine=_keep(max),
    ),
}


@dataclass(frozen=True)
class State:
    """One mergeable partial: a reducer over a field (`_n` counts rows; `_sum__amount`, ...)."""

    reducer: str
    field: str | None = None

    @property
    def column(self) -> str:
        return "_n" if self.reducer == "n" else f"_{self.reducer}__{self.field}"


@dataclass(frozen=True)
class MetricKind:
    """A metric function of the catalog (`fn`): the states it needs, how they become its value
    (polars and Python), and its column type given the field's type."""

    states: Callable[[str | None], list[State]]
    finalize: Callable[[str | None], pl.Expr]
    finalize_py: Callable[[dict[str, Any], str | None], Any]
    output_type: Callable[[pa.DataType | None], pa.DataType]
    # the state this metric's column stores as is (count, sum, min, max; a mean stores none)
    holds: Callable[[str | None], State | None] = lambda _f: None


def _wide_sum(t: pa.DataType | None) -> pa.DataType:
    assert t is not None
    if pa.types.is_decimal(t):
        return pa.decimal128(38, t.scale)
    return pa.int64() if pa.types.is_integer(t) else pa.float64()


def _same(t: pa.DataType | None) -> pa.DataType:
    assert t is not None
    return t


def _or_zero(v: Any) -> Any:
    return 0 if v is None else v


def _mean(acc: dict[str, Any], f: str | None) -> float | None:
    n = _or_zero(acc.get("_n"))
    return float(_or_zero(acc.get(f"_sum__{f}"))) / n if n else None


METRICS: dict[str, MetricKind] = {
    "count": MetricKind(
        states=lambda _f: [State("n")],
        finalize=lambda _f: pl.col("_n"),
        finalize_py=lambda acc, _f: _or_zero(acc.get("_n")),
        output_type=lambda _t: pa.int64(),
        holds=lambda _f: State("n"),
    ),
    "sum": MetricKind(
        states=lambda f: [State("sum", f)],
        finalize=lambda f: pl.col(f"_sum__{f}"),
        finalize_py=lambda acc, f: _or_zero(acc.get(f"_sum__{f}")),
        output_type=_wide_sum,
        holds=lambda f: State("sum", f),
    ),
    "min": MetricKind(
        states=lambda f: [State("min", f)],
        finalize=lambda f: pl.col(f"_min__{f}"),
        finalize_py=lambda acc, f: acc.get(f"_min__{f}"),
        output_type=_same,
        holds=lambda f: State("min", f),
    ),
    "max": MetricKind(
        states=lambda f: [State("max", f)],
        finalize=lambda f: pl.col(f"_max__{f}"),
        finalize_py=lambda acc, f: acc.get(f"_max__{f}"),
        output_type=_same,
        holds=lambda f: State("max", f),
    ),
    "mean": MetricKind(
        states=lambda f: [State("n"), State("sum", f)],
        finalize=lambda f: pl.col(f"_sum__{f}").cast(pl.Float64) / pl.col("_n"),
        finalize_py=_mean,
        output_type=lambda _t: pa.float64(),
    ),
}


def states(spec: AggregateSpec) -> list[State]:
    """The partial states an aggregate needs, `_n` first, each once, in a stable order."""
    wanted = {s for m in spec.metrics for s in METRICS[m.fn].states(m.field)} | {State("n")}
    order = {"n": 0, "sum": 1, "min": 2, "max": 3}
    return sorted(wanted, key=lambda s: (order[s.reducer], s.field or ""))


def state_type(state: State, source: pa.Schema) -> pa.DataType:
    if state.reducer == "n":
        return pa.int64()
    t = source.field(state.field or "").type
    return _wide_sum(t) if state.reducer == "sum" else t


# -- 1. windows ------------------------------------------------------------------------------


def assign(rows: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """One row per (event, window) with window_start / window_end (sessions: proto-windows)."""
    w = spec.window
    t = pl.col("event_time")
    if w.type == "fixed":
        size = duration(w.size or "")
        return rows.with_columns(t.dt.truncate(size).alias("window_start")).with_columns(
            (pl.col("window_start") + size).alias("window_end")
        )
    if w.type == "sliding":
        size, period = duration(w.size or ""), duration(w.period or "")
        n = int(size / period)
        # the n starts of an event: its period's start, stepped back k periods (k = 0..n-1). An
        # exploded integer range, not a concat_list of n datetime columns: the same rows in the
        # same order, ~20x faster (concat_list of zoned datetimes was 90% of a replay)
        back = pl.col("window_start") - pl.col("_k").cast(pl.Int64) * pl.lit(period)
        return (
            rows.with_columns(t.dt.truncate(period).alias("window_start"), pl.int_ranges(0, n).alias("_k"))
            .explode("_k")
            .with_columns(back.alias("window_start"))
            .drop("_k")
            .with_columns((pl.col("window_start") + size).alias("window_end"))
        )
    gap = duration(w.gap or "")
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
    watermark = seen - duration(spec.out_of_orderness)
    deadline = pl.col("window_end") + duration(spec.allowed_lateness)
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


def _partial_exprs(spec: AggregateSpec) -> list[pl.Expr]:
    return [REDUCERS[st.reducer].partial(st.field).alias(st.column) for st in states(spec)]


def _merge_exprs(spec: AggregateSpec) -> list[pl.Expr]:
    return [REDUCERS[st.reducer].merge(st.column).alias(st.column) for st in states(spec)]


def partial_columns(spec: AggregateSpec) -> list[str]:
    return [*WINDOW, *spec.keys, *(st.column for st in states(spec))]


def partials(on_time: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Mergeable partial rows for a chunk of on-time (event, window) pairs."""
    if spec.window.type == "session":
        # each event is its own partial session (its proto-window); merge() joins them
        proto = on_time.select(
            [*WINDOW, *spec.keys]
            + [REDUCERS[st.reducer].single(st.field).alias(st.column) for st in states(spec)]
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
    exprs = [METRICS[m.fn].finalize(m.field).alias(m.column) for m in spec.metrics]
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
        *(
            pl.col(c) if c in late.columns else pl.lit(None, pl.String).alias(c)
            for c in ("event_source", "event_id")
        ),
        "event_time",
        *WINDOW,
        "watermark",
        (pl.col("watermark") - pl.col("window_end") - duration(spec.allowed_lateness))
        .dt.total_seconds()
        .alias("late_by_seconds"),
    ).sort(["event_time", "window_start"])
