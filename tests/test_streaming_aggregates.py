"""Streaming aggregates (Beam windows, watermark trigger with early and late firings,
accumulating panes) on TestStream: for each window kind, out-of-order, late-within-lateness and
too-late events; the newest pane of every window equals lake.aggregates.compute over the same
rows, and too-late pairs come out on the late output, exactly as the local projection decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that

from tidegate.catalog import Catalog
from tidegate.lake import aggregates as agg
from tidegate.transforms.aggregate import ComputeWindowedAggregates, StreamingAggregateConfig

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
_SINK: dict[str, list[Any]] = {}  # the runner pickles callables: collect through a module global


class Collect:
    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, items: list[Any]) -> None:
        _SINK.setdefault(self.key, []).extend(items)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def run(spec: Any, steps: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[pl.DataFrame]]:
    """Feed commits of rows / watermark moves through ComputeWindowedAggregates (each "rows" step
    is one raw commit, as the raw writer hands them over); collect panes and late pairs."""
    import uuid

    key = uuid.uuid4().hex
    stream = BeamTestStream()
    for kind, value in steps:
        if kind == "rows":
            stream = stream.add_elements([(spec.source, value)])
        else:
            stream = stream.advance_watermark_to(value.timestamp())
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = p | stream | ComputeWindowedAggregates(StreamingAggregateConfig(spec.model_dump_json(), 3600))
        assert_that(out.panes, Collect(key + "panes"), label="CollectPanes")
        assert_that(out.late, Collect(key + "late"), label="CollectLate")
    return _SINK.pop(key + "panes", []), _SINK.pop(key + "late", [])


def newest(panes: list[dict[str, Any]], spec: Any) -> pl.DataFrame:
    """The row a guarded upsert keeps per (window, keys): the highest pane index."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for p in panes:
        k = (p["window_start"], *(p[c] for c in spec.keys))
        if k not in best or p["revision"] > best[k]["revision"]:
            best[k] = p
    rows = [{c: r[c] for c in agg.value_columns(spec)} for r in best.values()]
    return pl.DataFrame(rows).sort([*agg.WINDOW, *spec.keys], nulls_last=True)


def expected(rows: list[dict[str, Any]], spec: Any, schema: dict[str, Any]) -> pl.DataFrame:
    return agg.compute(pl.DataFrame(rows, schema=schema), spec)


def sink(tmp_path: Path, spec: Any, panes: list[dict[str, Any]]) -> pl.DataFrame:
    """Apply panes one bundle at a time to a real Delta table through the streaming sink."""
    from tidegate.catalog import load_catalog
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.lake.aggregate_writes import apply_panes
    from tidegate.lake.tables import aggregate_uri, raw_schema

    registry = ContractRegistry.from_catalog(load_catalog())
    schema = agg.output_schema(spec, raw_schema(registry.types[spec.source]))
    lake = str(tmp_path / "lake")
    for pane in panes:
        apply_panes(lake, spec, schema, [pane], run_id="stream-test", metadata={})
    table = pl.read_delta(aggregate_uri(lake, spec.name))
    return table.select(agg.value_columns(spec)).sort([*agg.WINDOW, *spec.keys], nulls_last=True)


ORDER_SCHEMA = {
    "event_id": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "seen_max_event_time": pl.Datetime("us", "UTC"),
    "currency": pl.String,
    "amount": pl.Decimal(12, 2),
}
VIEW_SCHEMA = {
    "event_id": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "seen_max_event_time": pl.Datetime("us", "UTC"),
    "url": pl.String,
    "user_id": pl.String,
    "duration_ms": pl.Int64,
}


def order(i: int, t: float, seen: float | None, amount: str, currency: str = "EUR") -> dict[str, Any]:
    return {
        "event_id": f"o{i}",
        "event_time": at(t),
        "seen_max_event_time": at(seen) if seen is not None else None,
        "currency": currency,
        "amount": Decimal(amount),
    }


def view(i: int, t: float, seen: float | None, user: str | None = "u1", url: str = "/") -> dict[str, Any]:
    return {
        "event_id": f"v{i}",
        "event_time": at(t),
        "seen_max_event_time": at(seen) if seen is not None else None,
        "url": url,
        "user_id": user,
        "duration_ms": 100 * i,
    }


def test_fixed_windows_restate_late_panes_and_send_too_late_events_to_the_ledger(
    catalog: Catalog, tmp_path: Path
) -> None:
    spec = catalog.aggregate("revenue_per_currency_1m")  # 1m windows, lateness 10m, out-of-order 2m
    first = [order(1, 10, None, "1.00"), order(2, 20, None, "2.00"), order(3, 70, 20, "4.00", "USD")]
    out_of_order = [order(4, 30, 100, "5.00")]  # after the window fired: a LATE pane restates it
    too_late = [order(5, 15, 1000, "7.00")]  # watermark 1000-120 >= window end 60 + 600: excluded
    panes, late = run(
        spec,
        [
            ("rows", first),
            ("watermark", at(90)),
            ("rows", out_of_order),
            ("watermark", at(200)),
            ("rows", too_late),
        ],
    )
    eur = [p for p in panes if p["window_start"] == at(0) and p["currency"] == "EUR"]
    assert [(p["pane_timing"], p["orders"]) for p in sorted(eur, key=lambda p: p["revision"])] == [
        ("ON_TIME", 2),
        ("LATE", 3),
    ]
    want = expected(first + out_of_order + too_late, spec, ORDER_SCHEMA)
    assert newest(panes, spec).equals(want)
    # the Delta sink keeps the newest pane whatever order panes (or a retried bundle) arrive in
    assert sink(tmp_path, spec, panes).equals(want)
    assert sink(tmp_path, spec, list(reversed(panes))).equals(want)
    assert sink(tmp_path, spec, panes).equals(want)
    ledger = pl.concat(late)
    assert ledger.select("event_id", "window_start").rows() == [("o5", at(0))]


def test_sliding_windows_exclude_only_the_windows_an_event_is_too_late_for(catalog: Catalog) -> None:
    spec = catalog.aggregate("page_views_per_url_5m")  # 5m every 1m, lateness 10m, out-of-order 2m
    rows = [view(1, 250, None), view(2, 400, None, url="/a")]
    # watermark 1060 - 120 = 940: window [0, 300) closed at 300 + 600 = 900 <= 940 (late),
    # [60, 360) closes at 960 > 940 (still open): the event counts there and in the later ones
    straddling = [view(3, 250, 1060)]
    panes, late = run(spec, [("rows", rows), ("watermark", at(700)), ("rows", straddling)])
    assert newest(panes, spec).equals(expected(rows + straddling, spec, VIEW_SCHEMA))
    assert pl.concat(late).select("event_id", "window_start").rows() == [("v3", at(0))]
    final = newest(panes, spec).filter(pl.col("url") == "/")
    assert final.select("window_start", "views").rows() == [
        (at(0), 1),
        (at(60), 2),
        (at(120), 2),
        (at(180), 2),
        (at(240), 2),
    ]


def test_sessions_merge_when_a_late_event_bridges_them_and_too_late_ones_are_left_out(
    catalog: Catalog, tmp_path: Path
) -> None:
    spec = catalog.aggregate("sessions_per_user")  # gap 30m, lateness 1h, out-of-order 2m
    rows = [view(1, 0, None), view(2, 600, None), view(3, 3000, None), view(4, 3100, None, user=None)]
    bridge = [view(5, 1900, 3100)]  # 1300 s after 600, 1100 s before 3000: one session now
    too_late = [view(6, 10, 10_000)]  # watermark 9880 >= 10 + 1800 + 3600
    panes, late = run(
        spec,
        [
            ("rows", rows),
            ("watermark", at(5000)),
            ("rows", bridge),
            ("watermark", at(9000)),
            ("rows", too_late),
        ],
    )
    want = expected(rows + bridge + too_late, spec, VIEW_SCHEMA)
    assert want.select("window_start", "window_end", "pages", "total_duration_ms").rows() == [
        (at(0), at(3000 + 1800), 4, 100 + 200 + 300 + 500)
    ]
    # the pre-merge sessions were emitted as panes too; the sink replaces them with the merged one
    assert [p["pages"] for p in panes] == [2, 1, 4]
    assert sink(tmp_path, spec, panes).equals(want)
    assert pl.concat(late).select("event_id").rows() == [("v6",)]
