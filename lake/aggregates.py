"""The combine logic of the catalog's aggregates, in polars (no Beam).

One function, `compute(rows, spec)`, turns raw-history rows into window rows
(`window_start`, `window_end`, the keys, the metrics). It is the single definition of what an
aggregate *is*: the local projection after each raw commit, `tidegate replay` and the parity
check in `tidegate verify` all call it, so they cannot disagree.

Windows are by event time (`event_time`, from ce-time), aligned to the Unix epoch:
- fixed `size`: each event in [floor(t, size), +size);
- sliding `size` every `period`: each event in the size/period windows that cover it;
- session `gap`: per key, events closer than `gap` belong together; a session spans
  [first event, last event + gap). Rows whose key is null are left out of session windows
  (an anonymous visitor has no identity to sessionize); fixed and sliding windows keep null
  keys as their own group.

    uv run python -c "import polars as pl; from lake.aggregates import compute; \
        from tidegate.catalog import load_catalog; c = load_catalog(); \
        print(compute(pl.read_delta('.tidegate/demo/lake/raw/shop.order.placed'), c.aggregates[0]))"
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pyarrow as pa

from expectations.contracts import ContractRegistry
from lake.tables import raw_schema
from tidegate.catalog import AggregateSpec, Catalog
from tidegate.errors import ConfigError

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


def _metrics(spec: AggregateSpec) -> list[pl.Expr]:
    out = []
    for m in spec.metrics:
        field = m.field or ""
        if m.fn == "count":
            expr = pl.len().cast(pl.Int64)
        elif m.fn == "mean":
            # sum / count, not a float mean: the same exact inputs always give the same value
            expr = pl.col(field).sum().cast(pl.Float64) / pl.len()
        else:
            expr = getattr(pl.col(field), m.fn)()
        out.append(expr.alias(m.column))
    return out


def _sort(df: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    return df.sort(["window_start", *spec.keys], nulls_last=True)


def compute(rows: pl.DataFrame, spec: AggregateSpec) -> pl.DataFrame:
    """Window rows for `rows` (raw history of spec.source), sorted by window and keys."""
    w = spec.window
    if w.type == "fixed":
        size = timedelta(seconds=w.seconds("size"))
        grouped = rows.with_columns(pl.col("event_time").dt.truncate(size).alias("window_start"))
        out = grouped.group_by(["window_start", *spec.keys]).agg(_metrics(spec))
        return _sort(out.with_columns((pl.col("window_start") + size).alias("window_end")), spec).select(
            ["window_start", "window_end", *spec.keys, *(m.column for m in spec.metrics)]
        )
    if w.type == "sliding":
        size, period = timedelta(seconds=w.seconds("size")), timedelta(seconds=w.seconds("period"))
        n = int(size / period)
        starts = rows.with_columns(
            pl.concat_list([pl.col("event_time").dt.truncate(period) - period * k for k in range(n)]).alias(
                "window_start"
            )
        ).explode("window_start")
        out = starts.group_by(["window_start", *spec.keys]).agg(_metrics(spec))
        return _sort(out.with_columns((pl.col("window_start") + size).alias("window_end")), spec).select(
            ["window_start", "window_end", *spec.keys, *(m.column for m in spec.metrics)]
        )
    gap = timedelta(seconds=w.seconds("gap"))
    keyed = rows.drop_nulls(spec.keys) if spec.keys else rows
    ordered = keyed.sort([*spec.keys, "event_time"])
    new_session = (pl.col("event_time").diff() > gap).fill_null(True)
    if spec.keys:  # a new key starts a new session too (rows are sorted by key, then time)
        boundary = pl.any_horizontal([(pl.col(k) != pl.col(k).shift(1)).fill_null(True) for k in spec.keys])
        new_session = boundary | new_session
    sessions = ordered.with_columns(new_session.cum_sum().alias("_session"))
    out = sessions.group_by(["_session", *spec.keys]).agg(
        [
            pl.col("event_time").min().alias("window_start"),
            (pl.col("event_time").max() + gap).alias("window_end"),
            *_metrics(spec),
        ]
    )
    return _sort(out.drop("_session"), spec).select(
        ["window_start", "window_end", *spec.keys, *(m.column for m in spec.metrics)]
    )
