"""`tidegate report` on a real lake made without the emulator: the producer's events (some sent
2 h late) through the real Beam batch and the real aggregate projection, as `tidegate demo`
makes one. The charts are checked as data (the page embeds what each chart draws) against
polars computations from the raw tables, and as pixels in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tidegate.catalog import Catalog
from tidegate.errors import TidegateError
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.projection import Projector
from tidegate.lake.read import Lake
from tidegate.ops.report import TIME_LABEL, TOP_KEYS, build_report, bulk_range, described_charts
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
COUNT = 3000  # one event a second: 50 minutes of event time
FIRST_BATCH = 1000
CHROMIUM = shutil.which("chromium")


def make_lake(  # type: ignore[no-untyped-def]
    root: Path, catalog: Catalog, registry, config: ProduceConfig, batches: list[int]
) -> Lake:
    """Land the producer's messages batch by batch (sizes in `batches`) and project the
    aggregates after each commit, the way the local driver does."""
    subscription = {s.topic: s.subscription for s in catalog.streams}
    messages = [
        RawMessage(m.data, m.attributes, str(i), datetime.now(UTC), subscription[m.topic])
        for i, m in enumerate(generate(config, catalog, registry))
    ]
    runner = BatchRunner(
        IngestConfig(str(root), "run-report", str(catalog.path), "t", "t"), single_writer=True
    )
    projector = Projector(catalog, registry, str(root), run_id="run-report", code_version="t", git_sha="t")
    start = 0
    for i, size in enumerate(batches):
        runner.run(f"b{i}", messages[start : start + size])
        projector.project_all()
        start += size
    assert start >= len(messages)
    return Lake(str(root), catalog=catalog)


@pytest.fixture(scope="module")
def report(tmp_path_factory, catalog, registry) -> tuple[Lake, str, dict[str, dict[str, Any]]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("report")
    config = ProduceConfig(
        types=tuple(catalog.event_types),
        count=COUNT,
        seed=5,
        start_time=T0,
        spacing=timedelta(seconds=1),
        late_rate=0.03,  # sent 2 h late (the producer's default late_by)
        out_of_order_rate=0.05,
        invalid_rate=0.02,
        duplicate_rate=0.01,
    )
    # The first batch has no watermark yet, so its events sent 2 h late are counted, in windows
    # 2 h before everything else (what `tidegate demo` shows); later batches' late events go to
    # the late ledger.
    rest = COUNT - FIRST_BATCH
    lake = make_lake(
        tmp / "lake", catalog, registry, config, [FIRST_BATCH, rest // 4, rest // 4, rest // 4, rest]
    )
    page = build_report(lake, tmp / "report.html").read_text()
    return lake, page, {c["id"]: c for c in described_charts(page)}


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def window_sums(
    lake: Lake, event_type: str, key: str, value: pl.Expr, lo: datetime, hi: datetime
) -> pl.DataFrame:
    """Per 1-minute window and key, `value` summed over the raw rows whose window lies in [lo, hi]."""
    return (
        lake.raw(event_type)
        .with_columns(pl.col("event_time").dt.truncate("1m").alias("window_start"))
        .filter(pl.col("window_start").is_between(lo, hi))
        .group_by("window_start", key)
        .agg(value.sum().alias("value"))
        .collect()
    )


def test_revenue_is_the_sum_of_amounts_one_series_per_currency(report) -> None:  # type: ignore[no-untyped-def]
    lake, _, charts = report
    chart = charts["agg-revenue_per_currency_1m"]
    assert chart["kind"] == "line"
    assert chart["metric"] == "revenue"
    assert "sum of amount" in chart["title"]
    assert "unit: each series' own currency" in chart["title"]
    assert "currency" in chart["unit"]
    lo, hi = map(when, chart["x_range"])

    sums = window_sums(lake, "shop.order.placed", "currency", pl.col("amount").cast(pl.Float64), lo, hi)
    ranking = (
        sums.group_by("currency")
        .agg(pl.col("value").sum())
        .sort(["value", "currency"], descending=[True, False])
    )
    currencies = ranking.get_column("currency").to_list()
    assert len(currencies) > TOP_KEYS + 1  # the fixture has enough currencies for an "other"
    names = [s["name"] for s in chart["series"]]
    assert names == [*currencies[:TOP_KEYS], f"other ({len(currencies) - TOP_KEYS} currency values)"]

    expected = {(c, iso(w)): v for w, c, v in sums.select("window_start", "currency", "value").iter_rows()}
    minutes = int((hi - lo) / timedelta(minutes=1)) + 1
    for series in chart["series"]:
        assert [t for t, _ in series["points"]] == [iso(lo + timedelta(minutes=k)) for k in range(minutes)]
        members = currencies[TOP_KEYS:] if series["name"].startswith("other") else [series["name"]]
        for t, value in series["points"]:
            assert value == pytest.approx(sum(expected.get((c, t), 0.0) for c in members)), (
                series["name"],
                t,
            )

    # revenue, not the order count: the two differ in every window that has orders
    counts = window_sums(lake, "shop.order.placed", "currency", pl.lit(1.0), lo, hi)
    eur = dict(charts["agg-revenue_per_currency_1m"]["series"][0]["points"])
    for w, _, n in counts.filter(pl.col("currency") == names[0]).iter_rows():
        assert eur[iso(w)] != pytest.approx(n)


def test_the_x_range_is_the_bulk_and_windows_of_events_sent_late_are_annotated(report) -> None:  # type: ignore[no-untyped-def]
    lake, _, charts = report
    for name in ("revenue_per_currency_1m", "page_views_per_url_5m"):  # fixed and sliding, 1 m apart
        chart = charts[f"agg-{name}"]
        lo, hi = map(when, chart["x_range"])
        starts = lake.aggregate(name).select("window_start").unique().collect().get_column("window_start")
        sent_late = starts.filter(starts < T0 - timedelta(minutes=30)).sort()
        assert sent_late.len() > 0, name  # the first batch counted events sent 2 h late
        # the bulk is drawn whole: out-of-order events reach 2 minutes back, sliding windows 4 more
        assert T0 - timedelta(minutes=7) <= lo <= T0, name
        assert hi >= T0 + timedelta(seconds=COUNT) - timedelta(minutes=2), name
        assert hi - lo < timedelta(hours=1), name  # not stretched to the late windows 2 h back
        outside = starts.filter((starts < lo) | (starts > hi)).sort()
        assert outside.to_list() == sent_late.to_list(), name
        first, last = sent_late[0], sent_late[-1]
        assert chart["outside"] == {"windows": sent_late.len(), "earliest": iso(first), "latest": iso(last)}
        note = chart["annotation"]
        assert note.startswith(f"{sent_late.len()} windows outside this range"), note
        assert f"earliest {first:%Y-%m-%d %H:%M} UTC" in note
        assert f"latest {last:%Y-%m-%d %H:%M} UTC" in note
        points = [when(t) for t, _ in chart["series"][0]["points"]]
        assert (min(points), max(points)) == (lo, hi)
        assert all(b - a == timedelta(minutes=1) for a, b in pairwise(points))
    # events late for a closed window are not in the aggregates: the caption says where they are
    late = lake.late().filter(pl.col("aggregate") == "revenue_per_currency_1m").collect()
    assert late.height > 0
    assert f"{late.height:,} late events" in charts["agg-revenue_per_currency_1m"]["caption"]


def test_every_axis_is_labelled_and_each_aggregate_says_which_metric(report) -> None:  # type: ignore[no-untyped-def]
    lake, _, charts = report
    drawn = [c for c in charts.values() if c["kind"] != "note"]
    assert {c["id"] for c in drawn} >= {"quarantine", "quality"} | {
        f"agg-{a.name}" for a in lake.catalog.aggregates
    }
    for chart in drawn:
        assert chart["axes"], chart["id"]
        for ax in chart["axes"]:
            assert ax["x_label"].strip(), chart["id"]
            assert ax["y_label"].strip(), chart["id"]
    views = charts["agg-page_views_per_url_5m"]
    assert (views["metric"], views["unit"]) == ("views", "events")  # no sum: the count
    assert "count of shop.page.viewed events" in views["title"]
    assert "sliding every 1m" in views["title"]
    for name, metric in (("revenue_per_currency_1m", "revenue"), ("page_views_per_url_5m", "views")):
        (ax,) = charts[f"agg-{name}"]["axes"]
        assert ax["x_label"] == TIME_LABEL
        assert ax["y_label"].startswith(metric)
    # urls share one host: the legend names it once, the series by path
    assert {s["label"] for s in views["series"][:TOP_KEYS]} <= {
        s["name"].removeprefix("https://shop.example.com") or "/" for s in views["series"]
    }


def test_sessions_are_a_distribution_not_overlapping_bars(report) -> None:  # type: ignore[no-untyped-def]
    lake, page, charts = report
    chart = charts["agg-sessions_per_user"]
    assert chart["kind"] == "hist"
    assert chart["metric"] == "total_duration_ms"  # the sum metric, named with its unit
    assert "sum of duration_ms" in chart["title"]
    assert "unit: ms" in chart["title"]
    assert 'id="agg-sessions_per_user" data-kind="hist"' in page
    sessions = lake.aggregate("sessions_per_user").collect()
    panels = {s["name"]: s for s in chart["series"]}
    assert list(panels) == ["session length", "pages", "total_duration_ms"]
    for p in panels.values():
        assert sum(p["counts"]) == p["sessions"] == sessions.height
        assert len(p["bins"]) == len(p["counts"]) + 1
        assert p["bins"] == sorted(p["bins"])
    assert [ax["y_label"] for ax in chart["axes"]] == ["sessions"] * 3

    # a session ends one gap (30 m) after its last event
    seconds = (
        sessions.get_column("window_end") - sessions.get_column("window_start")
    ).dt.total_seconds() - 1800
    per = {"s": 1, "min": 60, "h": 3600}[panels["session length"]["unit"]]
    for name, values in (("pages", sessions.get_column("pages")), ("session length", seconds / per)):
        panel = panels[name]
        assert panel["median"] == pytest.approx(values.median()), name
        counts, _ = np.histogram(values.to_numpy(), bins=panel["bins"])
        assert panel["counts"] == counts.tolist(), name
    # whole numbers of pages are never split between bars
    assert all(edge % 1 == 0.5 for edge in panels["pages"]["bins"])


def test_the_page_is_self_contained(report) -> None:  # type: ignore[no-untyped-def]
    _, page, charts = report
    # nothing to fetch, not even a data: URI; the SVGs' own references are #fragments
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!#)""", page)
    assert not re.search(r"url\((?!#)", page)
    assert "@import" not in page
    assert "://" not in page  # no URL at all (the url keys in the JSON block are escaped)
    drawn = sum(1 for c in charts.values() if c["kind"] != "note")
    assert page.count("<svg") == drawn


def test_few_windows_are_grouped_bars_and_missing_aggregates_say_so(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`tidegate demo` sends its events within a minute or two: a line through two points says
    little, bars per window do."""
    config = ProduceConfig(
        types=("shop.order.placed",),
        count=150,
        seed=3,
        start_time=T0 + timedelta(seconds=5),
        spacing=timedelta(milliseconds=300),
    )
    lake = make_lake(tmp_path / "lake", catalog, registry, config, [150])
    charts = {c["id"]: c for c in described_charts(build_report(lake, tmp_path / "r.html").read_text())}
    chart = charts["agg-revenue_per_currency_1m"]
    assert chart["kind"] == "bars"
    assert chart["x_range"] == [iso(T0), iso(T0)]
    sums = window_sums(lake, "shop.order.placed", "currency", pl.col("amount").cast(pl.Float64), T0, T0)
    expected = dict(sums.select("currency", "value").iter_rows())
    top = [s for s in chart["series"] if not s["name"].startswith("other")]
    for s in top:
        assert s["points"] == [[iso(T0), pytest.approx(expected[s["name"]])]]
    assert (chart["outside"], chart["annotation"]) == (None, None)
    assert charts["agg-sessions_per_user"]["note"] == "not built yet"


def test_a_lake_without_tables_is_an_error_not_an_empty_page(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no-lake"
    with pytest.raises(TidegateError) as exc:
        build_report(Lake(str(missing)), tmp_path / "r.html")
    assert exc.value.message == f"no tidegate tables under {missing}"
    assert "tidegate ingest" in (exc.value.hint or "")
    assert not (tmp_path / "r.html").exists()
    r = cli("report", "--lake", missing, "--out", tmp_path / "r.html")
    assert r.code == 2, r.text
    assert f"no tidegate tables under {missing}" in r.text
    assert "tidegate ingest" in r.text
    assert not (tmp_path / "r.html").exists()


def test_bulk_range_keeps_streams_whole_and_leaves_far_clusters_out() -> None:
    minute = timedelta(minutes=1)
    steady = [T0 + k * minute for k in range(50)]
    late = [T0 - timedelta(hours=2) + k * minute for k in range(3)]
    starts, weights = late + steady, [1.0] * 3 + [10.0] * 50
    assert bulk_range(starts, weights, minute) == (T0, steady[-1])
    # a thin trickle next to a burst is part of the stream: no gap between them
    trickle = [T0 - k * minute for k in range(30, 0, -1)]
    assert bulk_range(trickle + steady, [1.0] * 30 + [100.0] * 50, minute) == (trickle[0], steady[-1])
    # two runs of similar size an hour apart are both the bulk
    second = [T0 + timedelta(hours=1) + k * minute for k in range(50)]
    assert bulk_range(steady + second, [1.0] * 100, minute) == (T0, second[-1])
    assert bulk_range([T0], [1.0], minute) == (T0, T0)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("width", [1280, 800])
def test_the_report_renders_readably_in_a_real_browser(report, tmp_path: Path, width: int) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.image import imread

    _, page, charts = report
    html_file = tmp_path / "report.html"
    html_file.write_text(page)
    flags = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any request would fail (there must be none)
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        f"--window-size={width},4600",
    ]
    shot = tmp_path / f"report-{width}.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", html_file.as_uri()], check=True, capture_output=True, timeout=120
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", html_file.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('class="chart"') == len(charts)
    pixels = (imread(shot)[:, :, :3] * 255).astype(int)
    assert pixels.shape[1] == width

    def painted(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < 40).sum())

    # the charts' ink in matplotlib's tab colours: series lines, bars and histograms were drawn
    for colour in ((31, 119, 180), (255, 127, 14), (148, 103, 189), (44, 160, 44), (214, 39, 40)):
        assert painted(colour) > 100, (colour, painted(colour))
    # nothing overflows the page sideways: the right edge column is background
    assert (pixels[:, -3:, :] > 240).all()
