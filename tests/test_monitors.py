"""Stream monitors on real Delta tables (no emulator): the producer's orders, one event-time
window (1 minute) at a time, landed through the real Beam batch, then judged by
tidegate.ops.monitors. Traffic that drops to zero, spikes 10x, turns 20% bad or loses a column's
values is flagged once, at the right window; normal traffic raises nothing; a stale stream is
flagged by freshness; evaluating again never records a breach twice."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from tidegate.catalog import Catalog, load_catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.monitor_rows import recorded_breaches
from tidegate.lake.read import Lake
from tidegate.ops.monitors import LOG_EVENT, Breach, MonitorTicker, evaluate, record
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "tidegate" / "infra" / "catalog.yaml"
CONTRACTS = ROOT / "tidegate" / "expectations" / "contracts"
ORDERS = "shop.order.placed"
W = timedelta(minutes=1)
PER_WINDOW = 20
# small windows and baselines, so a test needs minutes of event time, not hours
MONITORS_SPEC: dict[str, Any] = {
    "volume": {
        "window": "1m",
        "baseline_windows": 5,
        "drop_below": 0.2,
        "spike_above": 5.0,
        "min_baseline": 5,
    },
    "quarantine_rate": {"window": "1m", "above": 0.1, "min_messages": 10},
    "freshness": {"max_event_lag": "10m", "max_commit_lag": "10m"},
}
NULL_RATE = {
    "columns": ["coupon_code"],
    "window": "1m",
    "baseline_windows": 5,
    "drift_above": 0.3,
    "min_rows": 10,
}
# event time starts on a minute 20 minutes ago: every window is in the past, none too far
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=20)


def window(i: int) -> datetime:
    return T0 + i * W


def catalog_copy(where: Path, *, null_rate: bool = False) -> Catalog:
    """The shipped catalog and contracts, with small monitors for every stream (and, for the
    orders, a null-rate monitor on the optional coupon_code)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONTRACTS, where / "contracts")
    data = yaml.safe_load(SHIPPED.read_text())
    data["contracts"] = "contracts"
    data["defaults"]["monitors"] = MONITORS_SPEC
    if null_rate:
        for s in data["streams"]:
            if s["event_type"] == ORDERS:  # a stream's monitors replace the defaults' whole
                s["monitors"] = {**MONITORS_SPEC, "null_rate": NULL_RATE}
    (where / "catalog.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_catalog(where / "catalog.yaml")


Tweak = Callable[[dict[str, Any], int], None]


def orders_in(catalog: Catalog, registry, i: int, count: int, tweak: Tweak | None = None) -> list[RawMessage]:  # type: ignore[no-untyped-def]
    """`count` order events spread over window i (event times inside it), all v2 (coupon_code);
    `tweak(payload, k)` may change the k-th event's payload."""
    config = ProduceConfig(
        types=(ORDERS,),
        count=count,
        seed=1000 + i,
        start_time=window(i) + timedelta(seconds=1),
        spacing=timedelta(seconds=55) / count,
        structured_rate=0.0,
        v2_rate=1.0,
    )
    out = []
    for k, m in enumerate(generate(config, catalog, registry)):
        data = m.data
        if tweak is not None:
            payload = json.loads(data)
            tweak(payload, k)
            data = json.dumps(payload).encode()
        out.append(RawMessage(data, m.attributes, f"w{i}-{k}", datetime.now(UTC), "shop-orders-tidegate"))
    return out


def land(catalog: Catalog, lake: Path, messages: list[RawMessage]) -> Lake:
    runner = BatchRunner(
        IngestConfig(str(lake), "run-monitors", str(catalog.path), "t", "t"), single_writer=True
    )
    runner.run("run-monitors-b1", messages)
    return Lake(str(lake), catalog=catalog)


def traffic(  # type: ignore[no-untyped-def]
    catalog: Catalog, registry, counts: list[int], tweaks: dict[int, Tweak] | None = None
) -> list[RawMessage]:
    return [
        m
        for i, n in enumerate(counts)
        if n
        for m in orders_in(catalog, registry, i, n, (tweaks or {}).get(i))
    ]


def after(windows: int) -> datetime:
    """The moment window `windows - 1` is the last closed one (it ended one window ago)."""
    return window(windows + 1)


def only(breaches: list[Breach], monitor: str) -> list[Breach]:
    return [b for b in breaches if b.monitor == monitor]


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("catalogs")


@pytest.fixture(scope="module")
def monitored(catalog_dir: Path) -> Catalog:
    return catalog_copy(catalog_dir / "plain")


@pytest.fixture(scope="module")
def with_nulls(catalog_dir: Path) -> Catalog:
    return catalog_copy(catalog_dir / "nulls", null_rate=True)


@pytest.fixture(scope="module")
def steady(tmp_path_factory, with_nulls: Catalog, registry) -> Lake:  # type: ignore[no-untyped-def]
    """12 windows of 20 orders each, about 20% with a coupon (the producer's own mix)."""
    return land(
        with_nulls,
        tmp_path_factory.mktemp("steady") / "lake",
        traffic(with_nulls, registry, [PER_WINDOW] * 12),
    )


# -- the producer's traffic ------------------------------------------------------------------------


def test_steady_traffic_raises_nothing(steady: Lake) -> None:
    assert evaluate(steady, after(12)) == []
    assert record(steady.root, []) == []
    assert "_monitors" not in steady.table_names()  # made on demand: nothing to record, no table


def test_traffic_that_drops_to_zero_is_one_drop_at_the_first_empty_window(
    monitored: Catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lake = land(monitored, tmp_path / "lake", traffic(monitored, registry, [PER_WINDOW] * 10))
    now = after(14)  # windows 10..13 are closed and empty
    breaches = evaluate(lake, now)
    assert [(b.monitor, b.kind, b.event_type, b.window_start) for b in breaches] == [
        ("volume", "drop", ORDERS, window(10))
    ]
    drop = breaches[0]
    assert (drop.observed, drop.expected, drop.threshold) == (0.0, 20.0, 4.0)
    assert drop.window_end == window(11)
    assert "0 events" in drop.message
    assert "baseline of 20.0" in drop.message
    # recorded once, however often it is evaluated (and while the silence lasts)
    assert record(lake.root, breaches) == breaches
    assert record(lake.root, evaluate(lake, now)) == []
    later = evaluate(lake, now + 2 * W)
    assert [b.breach_id for b in only(later, "volume")] == [drop.breach_id]
    assert record(lake.root, later) == []
    rows = recorded_breaches(lake.root)
    assert rows.height == 1
    assert (
        rows.row(0, named=True)["breach_id"]
        == f"volume/drop/{ORDERS}/{window(10).isoformat().replace('+00:00', 'Z')}"
    )
    assert "_monitors" in lake.table_names()
    # a window still filling is never judged: one window after the last event, nothing yet
    assert evaluate(lake, after(10) + W - timedelta(seconds=1)) == []


def test_a_10x_spike_is_one_spike_at_its_window(monitored: Catalog, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    counts = [PER_WINDOW] * 12
    counts[8] = 10 * PER_WINDOW
    lake = land(monitored, tmp_path / "lake", traffic(monitored, registry, counts))
    breaches = evaluate(lake, after(12))
    assert [(b.monitor, b.kind, b.window_start) for b in breaches] == [("volume", "spike", window(8))]
    assert (breaches[0].observed, breaches[0].expected, breaches[0].threshold) == (200.0, 20.0, 100.0)


def test_20_percent_bad_events_are_one_quarantine_breach_at_their_window(
    monitored: Catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    def bad(payload: dict[str, Any], k: int) -> None:
        if k % 5 == 0:  # 4 of the window's 20: a wrong type, quarantined by the contract
            payload["item_count"] = "three"

    lake = land(monitored, tmp_path / "lake", traffic(monitored, registry, [PER_WINDOW] * 12, {7: bad}))
    assert lake.quarantine().select(pl.len()).collect().item() == 4
    breaches = evaluate(lake, after(12))
    assert [(b.monitor, b.kind, b.window_start) for b in breaches] == [
        ("quarantine_rate", "above", window(7))
    ]
    assert breaches[0].observed == pytest.approx(0.2)
    assert breaches[0].threshold == 0.1
    assert "4 of 20 messages" in breaches[0].message


def test_a_column_that_turns_null_is_one_drift_at_its_window(
    with_nulls: Catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    def coupons(payload: dict[str, Any], k: int) -> None:
        payload["coupon_code"] = None if k % 10 == 0 else "SPRING10"  # 10% without one

    def no_coupons(payload: dict[str, Any], k: int) -> None:
        payload["coupon_code"] = None  # a producer bug: the field is never filled

    tweaks: dict[int, Tweak] = dict.fromkeys(range(12), coupons)
    tweaks[9] = no_coupons
    lake = land(with_nulls, tmp_path / "lake", traffic(with_nulls, registry, [PER_WINDOW] * 12, tweaks))
    breaches = evaluate(lake, after(12))
    assert [(b.monitor, b.kind, b.column, b.window_start) for b in breaches] == [
        ("null_rate", "drift", "coupon_code", window(9))
    ]
    b = breaches[0]
    assert (b.observed, b.expected) == (1.0, pytest.approx(0.1))
    assert b.breach_id.endswith("/coupon_code")


def test_a_stale_stream_is_flagged_by_freshness_once(steady: Lake, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"), catalog=steady.catalog)
    shutil.copytree(steady.root, lake.root)
    newest = lake.raw(ORDERS).select(pl.col("event_time").max()).collect().item()
    later = datetime.now(UTC) + timedelta(minutes=30)  # nothing landed for 30 minutes
    fresh = only(evaluate(lake, later), "freshness")
    assert sorted(b.kind for b in fresh) == ["commit_lag", "event_lag"]
    event_lag = next(b for b in fresh if b.kind == "event_lag")
    assert event_lag.window_start == newest
    assert event_lag.observed == pytest.approx((later - newest).total_seconds())
    assert event_lag.threshold == 600
    commit_lag = next(b for b in fresh if b.kind == "commit_lag")
    landed = lake.delta(f"raw/{ORDERS}").history(1)[0]["timestamp"]
    assert commit_lag.window_start == datetime.fromtimestamp(landed / 1000, UTC)
    assert len(record(lake.root, fresh)) == 2
    assert (
        record(lake.root, only(evaluate(lake, later + 5 * W), "freshness")) == []
    )  # still the same staleness
    # within the lags: nothing
    assert only(evaluate(lake, after(12)), "freshness") == []


def test_monitors_of_a_stream_can_be_turned_off(catalog_dir: Path, steady: Lake) -> None:
    data = yaml.safe_load((catalog_dir / "plain" / "catalog.yaml").read_text())
    data["defaults"]["monitors"] = {"volume": None, "freshness": None, "quarantine_rate": None}
    (catalog_dir / "plain" / "off.yaml").write_text(yaml.safe_dump(data))
    off = load_catalog(catalog_dir / "plain" / "off.yaml")
    assert evaluate(Lake(steady.root, catalog=off), datetime.now(UTC) + timedelta(days=1)) == []


def test_a_null_rate_column_the_stream_does_not_have_is_a_catalog_error(
    catalog_dir: Path, steady: Lake
) -> None:
    from tidegate.errors import ConfigError

    data = yaml.safe_load((catalog_dir / "nulls" / "catalog.yaml").read_text())
    data["streams"][0]["monitors"]["null_rate"]["columns"] = ["coupon"]
    (catalog_dir / "nulls" / "typo.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"coupon is not a column of raw/shop\.order\.placed"):
        evaluate(Lake(steady.root, catalog=load_catalog(catalog_dir / "nulls" / "typo.yaml")), after(12))


def test_the_ticker_evaluates_in_the_background_at_most_every_interval(
    monitored: Catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """What the ingest loop runs after its batches: evaluate + record as of the clock, at most
    every `every` seconds, never twice at once."""
    lake = land(monitored, tmp_path / "lake", traffic(monitored, registry, [PER_WINDOW] * 8))
    ticks = iter([0.0, 1.0, 100.0])
    found: list[Breach] = []
    ticker = MonitorTicker(lake, every=60, on_breach=found.append, clock=lambda: next(ticks))
    ticker("a batch outcome")  # due: runs
    ticker.close()
    # as of now the orders stopped at window 8, 12 minutes ago: a drop there, and stale events
    assert ("volume", "drop", window(8)) in [(b.monitor, b.kind, b.window_start) for b in found]
    assert "event_lag" in [b.kind for b in found if b.monitor == "freshness"]
    assert sorted(recorded_breaches(lake.root).get_column("breach_id")) == sorted(b.breach_id for b in found)
    seen = len(found)
    ticker("another batch")  # 1 s later: not due
    ticker.close()
    ticker("a third")  # due again: nothing new to record
    ticker.close()
    assert len(found) == seen
    assert recorded_breaches(lake.root).height == seen


# -- where breaches show ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropped(tmp_path_factory, monitored: Catalog, registry) -> Lake:  # type: ignore[no-untyped-def]
    return land(
        monitored,
        tmp_path_factory.mktemp("dropped") / "lake",
        traffic(monitored, registry, [PER_WINDOW] * 10),
    )


def test_tidegate_monitor_records_prints_and_logs_each_breach_once(dropped: Lake, cli) -> None:  # type: ignore[no-untyped-def]
    where = ("--lake", dropped.root, "--catalog", str(dropped.catalog.path), "--at", after(14).isoformat())
    first = cli("monitor", *where, "--json")
    assert first.code == 0, first.text  # breaches are data, not errors
    report = json.loads(first.out)
    assert [(b["monitor"], b["kind"], b["window_start"], b["new"]) for b in report["breaches"]] == [
        ("volume", "drop", window(10).isoformat().replace("+00:00", "Z"), True)
    ]
    assert report["new"] == 1
    logged = [json.loads(line) for line in first.err.splitlines() if LOG_EVENT in line]
    assert len(logged) == 1
    assert logged[0]["message"] == LOG_EVENT
    assert (logged[0]["monitor"], logged[0]["event_type"]) == ("volume", ORDERS)
    assert logged[0]["window_start"] == report["breaches"][0]["window_start"]
    again = cli("monitor", *where)
    assert again.code == 0, again.text
    assert LOG_EVENT not in again.err  # logged when it is new only: the alert counts it once
    assert "already recorded" in again.text
    assert "not errors" in again.text
    assert recorded_breaches(dropped.root).height == 1
    # the run's OpenLineage events carry the breaches as a run facet
    events = [
        json.loads(line)
        for line in (Path(dropped.root) / "_openlineage" / "events.jsonl").read_text().splitlines()
    ]
    runs = [e for e in events if e["job"]["name"] == "monitor" and e["eventType"] == "COMPLETE"]
    assert len(runs) == 2
    facet = runs[0]["run"]["facets"]["tidegateMonitors"]
    assert [b["breach_id"] for b in facet["breaches"]] == [report["breaches"][0]["breach_id"]]
    assert facet["breaches"][0]["new"] is True
    assert runs[1]["run"]["facets"]["tidegateMonitors"]["breaches"][0]["new"] is False
    assert runs[0]["run"]["facets"]["tidegate"]["runId"] == report["run_id"]
    outputs = {o["name"] for o in runs[0]["outputs"]}
    assert str(Path(dropped.root, "_monitors").absolute()) in outputs


def test_status_and_the_report_show_recent_breaches(dropped: Lake, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tidegate.ops.report import build_report

    record(dropped.root, evaluate(dropped, after(14)))
    where = ("--lake", dropped.root, "--catalog", str(dropped.catalog.path), "--backlog", "off")
    r = cli("status", *where, "--json")
    assert r.code == 0, r.text
    monitors = json.loads(r.out)["monitors"]
    assert [(m["monitor"], m["kind"], m["event_type"]) for m in monitors] == [("volume", "drop", ORDERS)]
    assert monitors[0]["window_start"] == window(10).isoformat().replace("+00:00", "Z")
    text = cli("status", *where)
    assert text.code == 0, text.text
    assert "monitors: 1 breach in the last 24 h" in text.text
    assert "volume drop" in text.text
    page = build_report(dropped, tmp_path / "report.html").read_text()
    assert '<section id="monitors">' in page
    assert "0 events in the 1m window" in page
    assert "://" not in page  # still offline
    # a lake without breaches says so
    quiet = cli("status", "--lake", str(tmp_path / "nothing"), "--backlog", "off", "--json")
    assert quiet.code == 0
    assert json.loads(quiet.out)["monitors"] == []


def test_monitor_mistakes_exit_2_with_what_to_do(dropped: Lake, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = cli("monitor", "--lake", str(tmp_path / "nope"))
    assert missing.code == 2
    assert "no tidegate tables" in missing.text
    where = ("--lake", dropped.root, "--catalog", str(dropped.catalog.path))
    bad_time = cli("monitor", *where, "--at", "yesterday")
    assert bad_time.code == 2
    assert "--at" in bad_time.text
    bad_span = cli("monitor", *where, "--lookback", "a day")
    assert bad_span.code == 2
    assert "--lookback" in bad_span.text
    assert "Traceback" not in missing.text + bad_time.text + bad_span.text
