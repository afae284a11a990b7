"""The analysts' read API (lake.read) on a lake made by two real ingest runs: LazyFrames per
table, time travel, consistent cuts by run and by time, and lineage from an aggregate window to
its raw events and from an event to its message, run, code and rules."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.test_ingest import ingest, produce
from tidegate.infra.pubsub import provision
from tidegate.lake import aggregates as agg
from tidegate.lake.read import Lake

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def two_runs(pubsub_emulator, tmp_path_factory):  # type: ignore[no-untyped-def]
    from tidegate.catalog import load_catalog

    catalog = load_catalog()
    project = "tg-read-api"
    provision(catalog, pubsub_emulator.address, project)
    tmp = tmp_path_factory.mktemp("read")
    lake = tmp / "lake"
    produce(pubsub_emulator, catalog, project, tmp / "a.jsonl", count=800, seed=11, invalid_rate=0.05)
    first = ingest(pubsub_emulator, catalog, project, lake, max_batch=300)
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    produce(
        pubsub_emulator,
        catalog,
        project,
        tmp / "b.jsonl",
        count=600,
        seed=12,
        invalid_rate=0.05,
        late_rate=0.05,
    )
    second = ingest(pubsub_emulator, catalog, project, lake, max_batch=300)
    return Lake(str(lake), catalog=catalog), first, second, between


def test_every_table_reads_as_a_lazyframe(two_runs) -> None:  # type: ignore[no-untyped-def]
    lake, first, second, _ = two_runs
    for table in lake.table_names():
        assert isinstance(lake.scan(table), pl.LazyFrame)
    raw = sum(lake.raw(t).select(pl.len()).collect().item() for t in lake.catalog.event_types)
    assert raw == first.raw_written + second.raw_written
    assert lake.quarantine().select(pl.len()).collect().item() == first.quarantined + second.quarantined
    assert lake.ledger().collect().height == first.batches + second.batches
    assert lake.quality().filter(pl.col("run_id") == first.run_id).collect().height > 0


def test_time_travel_by_version_and_by_time(two_runs) -> None:  # type: ignore[no-untyped-def]
    lake, first, _, between = two_runs
    orders_then = lake.raw("shop.order.placed", as_of=between).collect()
    assert set(orders_then.get_column("run_id")) == {first.run_id}
    assert lake.raw("shop.order.placed", version=0).collect().height <= orders_then.height
    assert lake.quarantine(as_of=between.isoformat()).collect().get_column("run_id").unique().to_list() == [
        first.run_id
    ]


@pytest.mark.parametrize("how", ["run", "time"])
def test_a_cut_never_mixes_raw_and_aggregates_from_different_moments(two_runs, how: str) -> None:  # type: ignore[no-untyped-def]
    lake, first, _, between = two_runs
    cut = lake.cut(run_id=first.run_id) if how == "run" else lake.cut(as_of=between)
    assert cut.consistent, cut.notes
    for spec in lake.catalog.aggregates:
        raw = cut.raw(spec.source).collect()
        assert set(raw.get_column("run_id")) == {first.run_id}  # nothing of the second run
        stored = cut.aggregate(spec.name).select(agg.value_columns(spec)).collect()
        expected = agg.compute(raw, spec)
        assert (
            stored.sort([*agg.WINDOW, *spec.keys], nulls_last=True)
            .cast(dict(expected.schema))
            .equals(expected)
        ), spec.name  # type: ignore[arg-type]
    assert set(cut.quarantine().collect().get_column("run_id")) == {first.run_id}
    assert set(cut.ledger().collect().get_column("run_id")) == {first.run_id}


def test_a_window_leads_to_the_raw_events_behind_it(two_runs) -> None:  # type: ignore[no-untyped-def]
    lake, *_ = two_runs
    windows = lake.aggregate("revenue_per_currency_1m").collect().sort("orders", descending=True)
    w = windows.row(0, named=True)
    events = lake.window_events("revenue_per_currency_1m", w["window_start"], currency=w["currency"])
    assert events.height == w["orders"]
    assert events.get_column("amount").sum() == w["revenue"]
    s = lake.aggregate("sessions_per_user").collect().sort("pages", descending=True).row(0, named=True)
    pages = lake.window_events("sessions_per_user", s["window_start"], user_id=s["user_id"])
    assert pages.height == s["pages"]
    assert pages.get_column("duration_ms").sum() == s["total_duration_ms"]


def test_an_event_leads_to_its_message_run_code_and_rules(two_runs) -> None:  # type: ignore[no-untyped-def]
    lake, first, *_ = two_runs
    row = (
        lake.raw("shop.order.placed")
        .filter(pl.col("run_id") == first.run_id)
        .head(1)
        .collect()
        .row(0, named=True)
    )
    info = lake.event_lineage("shop.order.placed", row["event_id"])
    assert info["pubsub_message_id"] == row["pubsub_message_id"]
    assert info["run_id"] == first.run_id
    assert info["git_sha"] == "test-sha"
    assert len(info["contract_fingerprint"]) == 64
    assert {r["expectation"] for r in info["expectations"]} >= {"expect_column_values_to_be_in_set"}


def test_mistakes_say_what_to_do(two_runs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tidegate.errors import TidegateError

    lake, *_ = two_runs
    with pytest.raises(TidegateError, match="unknown table"):
        lake.scan("raw/shop.order.shipped")
    with pytest.raises(TidegateError, match="no ingest run"):
        lake.cut(run_id="run-nope")
    with pytest.raises(TidegateError, match="either at the end of a run"):
        lake.cut()
    with pytest.raises(TidegateError, match="did not exist yet"):
        lake.raw("shop.order.placed", as_of="2001-01-01T00:00:00Z")
    with pytest.raises(TidegateError, match="keyed by"):
        lake.window_events("revenue_per_currency_1m", "2026-11-26T10:00:00Z", country="DE")
    with pytest.raises(TidegateError, match="does not exist yet"):
        Lake(str(tmp_path / "empty"), catalog=lake.catalog).raw("shop.order.placed")


def test_status_shows_every_table_and_the_health_figures(two_runs, pubsub_emulator, cli) -> None:  # type: ignore[no-untyped-def]
    import json

    lake, first, second, _ = two_runs
    where = ("--lake", lake.root, "--emulator", pubsub_emulator.address, "--project", "tg-read-api")
    r = cli("status", "--json", *where)
    assert r.code == 0, r.text
    report = json.loads(r.out)
    tables = {t["table"]: t for t in report["tables"]}
    assert set(tables) == set(lake.table_names())
    assert (
        sum(tables[f"raw/{t}"]["rows"] for t in lake.catalog.event_types)
        == first.raw_written + second.raw_written
    )
    led = report["ledger"]
    assert led["balanced"] is True
    assert led["received"] == first.received + second.received
    assert led["latest_run"] == second.run_id
    assert 0 < led["quarantine_rate"] < 0.2
    assert report["latency_seconds"]["events"] == second.raw_written
    assert report["latency_seconds"]["p50"] <= report["latency_seconds"]["p99"]
    dq = report["data_quality"]
    assert 0 < dq["pass_rate"] <= 1
    # one definition: the events that failed an expectation are the quarantine's expectations rows
    assert dq["failed"] == lake.quarantine().filter(pl.col("stage") == "expectations").collect().height
    assert dq["per_expectation"][0]["pass_rate"] <= dq["per_expectation"][-1]["pass_rate"]  # worst first
    assert set(report["late"]["per_aggregate"]) == {a.name for a in lake.catalog.aggregates}
    assert report["late"]["pairs"] == lake.late().collect().height
    backlog = {b["subscription"]: b["messages"] for b in report["backlog"]["subscriptions"]}
    assert backlog == dict.fromkeys(
        [*(s.subscription for s in lake.catalog.streams), lake.catalog.dead_letter.subscription], 0
    )  # both runs ingested until idle
    human = cli("status", *where)
    assert human.code == 0
    assert "✓ ledger" in human.text
    assert "aggregates/revenue_per_currency_1m" in human.text


def test_data_docs_render_the_stored_quality_results(two_runs, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake, first, _, _ = two_runs
    r = cli("docs", "--lake", lake.root, "--run", first.run_id, "--out", tmp_path / "docs")
    assert r.code == 0, r.text
    index = tmp_path / "docs" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert index.is_file()
    pages = list((index.parent / "validations").rglob("*.html"))
    groups = (
        lake.quality()
        .filter(pl.col("run_id") == first.run_id)
        .select("batch_id", "event_type")
        .unique()
        .collect()
    )
    assert len(pages) == groups.height  # one validation page per batch and event type
    text = "\n".join(p.read_text() for p in pages)
    assert "expect_column_values_to_be_in_set" in text or "values must belong to this set" in text
    assert first.run_id in text
    none = cli("docs", "--lake", lake.root, "--run", "run-nope", "--out", tmp_path / "none")
    assert none.code == 2
    assert "no data-quality results" in none.text


CHROMIUM = __import__("shutil").which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_html_report_renders_its_charts_in_a_real_browser(two_runs, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    import numpy as np
    from matplotlib.image import imread

    lake, *_ = two_runs
    page = tmp_path / "report.html"
    r = cli("report", "--lake", lake.root, "--out", page)
    assert r.code == 0, r.text
    text = page.read_text()
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", text)  # self-contained: nothing fetched
    flags = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1100,4200",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    charts = 4 + len(lake.catalog.aggregates)  # throughput, latency, quarantine, quality + aggregates
    assert dom.count('class="chart"') == charts
    assert dom.count("<svg") >= charts
    pixels = (imread(shot)[:, :, :3] * 255).astype(int)

    def painted(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < 40).sum())

    # each chart's ink, in matplotlib's tab colours: the browser drew the SVGs
    for colour in ((31, 119, 180), (255, 127, 14), (148, 103, 189), (44, 160, 44), (214, 39, 40)):
        assert painted(colour) > 100, (colour, painted(colour))
