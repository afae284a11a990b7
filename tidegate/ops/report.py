"""`tidegate report`: one self-contained HTML page about a lake. Charts are matplotlib figures
inlined as SVG (crisp at any width); the page references nothing outside itself (no CDN, no
URL at all), so it renders offline and can be mailed or archived.

A "Monitors" section lists the breaches the stream monitors recorded in the last 24 h (the
`_monitors` table, tidegate.ops.monitors), newest window first, or says there were none.

Charts: throughput per batch (ledger), publish -> commit latency p50 / p99 per batch (_metrics),
quarantine reasons (quarantine), data quality per batch (the share of validated events that
passed every expectation, as tidegate.ops.figures defines it), and one chart per catalog
aggregate, captioned with its late events. Every axis is labelled. Sections whose table does
not exist yet say so; a lake with no tidegate table at all is a TidegateError, not an empty page.

Aggregates are drawn so a person can read them:

- **Which metric.** The most meaningful one the catalog declares: the first `sum` (revenue, not
  the order count), else the first `count`, else the first metric. The title says which metric,
  how it is computed and its unit.
- **Fixed and sliding windows**: the metric per window over event time (window start, UTC), one
  line per key: the `TOP_KEYS` keys with the largest totals, the rest summed as "other".
- **The x-range covers the bulk of the windows** (`bulk_range`): the shortest span holding
  `BULK_SHARE` of the events, widened over neighbouring windows while there is no big gap.
  Windows outside it (typically events sent hours late that arrived before any watermark) are
  not drawn: the chart says how many there are and when, instead of squeezing the real data
  into a sliver at one edge.
- **Session windows** are a distribution, not overlapping bars: histograms of session length,
  events per session and the sum metric per session.

Every chart is also described as data (`Chart.describe()`: kind, axis labels, series and their
values, x-range, windows outside it) in a JSON block of the page
(`<script type="application/json" id="tidegate-report-charts">`), so tests and tools can check
what was drawn without reading pixels.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from tidegate.catalog import AggregateSpec, MetricSpec
from tidegate.errors import TidegateError
from tidegate.lake import aggregates as agg
from tidegate.lake.delta import try_open
from tidegate.lake.read import Lake
from tidegate.ops import figures
from tidegate.ops.status import status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TOP_KEYS = 5  # series per aggregate chart; the other keys are summed into one "other" series
BULK_SHARE = 0.9  # the x-range starts from the shortest span holding this share of the events
FEW_WINDOWS = 3  # this many windows or fewer: grouped bars per window instead of lines
FIGSIZE = (8.0, 3.6)  # inches: 9 pt labels stay legible down to a ~700 px wide page
TIME_LABEL = "event time (UTC), window start"
CHARTS_JSON_ID = "tidegate-report-charts"
OTHER_COLOR = "#8c8c8c"


@dataclass
class Chart:
    """One chart of the report: its image and a description of what it draws."""

    id: str
    section: str
    kind: str = "note"  # line | bars | hist | barh | note
    title: str = ""
    axes: list[dict[str, str]] = field(default_factory=list)  # per panel: title, x_label, y_label
    metric: str | None = None  # aggregates: the metric column drawn
    unit: str | None = None
    series: list[dict[str, Any]] = field(default_factory=list)
    x_range: list[str] | None = None  # ISO times of the first and last window drawn
    outside: dict[str, Any] | None = None  # windows left out of the x-range
    annotation: str | None = None  # what the chart says about those windows
    caption: str | None = None  # a line under the chart
    note: str | None = None  # instead of a chart (the table does not exist yet, ...)
    svg: str | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": self.section,
            "kind": self.kind,
            "title": self.title,
            "axes": self.axes,
            "metric": self.metric,
            "unit": self.unit,
            "series": self.series,
            "x_range": self.x_range,
            "outside": self.outside,
            "annotation": self.annotation,
            "caption": self.caption,
            "note": self.note,
        }


# -- drawing helpers ---------------------------------------------------------------------------


def _figure(ncols: int = 1, size: tuple[float, float] = FIGSIZE) -> tuple[Figure, list[Axes]]:
    # matplotlib is slow to import: loaded only by the report. A bare Figure (no pyplot) keeps
    # no global state and needs no backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8.5)
    return fig, axes


def _svg(fig: Figure) -> str:
    """The figure as inline SVG: it scales to any width with crisp text. No metadata, comments or
    namespace declarations (implied inside HTML), so the page names no URL at all."""
    buf = io.StringIO()
    fig.savefig(
        buf,
        format="svg",
        bbox_inches="tight",
        pad_inches=0.12,
        metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
    )
    text = buf.getvalue()
    text = re.sub(r"<!--.*?-->", "", text[text.index("<svg") :], flags=re.S)  # glyph runs' text
    head, rest = text.split(">", 1)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", head) + ">" + rest


def _label(ax: Axes, chart: Chart, x: str, y: str, title: str = "") -> None:
    ax.set_xlabel(x, fontsize=9.5)
    ax.set_ylabel(y, fontsize=9.5)
    if title:
        ax.set_title(title, fontsize=9.5)
    chart.axes.append({"title": title, "x_label": x, "y_label": y})


def _time_axis(ax: Axes, when: list[Any] | None = None) -> None:
    """Dates in UTC, as concise as they can be; one point in time gets a minute either side
    (matplotlib would span years around it)."""
    import matplotlib.dates as mdates

    if when and len(set(when)) == 1:
        ax.set_xlim(when[0] - timedelta(minutes=1), when[0] + timedelta(minutes=1))

    locator = mdates.AutoDateLocator(tz=UTC, minticks=4)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]


def _when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC" if t.second == 0 else "%Y-%m-%d %H:%M:%S UTC")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _exists(lake: Lake, table: str) -> bool:
    return try_open(lake.uri(table), lake.storage_options) is not None


# -- operational charts ------------------------------------------------------------------------


def _throughput(lake: Lake) -> Chart:
    chart = Chart("throughput", "Throughput", "line", "Throughput per micro-batch (messages/s)")
    led = lake.ledger().sort("committed_at").collect()
    secs = (led.get_column("committed_at") - led.get_column("started_at")).dt.total_milliseconds() / 1000
    rate = (led.get_column("received") / secs.clip(lower_bound=0.001)).to_list()
    when = led.get_column("committed_at").to_list()
    fig, (ax,) = _figure()
    ax.plot(when, rate, marker="o", color="tab:blue")
    ax.set_ylim(bottom=0)
    _time_axis(ax, when)
    _label(ax, chart, "batch committed at (UTC)", "messages/s (received ÷ batch duration)")
    fig.suptitle(chart.title, fontsize=11)
    chart.series = [{"name": "messages/s", "points": [[_iso(t), r] for t, r in zip(when, rate, strict=True)]}]
    chart.svg = _svg(fig)
    return chart


def _latency(lake: Lake) -> Chart:
    chart = Chart("latency", "Latency", "line", "Publish → commit latency per batch (s)")
    lat = lake.metrics().filter(pl.col("name") == "publish_to_commit_s").sort("recorded_at").collect()
    when = lat.get_column("recorded_at").to_list()
    fig, (ax,) = _figure()
    for name, color, marker, style in (("p99", "tab:red", "s", "--"), ("p50", "tab:green", "o", "-")):
        values = lat.get_column(name).to_list()
        ax.plot(when, values, label=name, color=color, marker=marker, linestyle=style)
        chart.series.append(
            {"name": name, "points": [[_iso(t), v] for t, v in zip(when, values, strict=True)]}
        )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8.5)
    _time_axis(ax, when)
    _label(ax, chart, "batch recorded at (UTC)", "seconds, publish → commit")
    fig.suptitle(chart.title, fontsize=11)
    chart.svg = _svg(fig)
    return chart


def _quarantine(lake: Lake) -> Chart:
    chart = Chart("quarantine", "Quarantine reasons", "barh", "Quarantined messages by stage and rule")
    q = lake.quarantine().group_by("stage", "rule").len().sort("len").collect()
    labels = [f"{s}: {r}" for s, r in q.select("stage", "rule").iter_rows()]
    counts = q.get_column("len").to_list()
    fig, (ax,) = _figure(size=(FIGSIZE[0], max(2.5, 0.3 * q.height + 1.2)))
    ax.barh(labels, counts, color="tab:orange")
    ax.grid(axis="y", visible=False)
    _label(ax, chart, "messages", "stage: rule")
    fig.suptitle(chart.title, fontsize=11)
    chart.series = [{"name": label, "total": c} for label, c in zip(labels, counts, strict=True)]
    chart.svg = _svg(fig)
    return chart


def _quality(lake: Lake) -> Chart:
    """Per batch, the share of the events GX validated that passed every expectation (the same
    definition as `tidegate status`, tidegate.ops.figures); the rest are quarantined."""
    chart = Chart("quality", "Data quality", "line", "Data quality per batch: validated events that passed")
    validated = (
        lake.quality()
        .group_by("batch_id", "event_type")
        .agg(pl.col("element_count").max(), pl.col("validated_at").max())
        .group_by("batch_id")
        .agg(pl.col("element_count").sum().alias("events"), pl.col("validated_at").max())
        .collect()
    )
    failed = (
        lake.quarantine()
        .filter(pl.col("stage") == "expectations")
        .group_by("batch_id")
        .len("failed")
        .collect()
        if _exists(lake, "quarantine")
        else pl.DataFrame({"batch_id": [], "failed": []}, schema={"batch_id": pl.String, "failed": pl.UInt32})
    )
    dq = (
        validated.join(failed, on="batch_id", how="left")
        .filter(pl.col("events") > 0)
        .with_columns((1 - pl.col("failed").fill_null(0) / pl.col("events")).alias("pass_rate"))
        .sort("validated_at")
    )
    when = dq.get_column("validated_at").to_list()
    rate = dq.get_column("pass_rate").to_list()
    fig, (ax,) = _figure()
    ax.plot(when, rate, marker="o", markersize=3, color="tab:purple")
    ax.set_ylim(min([0.9, *rate]) - 0.02 if rate else 0, 1.005)
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _time_axis(ax, when)
    _label(ax, chart, "batch validated at (UTC)", "validated events passing\nevery expectation")
    fig.suptitle(chart.title, fontsize=11)
    chart.series = [{"name": "pass rate", "points": [[_iso(t), r] for t, r in zip(when, rate, strict=True)]}]
    chart.svg = _svg(fig)
    return chart


# -- aggregates --------------------------------------------------------------------------------


def pick_metric(spec: AggregateSpec) -> MetricSpec:
    """The metric an aggregate's chart shows: the first sum, else the first count, else the first."""
    for fn in ("sum", "count"):
        for m in spec.metrics:
            if m.fn == fn:
                return m
    return spec.metrics[0]


def _count_metric(spec: AggregateSpec) -> MetricSpec | None:
    return next((m for m in spec.metrics if m.fn == "count"), None)


_UNIT_SUFFIXES = (("_ms", "ms"), ("_seconds", "s"), ("_secs", "s"), ("_s", "s"), ("_bytes", "bytes"))


def _field_unit(name: str) -> str | None:
    return next((unit for suffix, unit in _UNIT_SUFFIXES if name.endswith(suffix)), None)


def metric_unit(spec: AggregateSpec, metric: MetricSpec) -> str:
    """What one unit of the metric is, as far as the catalog tells."""
    if metric.fn == "count":
        return "events"
    unit = _field_unit(metric.field or "")
    if unit:
        return unit
    if any("currency" in k for k in spec.keys):
        return "each series' own currency (not converted)"
    return f"units of {metric.field}"


def _subtitle(spec: AggregateSpec, metric: MetricSpec, per: str) -> str:
    return f"metric: {metric.column} = {_formula(spec, metric)} {per} · unit: {metric_unit(spec, metric)}"


def _formula(spec: AggregateSpec, metric: MetricSpec) -> str:
    if metric.fn == "count":
        return f"count of {spec.source} events"
    return f"{metric.fn} of {metric.field}"


def _window_words(spec: AggregateSpec) -> str:
    w = spec.window
    if w.type == "sliding":
        return f"{w.size} window, sliding every {w.period}"
    return f"{w.size} window"


def _step(spec: AggregateSpec) -> timedelta:
    w = spec.window
    return agg.duration((w.period if w.type == "sliding" else w.size) or "1m")


def bulk_range(
    starts: list[datetime], weights: list[float], step: timedelta, share: float = BULK_SHARE
) -> tuple[datetime, datetime]:
    """The first and last window start of the bulk of the data (starts sorted, distinct).

    The shortest span of windows holding `share` of the weight (events), then widened window by
    window while the next one is no farther than max(3 steps, a quarter of that span): a steady
    stream is drawn whole, a cluster hours away (events sent late) is left out."""
    n = len(starts)
    if sum(weights) <= 0:
        weights = [1.0] * n
    need = share * sum(weights)
    best, acc, j = (0, n - 1), 0.0, 0
    for i in range(n):
        while j < n and acc < need:
            acc += weights[j]
            j += 1
        if acc < need:
            break
        if starts[j - 1] - starts[i] < starts[best[1]] - starts[best[0]]:
            best = (i, j - 1)
        acc -= weights[i]
    lo, hi = best
    reach = max(3 * step, (starts[hi] - starts[lo]) / 4)
    while lo > 0 and starts[lo] - starts[lo - 1] <= reach:
        lo -= 1
    while hi < n - 1 and starts[hi + 1] - starts[hi] <= reach:
        hi += 1
    return starts[lo], starts[hi]


def _short_labels(labels: list[str], keys: int) -> tuple[list[str], str]:
    """Legend labels: the first `keys` without a scheme://host all of them share (returned, for
    the legend title), long ones shortened in the middle."""
    host = ""
    m = re.match(r"^[a-z][a-z0-9+.-]*://[^/]+", labels[0]) if labels else None
    if m and keys > 1 and all(label.startswith(m.group(0)) for label in labels[:keys]):
        host = m.group(0)
        labels = [label[len(host) :] or "/" for label in labels[:keys]] + labels[keys:]
    return [label if len(label) <= 34 else f"{label[:15]}…{label[-16:]}" for label in labels], host


def _aggregate(lake: Lake, spec: AggregateSpec, late: dict[str, Any]) -> Chart:
    if not _exists(lake, f"aggregates/{spec.name}"):
        return Chart(f"agg-{spec.name}", spec.name, note="not built yet")
    chart = _sessions(lake, spec) if spec.window.type == "session" else _windowed(lake, spec)
    events, pairs = int(late.get("events", 0)), int(late.get("pairs", 0))
    if chart.kind != "note" and events:
        chart.caption = (
            f"{events:,} late event{'s' if events != 1 else ''} arrived after {'their windows' if events != 1 else 'its window'} "
            f"had closed and {'are' if events != 1 else 'is'} not counted here; the late ledger "
            f"(lake.late()) holds {'them' if events != 1 else 'it'} as {pairs:,} (event, window) pair{'s' if pairs != 1 else ''}."
        )
    return chart


def _windowed(lake: Lake, spec: AggregateSpec) -> Chart:
    metric = pick_metric(spec)
    counter = _count_metric(spec)
    unit = metric_unit(spec, metric)
    col = metric.column
    chart = Chart(f"agg-{spec.name}", spec.name, metric=col, unit=unit)
    wanted = ["window_start", *spec.keys, col] + (
        [counter.column] if counter and counter is not metric else []
    )
    df = lake.aggregate(spec.name).select(wanted).collect()
    if df.is_empty():
        chart.note = "no windows yet"
        return chart
    series_key = (
        pl.concat_str([pl.col(k).cast(pl.String).fill_null("(none)") for k in spec.keys], separator=" / ")
        if spec.keys
        else pl.lit(col)
    )
    weight = pl.col(counter.column).cast(pl.Float64).fill_null(0.0) if counter else pl.lit(1.0)
    df = df.with_columns(
        series_key.alias("_series"),
        pl.col(col).cast(pl.Float64).fill_null(0.0).alias("_value"),
        weight.alias("_w"),
    )
    per_window = df.group_by("window_start").agg(pl.col("_w").sum()).sort("window_start")
    starts: list[datetime] = per_window.get_column("window_start").to_list()
    step = _step(spec)
    lo, hi = bulk_range(starts, per_window.get_column("_w").to_list(), step)

    outside = [t for t in starts if t < lo or t > hi]
    if outside:
        held = df.filter((pl.col("window_start") < lo) | (pl.col("window_start") > hi))
        holding = (
            f", holding {int(held.get_column(counter.column).sum()):,} {counter.column}" if counter else ""
        )
        n, first, last = len(outside), min(outside), max(outside)
        chart.annotation = f"{n} window{'s' if n != 1 else ''} outside this range (not drawn{holding}): " + (
            f"at {_when(first)}" if n == 1 else f"earliest {_when(first)}, latest {_when(last)}"
        )
        chart.outside = {"windows": n, "earliest": _iso(min(outside)), "latest": _iso(max(outside))}

    inside = df.filter(pl.col("window_start").is_between(lo, hi))
    totals = (
        inside.group_by("_series")
        .agg(pl.col("_value").sum())
        .sort(["_value", "_series"], descending=[True, False])
    )
    names: list[str] = totals.get_column("_series").to_list()
    top, rest = names[:TOP_KEYS], names[TOP_KEYS:]
    if len(rest) == 1:  # an "other" of one key is that key
        top, rest = names, []
    grid = pl.datetime_range(lo, hi, step, time_zone="UTC", eager=True).alias("window_start")
    grid_frame = grid.to_frame().with_columns(pl.col("window_start").cast(df.schema["window_start"]))
    series: list[tuple[str, list[float]]] = []
    for name in top:
        s = inside.filter(pl.col("_series") == name).group_by("window_start").agg(pl.col("_value").sum())
        series.append((name, _on_grid(grid_frame, s)))
    if rest:
        s = inside.filter(pl.col("_series").is_in(rest)).group_by("window_start").agg(pl.col("_value").sum())
        noun = "/".join(spec.keys) if spec.keys else "key"
        series.append((f"other ({len(rest)} {noun} values)", _on_grid(grid_frame, s)))
    when: list[Any] = grid_frame.get_column("window_start").to_list()  # datetimes (UTC)

    by = f", by {' / '.join(spec.keys)}" if spec.keys else ""
    chart.title = f"{spec.name}: {col} per {_window_words(spec)}{by}\n{_subtitle(spec, metric, 'per window')}"
    y_label = f"{col} ({unit})" if metric.fn != "count" else f"{col} (events per window)"
    if metric.fn != "count" and len(y_label) > 48:
        y_label = f"{col} ({_formula(spec, metric)})"
    fig, (ax,) = _figure()
    labels, host = _short_labels([name for name, _ in series], len(top))
    colors = [f"C{i}" for i in range(len(top))] + ([OTHER_COLOR] if rest else [])
    if len(when) <= FEW_WINDOWS:
        chart.kind = "bars"
        width = 0.8 / len(series)
        for i, ((_, values), label, color) in enumerate(zip(series, labels, colors, strict=True)):
            xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(when))]
            ax.bar(xs, values, width=width, label=label, color=color)
        size = agg.duration(spec.window.size or "")
        ax.set_xticks(range(len(when)), [f"{t:%Y-%m-%d %H:%M:%S} – {t + size:%H:%M:%S}" for t in when])
        ax.grid(axis="x", visible=False)
    else:
        chart.kind = "line"
        marker = "o" if len(when) <= 30 else None
        for (_, values), label, color in zip(series, labels, colors, strict=True):
            ax.plot(when, values, label=label, color=color, marker=marker, markersize=3, linewidth=1.4)
        _time_axis(ax)  # the x-limits are set just below
        pad = max((hi - lo) * 0.02, step / 2)
        ax.set_xlim(lo - pad, hi + pad)  # type: ignore[arg-type]
    ax.set_ylim(bottom=min(0.0, *(min(values, default=0.0) for _, values in series)))
    _label(ax, chart, TIME_LABEL, y_label)
    if len(series) > 1 or spec.keys:
        legend_title = " / ".join(spec.keys) + (f"\n{host}" if host else "")
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            title=legend_title,
            title_fontsize=8.5,
            frameon=False,
        )
    fig.suptitle(chart.title, fontsize=10)
    if chart.annotation:
        ax.set_title(_wrap(chart.annotation, 110), fontsize=8, color="#a0322d", loc="left")
    chart.x_range = [_iso(lo), _iso(hi)]
    chart.series = [
        {"name": name, "label": label, "points": [[_iso(t), v] for t, v in zip(when, values, strict=True)]}
        for (name, values), label in zip(series, labels, strict=True)
    ]
    chart.svg = _svg(fig)
    return chart


def _on_grid(grid: pl.DataFrame, values: pl.DataFrame) -> list[float]:
    return grid.join(values, on="window_start", how="left").get_column("_value").fill_null(0.0).to_list()


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _duration_unit(longest_seconds: float) -> tuple[str, float]:
    if longest_seconds < 120:
        return "s", 1.0
    if longest_seconds < 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _sessions(lake: Lake, spec: AggregateSpec) -> Chart:
    """Session windows as distributions: session length, events per session, the sum per session."""
    metric = pick_metric(spec)
    chart = Chart(
        f"agg-{spec.name}", spec.name, kind="hist", metric=metric.column, unit=metric_unit(spec, metric)
    )
    cols = list(dict.fromkeys(["window_start", "window_end", *(m.column for m in spec.metrics)]))
    df = lake.aggregate(spec.name).select(cols).collect()
    if df.is_empty():
        chart.kind, chart.note = "note", "no sessions yet"
        return chart
    gap = agg.duration(spec.window.gap or "")
    # a session window ends one gap after its last event
    length_s = (
        (pl.col("window_end") - pl.col("window_start")).dt.total_microseconds() / 1e6 - gap.total_seconds()
    ).clip(lower_bound=0)
    lengths = df.select(length_s).to_series()
    unit, per = _duration_unit(float(lengths.max() or 0.0))  # type: ignore[arg-type]
    # (name, values, x label, unit, discrete)
    panels: list[tuple[str, pl.Series, str, str, bool]] = [
        ("session length", lengths / per, f"session length ({unit}, first to last event)", unit, False)
    ]
    counter = _count_metric(spec)
    if counter is not None:
        values = df.get_column(counter.column)
        panels.append((counter.column, values, f"{counter.column} per session (events)", "events", True))
    summed = next((m for m in spec.metrics if m.fn == "sum"), None)
    if summed is not None:
        values = df.get_column(summed.column).cast(pl.Float64)
        s_unit = metric_unit(spec, summed)
        if _field_unit(summed.field or "") == "ms":
            s_unit, s_per = _duration_unit(float(values.max() or 0.0) / 1000)  # type: ignore[arg-type]
            values = values / 1000 / s_per
        panels.append((summed.column, values, f"{summed.column} per session ({s_unit})", s_unit, False))

    by = f" by {' / '.join(spec.keys)}" if spec.keys else ""
    subtitle = _subtitle(spec, metric, "per session")
    shown = next((u for name, _, _, u, _ in panels if name == metric.column), None)
    if shown is not None and shown != metric_unit(spec, metric):
        subtitle += f", drawn in {shown}"
    chart.title = (
        f"{spec.name}: distribution of {df.height:,} sessions{by} (a session ends {spec.window.gap} "
        f"after its last event)\n{subtitle}"
    )
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(ncols=len(panels), size=(FIGSIZE[0], 3.4))
    for ax, (name, values, x_label, value_unit, discrete), color in zip(
        axes, panels, ("tab:blue", "tab:green", "tab:purple"), strict=False
    ):
        data = values.drop_nulls().cast(pl.Float64)
        bins: Any = min(30, max(5, int(math.sqrt(data.len())) + 1))
        if discrete:  # whole numbers: bars centred on them, a few numbers per bar when many
            low, top = int(min(data.to_list(), default=0)), int(max(data.to_list(), default=0))
            width = max(1, math.ceil((top - low + 1) / 15))
            bins = [low - 0.5 + k * width for k in range(math.ceil((top - low + 1) / width) + 1)]
        counts, edges, _ = ax.hist(data.to_list(), bins=bins, color=color, alpha=0.85, edgecolor="white")
        ax.set_ylim(0, max(1.0, float(max(counts, default=0))) * 1.18)  # room for the median label
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        median = float(data.median() or 0.0)  # type: ignore[arg-type]
        ax.axvline(median, color="black", linestyle="--", linewidth=1)
        ax.text(
            0.97,
            0.95,
            f"median {median:,.3g} {value_unit}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
        if discrete:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label(ax, chart, _wrap(x_label, 32), "sessions")
        chart.series.append(
            {
                "name": name,
                "x_label": x_label,
                "bins": [float(e) for e in edges],
                "counts": [int(c) for c in counts],
                "unit": value_unit,
                "median": median,
                "sessions": int(data.len()),
            }
        )
    fig.suptitle(chart.title, fontsize=10)
    chart.svg = _svg(fig)
    return chart


# -- the page ----------------------------------------------------------------------------------


def charts(lake: Lake) -> list[Chart]:
    """Every chart of the report, in page order."""
    present = {t for t in lake.table_names() if _exists(lake, t)}
    late = figures.late(lake, present)["per_aggregate"]
    out: list[Chart] = []
    for table, make in (
        ("_ledger", _throughput),
        ("_metrics", _latency),
        ("quarantine", _quarantine),
        ("_quality", _quality),
    ):
        if table in present:
            out.append(make(lake))
    for spec in lake.catalog.aggregates:
        out.append(_aggregate(lake, spec, late.get(spec.name, {})))
    return out


def _figure_html(chart: Chart) -> str:
    if chart.svg is None:
        return f'<figure class="chart" id="{chart.id}"><p>{html.escape(chart.note or "")}</p></figure>'
    caption = f"<figcaption>{html.escape(chart.caption)}</figcaption>" if chart.caption else ""
    alt = ". ".join(t for t in (chart.title, chart.annotation) if t)
    return (
        f'<figure class="chart" id="{chart.id}" data-kind="{chart.kind}">'
        f'<div role="img" aria-label="{html.escape(alt)}">{chart.svg}</div>{caption}</figure>'
    )


def _monitors_html(breaches: list[dict[str, Any]]) -> str:
    """The Monitors section: recent breaches as a table (plain text: no link, no URL)."""
    head = '<section id="monitors"><h2>Monitors</h2>'
    if not breaches:
        return (
            f"{head}<p>No breach recorded in the last 24 h. <code>tidegate monitor</code> evaluates the "
            "catalog's stream monitors (volume, freshness, quarantine rate, null rate) and records "
            "breaches in <code>_monitors</code>.</p></section>"
        )

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:,.4g}"

    rows = "".join(
        "<tr>"
        f'<td class="when">{html.escape(b["window_start"][:19].replace("T", " "))}</td>'
        f"<td>{html.escape(b['event_type'])}</td>"
        f"<td>{html.escape(b['monitor'])} {html.escape(b['kind'])}"
        f"{' (' + html.escape(b['column']) + ')' if b.get('column') else ''}</td>"
        f"<td>{number(b['observed'])}</td><td>{number(b['expected'])}</td><td>{number(b['threshold'])}</td>"
        f"<td>{html.escape(b['message'])}</td>"
        "</tr>"
        for b in breaches
    )
    n = len(breaches)
    return (
        f"{head}<p>{n:,} breach{'es' if n != 1 else ''} recorded in the last 24 h, newest window first "
        "(window start in UTC; observed, baseline and threshold in the monitor's unit: events, a share, "
        "or seconds of lag).</p>"
        '<div class="tables"><table><tr><th>window start</th><th>event type</th><th>monitor</th>'
        f"<th>observed</th><th>baseline</th><th>threshold</th><th>what</th></tr>{rows}</table></div></section>"
    )


def build_report(lake: Lake, out: Path) -> Path:
    """Write the report page to `out`. Raises TidegateError when the lake holds no tidegate table."""
    report = status(lake)
    if not report["tables"]:
        raise TidegateError(
            f"no tidegate tables under {lake.root}", hint="run `tidegate ingest` first (or pass --lake)"
        )
    drawn = charts(lake)
    rows = "".join(
        f"<tr><td>{html.escape(t['table'])}</td><td>{t['version']}</td><td>{t['rows']:,}</td><td>{html.escape(t['last_commit'][:19])}</td></tr>"
        for t in report["tables"]
    )
    sections = "".join(
        f"<section><h2>{html.escape(c.section)}</h2>{_figure_html(c)}</section>" for c in drawn
    )
    led = report.get("ledger", {})
    summary = (
        f"{led.get('received', 0):,} messages, {led.get('raw_written', 0):,} written, {led.get('quarantined', 0):,} quarantined"
        f" ({led.get('quarantine_rate', 0):.2%}); ledger {'balanced' if led.get('balanced', True) else 'NOT balanced'}"
        if led
        else "no ingest ledger yet"
    )
    # "/" escaped as JSON allows: no "</script>" can end the block, and the data's URL keys
    # (page_views_per_url's) do not read as links to anything
    described = json.dumps([c.describe() for c in drawn], indent=1).replace("/", "\\/")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tidegate report: {html.escape(lake.root)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem auto;padding:0 1rem;max-width:1000px;color:#222}}
.tables{{overflow-x:auto}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2rem .6rem}}
figure.chart{{margin:0 0 1rem}} figure.chart svg{{width:100%;height:auto;display:block}}
figcaption{{font-size:.85rem;color:#555;margin-top:.3rem}} code{{word-break:break-all}} td.when{{white-space:nowrap}}</style></head>
<body><h1>tidegate report</h1><p>Lake <code>{html.escape(lake.root)}</code>, generated {datetime.now(UTC).isoformat()[:19]}Z.</p>
<p>{html.escape(summary)}</p>
<div class="tables"><table><tr><th>table</th><th>version</th><th>rows</th><th>last commit</th></tr>{rows}</table></div>
{_monitors_html(report.get("monitors", []))}
{sections}
<script type="application/json" id="{CHARTS_JSON_ID}">{described}</script>
</body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def described_charts(page: str) -> list[dict[str, Any]]:
    """The chart descriptions embedded in a report page (what `Chart.describe()` returned)."""
    m = re.search(rf'<script type="application/json" id="{CHARTS_JSON_ID}">(.*?)</script>', page, re.S)
    if m is None:
        raise ValueError("not a tidegate report page (no chart descriptions)")
    found: list[dict[str, Any]] = json.loads(m.group(1))
    return found
