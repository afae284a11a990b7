"""Aggregates as a projection of raw history, on real Delta tables (no Beam, no Pub/Sub):
after any sequence of raw commits, with out-of-order, late, duplicate and session-bridging
events and projections skipped (a crash between the raw and the aggregate commit), every
aggregate table equals a recompute from raw and the late ledger holds exactly the late pairs."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tidegate.catalog import Catalog
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.projection import Projector
from tidegate.lake.rows import stamp_seen_max_event_time
from tidegate.lake.tables import aggregate_uri, late_uri, raw_schema, raw_uri
from tidegate.lake.writer import insert_new

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # the commit clock (the watermark cap never bites here)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def commit_raw(lake: str, registry, event_type: str, rows: list[dict]) -> int | None:  # type: ignore[no-untyped-def,type-arg]
    """Commit rows to a raw table the way ingestion does (insert-only, stamped watermark base)."""
    schema = raw_schema(registry.types[event_type])
    filled = {f.name: [r.get(f.name) for r in rows] for f in schema}
    filled["event_date"] = [r["event_time"].date() for r in rows]
    for name, default in (
        ("event_source", "test"),
        ("schema_version", 1),
        ("pubsub_message_id", "m"),
        ("subscription", "s"),
        ("ingest_time", datetime.now(UTC)),  # as ingestion stamps it: just before the commit
        ("run_id", "r"),
        ("batch_id", "b"),
    ):
        filled[name] = [default] * len(rows)
    table = pa.table({f.name: pa.array(filled[f.name], f.type) for f in schema}, schema=schema)
    return insert_new(
        raw_uri(lake, event_type),
        table,
        keys=["event_id"],
        partition_by=["event_date"],
        prune_on="event_date",
        prepare=lambda t, b: stamp_seen_max_event_time(t, b, NOW),
    ).version


def order(i: int, t: float, currency: str = "EUR", amount: str = "10.00") -> dict:  # type: ignore[type-arg]
    return {
        "event_id": f"o{i}",
        "event_time": at(t),
        "order_id": f"ord_{i}",
        "customer_id": "c",
        "customer_email": "a@b.c",
        "amount": Decimal(amount),
        "currency": currency,
        "item_count": 1,
        "country": "DE",
        "placed_at": at(t),
    }


def view(i: int, t: float, user: str | None = "u1", url: str = "/", ms: int = 100) -> dict:  # type: ignore[type-arg]
    return {
        "event_id": f"v{i}",
        "event_time": at(t),
        "session_id": "s",
        "user_id": user,
        "url": url,
        "duration_ms": ms,
    }


@pytest.fixture
def projector(tmp_path: Path, catalog: Catalog, registry) -> Projector:  # type: ignore[no-untyped-def]
    return Projector(
        catalog, registry, str(tmp_path / "lake"), run_id="run-test", code_version="0", git_sha="x"
    )


def assert_parity(p: Projector, registry) -> None:  # type: ignore[no-untyped-def]
    for spec in p.catalog.aggregates:
        uri = raw_uri(p.lake, spec.source)
        if not Path(uri).exists():
            assert not Path(aggregate_uri(p.lake, spec.name)).exists()
            continue
        raw = pl.read_delta(uri)
        expected = agg.compute(raw, spec)
        got = pl.read_delta(aggregate_uri(p.lake, spec.name)).select(agg.value_columns(spec))
        got = got.sort([*agg.WINDOW, *spec.keys], nulls_last=True)
        assert got.cast(expected.schema).equals(expected), spec.name  # type: ignore[arg-type]
        assert (
            DeltaTable(aggregate_uri(p.lake, spec.name)).transaction_version(app_id(spec))
            == DeltaTable(uri).version()
        )
        late = agg.late_pairs(raw, spec).select("event_id", "window_start").sort("event_id", "window_start")
        ledger = (
            pl.read_delta(late_uri(p.lake))
            .filter(pl.col("aggregate") == spec.name)
            .select("event_id", "window_start")
            .sort("event_id", "window_start")
            if Path(late_uri(p.lake)).exists()
            else late.head(0)
        )
        assert ledger.equals(late), spec.name


def fields_of(registry, event_type: str) -> set[str]:  # type: ignore[no-untyped-def]
    return set(raw_schema(registry.types[event_type]).names)


def test_helpers_fill_every_payload_field(registry) -> None:  # type: ignore[no-untyped-def]
    assert set(order(1, 0)) - {"event_id", "event_time"} <= fields_of(registry, "shop.order.placed")
    assert set(view(1, 0)) - {"event_id", "event_time"} <= fields_of(registry, "shop.page.viewed")


def test_the_first_projection_builds_every_aggregate_and_records_the_raw_version(projector, registry) -> None:  # type: ignore[no-untyped-def]
    commit_raw(projector.lake, registry, "shop.order.placed", [order(1, 5), order(2, 65, "USD", "3.50")])
    commit_raw(projector.lake, registry, "shop.page.viewed", [view(1, 0), view(2, 90, url="/a")])
    results = projector.project_all()
    assert {r.aggregate for r in results} == {a.name for a in projector.catalog.aggregates}
    assert_parity(projector, registry)
    assert projector.project_all() == []  # up to date: nothing to do, nothing committed
    rows = pl.read_delta(aggregate_uri(projector.lake, "revenue_per_currency_1m")).sort("window_start")
    assert rows.select("currency", "orders", "revenue", "revision", "raw_version", "written_by").rows() == [
        ("EUR", 1, Decimal("10.00"), 1, 0, "projection"),
        ("USD", 1, Decimal("3.50"), 1, 0, "projection"),
    ]


def test_an_out_of_order_event_restates_its_window(projector, registry) -> None:  # type: ignore[no-untyped-def]
    lake = projector.lake
    commit_raw(lake, registry, "shop.order.placed", [order(1, 5), order(2, 200)])
    projector.project_all()
    commit_raw(lake, registry, "shop.order.placed", [order(3, 30, amount="5.00")])  # 170 s behind: on time
    projector.project_all()
    rows = pl.read_delta(aggregate_uri(lake, "revenue_per_currency_1m")).sort("window_start")
    assert rows.select("window_start", "orders", "revenue", "revision").rows() == [
        (at(0), 2, Decimal("15.00"), 2),  # restated
        (at(180), 1, Decimal("10.00"), 1),  # untouched
    ]
    assert_parity(projector, registry)


def test_an_event_later_than_the_allowed_lateness_goes_to_the_late_ledger(projector, registry) -> None:  # type: ignore[no-untyped-def]
    lake = projector.lake
    commit_raw(lake, registry, "shop.order.placed", [order(1, 3600)])
    projector.project_all()
    # watermark = 3600 - 2m = 3480; window [2760, 2820) + 10m lateness = 3420 <= 3480 -> late
    commit_raw(lake, registry, "shop.order.placed", [order(2, 2790), order(3, 2900)])
    projector.project_all()
    ledger = pl.read_delta(late_uri(lake)).filter(pl.col("aggregate") == "revenue_per_currency_1m")
    assert ledger.select("event_id", "window_start", "watermark", "late_by_seconds").rows() == [
        ("o2", at(2760), at(3480), 60.0)
    ]
    rows = pl.read_delta(aggregate_uri(lake, "revenue_per_currency_1m")).sort("window_start")
    assert rows.select("window_start", "orders").rows() == [(at(2880), 1), (at(3600), 1)]  # o3 counted
    assert_parity(projector, registry)


def test_a_bridging_event_merges_two_sessions_into_one_row(projector, registry) -> None:  # type: ignore[no-untyped-def]
    lake = projector.lake
    commit_raw(lake, registry, "shop.page.viewed", [view(1, 0), view(2, 600), view(3, 3000), view(4, 3100)])
    projector.project_all()
    sessions = pl.read_delta(aggregate_uri(lake, "sessions_per_user")).sort("window_start")
    assert sessions.select("window_start", "pages").rows() == [(at(0), 2), (at(3000), 2)]
    commit_raw(lake, registry, "shop.page.viewed", [view(5, 1900)])  # 1300 s after 600, 1100 s before 3000
    projector.project_all()
    sessions = pl.read_delta(aggregate_uri(lake, "sessions_per_user")).sort("window_start")
    assert sessions.select("window_start", "window_end", "pages", "total_duration_ms").rows() == [
        (at(0), at(3100 + 1800), 5, 500)
    ]
    assert_parity(projector, registry)


def test_random_histories_keep_parity_whatever_arrives_late_twice_or_across_a_crash(  # type: ignore[no-untyped-def]
    tmp_path: Path, catalog: Catalog, registry
) -> None:
    rng = random.Random(7)
    for trial in range(3):
        p = Projector(
            catalog, registry, str(tmp_path / f"lake{trial}"), run_id="r", code_version="0", git_sha="x"
        )
        clock, seq, sent = 0.0, 0, []
        for _ in range(12):
            orders_batch, views_batch = [], []
            for _ in range(rng.randint(1, 40)):
                seq += 1
                clock += rng.uniform(0, 40)
                r = rng.random()
                t = clock - (rng.uniform(0, 120) if r < 0.2 else rng.uniform(1200, 8000) if r < 0.3 else 0)
                if rng.random() < 0.5:
                    orders_batch.append(
                        order(
                            seq,
                            t,
                            rng.choice(["EUR", "USD", "GBP"]),
                            f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
                        )
                    )
                else:
                    views_batch.append(
                        view(
                            seq,
                            t,
                            rng.choice(["u1", "u2", "u3", None]),
                            rng.choice(["/", "/a"]),
                            rng.randint(0, 9000),
                        )
                    )
                sent.append(seq)
            if sent and rng.random() < 0.2:  # a duplicate of an earlier event: same id, lands once
                orders_batch.append(order(rng.choice(sent), 0))
            for event_type, batch in (("shop.order.placed", orders_batch), ("shop.page.viewed", views_batch)):
                if batch:
                    commit_raw(p.lake, registry, event_type, batch)
            if rng.random() < 0.7:  # otherwise: "crashed" before the projection; the next one heals
                p.project_all()
        p.project_all()
        assert_parity(p, registry)
        late = pl.read_delta(late_uri(p.lake))
        assert late.height > 0  # the histories did produce late events


def test_replay_rebuilds_every_aggregate_equal_to_the_projection(projector, registry, catalog) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.replay import replay

    lake = projector.lake
    rng = random.Random(3)
    for b in range(4):
        commit_raw(
            lake,
            registry,
            "shop.order.placed",
            [
                order(b * 100 + i, b * 900 + rng.uniform(-1500, 60), rng.choice(["EUR", "USD"]))
                for i in range(30)
            ],
        )
        commit_raw(
            lake,
            registry,
            "shop.page.viewed",
            [
                view(b * 100 + i, b * 900 + rng.uniform(-4000, 60), rng.choice(["u1", "u2", None]))
                for i in range(30)
            ],
        )
        projector.project_all()
    before = {
        s.name: pl.read_delta(aggregate_uri(lake, s.name)).select(agg.value_columns(s))
        for s in catalog.aggregates
    }
    ledger_before = pl.read_delta(late_uri(lake)).height
    assert ledger_before > 0
    for spec in catalog.aggregates:
        shutil.rmtree(aggregate_uri(lake, spec.name))  # lost: rebuild it from history alone
        result = replay(
            catalog, lake, spec.name, run_id="replay-1", code_version="0", git_sha="x", group_rows=40
        )
        assert result.files > 1
        assert result.events_read == pl.read_delta(raw_uri(lake, spec.source)).height
        after = pl.read_delta(aggregate_uri(lake, spec.name))
        assert set(after.get_column("written_by")) == {"replay"}
        assert (
            after.select(agg.value_columns(spec))
            .sort(agg.value_columns(spec)[: 2 + len(spec.keys)], nulls_last=True)
            .equals(before[spec.name].sort(agg.value_columns(spec)[: 2 + len(spec.keys)], nulls_last=True))
        ), spec.name
    assert pl.read_delta(late_uri(lake)).height == ledger_before  # the same late pairs, not twice
    assert_parity(projector, registry)
    commit_raw(lake, registry, "shop.order.placed", [order(999, 3000)])
    projector.project_all()  # the projection resumes after the replayed version
    assert_parity(projector, registry)


def test_a_ranged_replay_replaces_only_the_windows_starting_in_the_range(
    projector, registry, catalog
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.replay import replay

    lake = projector.lake
    commit_raw(
        lake, registry, "shop.order.placed", [order(i, i * 30.0) for i in range(10)]
    )  # windows 0..4 min
    projector.project_all()
    uri = aggregate_uri(lake, "revenue_per_currency_1m")
    replay(
        catalog,
        lake,
        "revenue_per_currency_1m",
        since=at(60).isoformat(),
        until=at(180).isoformat(),
        run_id="replay-2",
        code_version="0",
        git_sha="x",
    )
    rows = pl.read_delta(uri).sort("window_start")
    assert rows.select("window_start", "orders", "written_by").rows() == [
        (at(0), 2, "projection"),
        (at(60), 2, "replay"),
        (at(120), 2, "replay"),
        (at(180), 2, "projection"),
        (at(240), 2, "projection"),
    ]
    assert_parity(projector, registry)


def test_compacting_raw_history_between_projections_counts_nothing_twice(projector, registry) -> None:  # type: ignore[no-untyped-def]
    lake = projector.lake
    for b in range(3):
        commit_raw(lake, registry, "shop.order.placed", [order(b * 10 + i, b * 40 + i) for i in range(10)])
        commit_raw(lake, registry, "shop.page.viewed", [view(b * 10 + i, b * 40 + i * 50) for i in range(10)])
        projector.project_all()
    for event_type in ("shop.order.placed", "shop.page.viewed"):
        DeltaTable(raw_uri(lake, event_type)).optimize.compact()  # what `tidegate maintain` does
    commit_raw(lake, registry, "shop.order.placed", [order(99, 45)])
    results = projector.project_all()  # rewritten files hold old rows: only the new one counts
    assert {r.aggregate: r.new_rows for r in results}["revenue_per_currency_1m"] == 1
    assert_parity(projector, registry)
    assert pl.read_delta(aggregate_uri(lake, "revenue_per_currency_1m")).get_column("orders").sum() == 31


def test_compaction_that_swallows_unprojected_commits_still_counts_them_once(projector, registry) -> None:  # type: ignore[no-untyped-def]
    lake = projector.lake
    commit_raw(lake, registry, "shop.order.placed", [order(i, i) for i in range(10)])
    projector.project_all()
    for b in range(1, 4):  # committed, never projected, then compacted with the projected rows
        commit_raw(lake, registry, "shop.order.placed", [order(b * 10 + i, b * 10 + i) for i in range(10)])
    DeltaTable(raw_uri(lake, "shop.order.placed")).optimize.compact()
    commit_raw(lake, registry, "shop.order.placed", [order(77, 70)])
    results = {r.aggregate: r for r in projector.project_all({"shop.order.placed"})}
    assert results["revenue_per_currency_1m"].new_rows == 31  # not a rebuild of all 41
    assert_parity(projector, registry)
    assert pl.read_delta(aggregate_uri(lake, "revenue_per_currency_1m")).get_column("orders").sum() == 41


def test_verify_names_the_windows_that_differ_from_raw(projector, registry, catalog) -> None:  # type: ignore[no-untyped-def]
    from tidegate.lake.verify import verify

    lake = projector.lake
    commit_raw(lake, registry, "shop.order.placed", [order(1, 5), order(2, 65, "USD", "3.50")])
    projector.project_all()
    assert verify(lake, ["shop.order.placed"], aggregates=catalog.aggregates).ok
    DeltaTable(aggregate_uri(lake, "revenue_per_currency_1m")).update(
        predicate="currency = 'USD'", updates={"revenue": "CAST(4.50 AS DECIMAL(38, 2))", "orders": "2"}
    )
    report = verify(lake, ["shop.order.placed"], aggregates=catalog.aggregates)
    assert not report.ok
    assert any(
        "revenue_per_currency_1m: window" in p
        and "currency=USD" in p
        and "revenue: table 4.50 != raw 3.50" in p
        and "orders: table 2 != raw 1" in p
        for p in report.problems
    ), report.problems
