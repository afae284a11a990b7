"""The aggregates' combine logic (lake.aggregates.compute) on real frames: fixed, sliding and
session windows by event time, out-of-order events, sessions merged by a bridging event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import CONTRACTS_DIR
from tidegate.catalog import AggregateSpec, load_catalog
from tidegate.errors import ConfigError
from tidegate.lake.aggregates import check_aggregates, compute, metric_columns

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def orders(*rows: tuple[float, str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_time": [at(s) for s, _, _ in rows],
            "currency": [c for _, c, _ in rows],
            "amount": [Decimal(a) for _, _, a in rows],
        },
        schema={"event_time": pl.Datetime("us", "UTC"), "currency": pl.String, "amount": pl.Decimal(12, 2)},
    )


def test_shipped_aggregates_fit_their_contracts(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    assert [a.name for a in catalog.aggregates] == [
        "revenue_per_currency_1m",
        "page_views_per_url_5m",
        "sessions_per_user",
    ]
    check_aggregates(catalog, registry)


def test_fixed_windows_group_by_event_time_whatever_the_arrival_order(catalog) -> None:  # type: ignore[no-untyped-def]
    spec = catalog.aggregate("revenue_per_currency_1m")
    rows = orders(
        (70, "EUR", "5.00"),
        (10, "EUR", "1.50"),
        (59.999, "EUR", "2.25"),
        (20, "USD", "9.99"),
        (61, "EUR", "1.00"),
    )
    out = compute(rows, spec)
    assert out.columns == [
        "window_start",
        "window_end",
        "currency",
        "orders",
        "revenue",
        "min_amount",
        "max_amount",
        "mean_amount",
    ]
    assert out.rows() == [
        (at(0), at(60), "EUR", 2, Decimal("3.75"), Decimal("1.50"), Decimal("2.25"), 1.875),
        (at(0), at(60), "USD", 1, Decimal("9.99"), Decimal("9.99"), Decimal("9.99"), 9.99),
        (at(60), at(120), "EUR", 2, Decimal("6.00"), Decimal("1.00"), Decimal("5.00"), 3.0),
    ]
    assert compute(rows.reverse(), spec).equals(out)  # order of arrival never matters


def test_sliding_windows_count_an_event_in_every_window_that_covers_it(catalog) -> None:  # type: ignore[no-untyped-def]
    spec = catalog.aggregate("page_views_per_url_5m")  # 5 minutes every minute
    rows = pl.DataFrame({"event_time": [at(150)], "url": ["https://shop.example.com/"]})
    out = compute(rows, spec)
    assert out.get_column("window_start").to_list() == [at(-120), at(-60), at(0), at(60), at(120)]
    assert set(out.get_column("views")) == {1}
    assert all(e - s == timedelta(minutes=5) for s, e in out.select("window_start", "window_end").rows())


def test_sessions_split_on_the_gap_and_merge_when_an_event_bridges_them(catalog) -> None:  # type: ignore[no-untyped-def]
    spec = catalog.aggregate("sessions_per_user")  # 30-minute gap
    base = pl.DataFrame(
        {
            "event_time": [at(0), at(600), at(3600), at(4000), at(0)],
            "user_id": ["cus_A", "cus_A", "cus_A", "cus_A", None],
            "duration_ms": [1000, 2000, 3000, 4000, 5000],
        },
        schema={"event_time": pl.Datetime("us", "UTC"), "user_id": pl.String, "duration_ms": pl.Int64},
    )
    two = compute(base, spec)
    assert two.rows() == [
        (at(0), at(600 + 1800), "cus_A", 2, 3000),
        (at(3600), at(4000 + 1800), "cus_A", 2, 7000),
    ]  # the anonymous view (user_id null) is in no session
    bridge = pl.DataFrame(
        {"event_time": [at(2200)], "user_id": ["cus_A"], "duration_ms": [500]}, schema=base.schema
    )
    merged = compute(pl.concat([base, bridge]), spec)
    assert merged.rows() == [(at(0), at(4000 + 1800), "cus_A", 5, 10500)]


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        ("keys: [colour]", "key 'colour' is not a column"),
        ("metrics: [{fn: sum, field: currency}]", "sum needs a numeric field"),
        ("metrics: [{fn: median, field: amount}]", "not one of count, sum, min, max, mean"),
        ("window: {type: sliding, size: 5m, period: 2m}", "must be a multiple"),
        ("window: {type: fixed, gap: 5m}", "takes exactly"),
        ("source: shop.order.shipped", "is not a stream of the catalog"),
    ],
)
def test_aggregate_mistakes_are_reported(tmp_path: Path, registry, aggregate: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    base = {
        "source": "source: shop.order.placed",
        "window": "window: {type: fixed, size: 1m}",
        "keys": "keys: [currency]",
        "metrics": "metrics: [{fn: count}]",
    }
    base[aggregate.split(":", 1)[0]] = aggregate
    body = "\n    ".join(base.values())
    p = tmp_path / "catalog.yaml"
    p.write_text(
        f"project: local-lake\ncontracts: {CONTRACTS_DIR}\nstreams:\n"
        "  - {event_type: shop.order.placed, topic: shop-orders, subscription: shop-orders-tidegate}\n"
        f"aggregates:\n  - name: test_agg\n    {body}\n"
    )
    from tidegate.expectations.contracts import ContractRegistry

    def load_and_check() -> None:
        catalog = load_catalog(p)
        check_aggregates(catalog, ContractRegistry.from_catalog(catalog))

    with pytest.raises(ConfigError, match=expected):
        load_and_check()


def test_spec_column_names_default_from_fn_and_field() -> None:
    spec = AggregateSpec(
        name="x_agg",
        source="a.b",
        window={"type": "fixed", "size": "1m"},
        metrics=[{"fn": "sum", "field": "amount"}, {"fn": "count"}],
    )  # type: ignore[arg-type]
    assert [m.column for m in spec.metrics] == ["sum_amount", "count"]


def test_every_metric_the_catalog_accepts_has_one_definition() -> None:
    from tidegate.catalog import METRIC_FNS
    from tidegate.lake.aggregates import METRICS

    assert set(METRICS) == set(METRIC_FNS)


def test_beams_combine_fn_and_the_polars_path_agree_on_every_metric_nulls_included() -> None:
    """Streaming mode's CombineFn and the polars partial/merge/finalize come from the same
    registry: every metric kind, over a group with nulls, split into bundles Beam merges."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from tidegate.transforms.aggregate import AggregateCombineFn

    spec = AggregateSpec.model_validate(
        {
            "name": "all_metrics",
            "source": "shop.order.placed",
            "keys": ["currency"],
            "window": {"type": "fixed", "size": "1h"},
            "metrics": [
                {"fn": "count"},
                {"fn": "sum", "field": "amount"},
                {"fn": "min", "field": "amount"},
                {"fn": "max", "field": "amount"},
                {"fn": "mean", "field": "amount"},
                {"fn": "mean", "field": "items", "name": "mean_items"},  # its count is state only
            ],
        }
    )
    amounts = [Decimal("10.00"), None, Decimal("2.50"), Decimal("7.25"), None, Decimal("0.00")]
    items = [1, 2, None, 4, 5, 6]
    frame = pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(6)],
            "event_time": [at(i) for i in range(6)],
            "seen_max_event_time": [None] * 6,
            "currency": ["EUR"] * 6,
            "amount": amounts,
            "items": items,
        },
        schema={
            "event_id": pl.String,
            "event_time": pl.Datetime("us", "UTC"),
            "seen_max_event_time": pl.Datetime("us", "UTC"),
            "currency": pl.String,
            "amount": pl.Decimal(12, 2),
            "items": pl.Int64,
        },
    )
    # compute() also returns `_sum__items`: merge state the table keeps because no declared
    # metric holds it; the CombineFn's output is the declared metrics
    expected = compute(frame, spec).select(metric_columns(spec)).to_dicts()[0]
    assert expected["count"] == 6
    assert expected["sum_amount"] == Decimal("19.75")
    rows = [{"amount": a, "items": n} for a, n in zip(amounts, items, strict=True)]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(rows, reshuffle=False)
            | beam.CombineGlobally(AggregateCombineFn(spec.model_dump_json())).without_defaults()
        )
        assert_that(out, equal_to([expected]))
