"""`tidegate report`: one self-contained HTML page about a lake (charts as inline SVG, no
external resources, so it renders offline and can be mailed or archived).

Charts: throughput per batch over time (ledger), publish -> commit latency p50 / p99 per batch
(_metrics), quarantine reasons (quarantine), data-quality pass rate per batch (_quality), and
every aggregate's first metric over event time. Sections whose table does not exist yet say so.
"""

from __future__ import annotations

import html
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from tidegate.lake.delta import try_open
from tidegate.lake.read import Lake
from tidegate.ops.status import status


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    # matplotlib is slow to import: loaded only by the report
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(title: str) -> tuple[Any, Any]:
    # matplotlib is slow to import: loaded only by the report
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _exists(lake: Lake, table: str) -> bool:
    return try_open(lake.uri(table), lake.storage_options) is not None


def charts(lake: Lake) -> list[tuple[str, str, str]]:
    """(id, title, svg or a note) per chart."""
    out: list[tuple[str, str, str]] = []
    if _exists(lake, "_ledger"):
        led = lake.ledger().sort("committed_at").collect()
        secs = (led.get_column("committed_at") - led.get_column("started_at")).dt.total_milliseconds() / 1000
        rate = (led.get_column("received") / secs.clip(lower_bound=0.001)).to_list()
        fig, ax = _figure("throughput per micro-batch (messages/s)")
        ax.plot(led.get_column("committed_at").to_list(), rate, marker="o", color="tab:blue")
        ax.set_ylabel("msg/s")
        out.append(("throughput", "Throughput", _svg(fig)))
    if _exists(lake, "_metrics"):
        lat = lake.metrics().filter(pl.col("name") == "publish_to_commit_s").sort("recorded_at").collect()
        fig, ax = _figure("publish -> commit latency per batch (s)")
        when = lat.get_column("recorded_at").to_list()
        ax.plot(
            when, lat.get_column("p99").to_list(), label="p99", color="tab:red", marker="s", linestyle="--"
        )
        ax.plot(when, lat.get_column("p50").to_list(), label="p50", color="tab:green", marker="o")
        ax.legend()
        out.append(("latency", "Latency", _svg(fig)))
    if _exists(lake, "quarantine"):
        q = lake.quarantine().group_by("stage", "rule").len().sort("len").collect()
        fig, ax = _figure("quarantine reasons (messages)")
        ax.barh(
            [f"{s}: {r}" for s, r in q.select("stage", "rule").iter_rows()],
            q.get_column("len").to_list(),
            color="tab:orange",
        )
        fig.set_size_inches(9, max(2.5, 0.35 * q.height + 1))
        out.append(("quarantine", "Quarantine reasons", _svg(fig)))
    if _exists(lake, "_quality"):
        dq = (
            lake.quality()
            .group_by("batch_id")
            .agg(pl.col("validated_at").max(), pl.col("success").mean().alias("pass_rate"))
            .sort("validated_at")
            .collect()
        )
        fig, ax = _figure("data-quality pass rate per batch (share of expectations passed)")
        ax.plot(
            dq.get_column("validated_at").to_list(),
            dq.get_column("pass_rate").to_list(),
            marker=".",
            color="tab:purple",
        )
        ax.set_ylim(0, 1.05)
        out.append(("quality", "Data quality", _svg(fig)))
    for spec in lake.catalog.aggregates:
        if not _exists(lake, f"aggregates/{spec.name}"):
            out.append((f"agg-{spec.name}", spec.name, "not built yet"))
            continue
        metric = spec.metrics[0].column
        series = (
            lake.aggregate(spec.name)
            .group_by("window_start")
            .agg(pl.col(metric).sum())
            .sort("window_start")
            .collect()
        )
        fig, ax = _figure(f"{spec.name}: {metric} by event time ({spec.window.type} windows)")
        w = spec.window
        width = w.seconds("size") if w.type != "session" else w.seconds("gap")
        ax.bar(
            series.get_column("window_start").to_list(),
            series.get_column(metric).cast(pl.Float64).to_list(),
            width=width / 86400,  # matplotlib dates are in days
            align="edge",
            color="tab:blue",
            alpha=0.8,
        )
        out.append((f"agg-{spec.name}", spec.name, _svg(fig)))
    return out


def build_report(lake: Lake, out: Path) -> Path:
    report = status(lake)
    rows = "".join(
        f"<tr><td>{html.escape(t['table'])}</td><td>{t['version']}</td><td>{t['rows']:,}</td><td>{html.escape(t['last_commit'][:19])}</td></tr>"
        for t in report["tables"]
    )
    sections = "".join(
        f'<section><h2>{html.escape(title)}</h2><figure class="chart" id="{cid}">{svg if svg.startswith("<svg") else "<p>" + html.escape(svg) + "</p>"}</figure></section>'
        for cid, title, svg in charts(lake)
    )
    led = report.get("ledger", {})
    summary = (
        f"{led.get('received', 0):,} messages, {led.get('raw_written', 0):,} written, {led.get('quarantined', 0):,} quarantined"
        f" ({led.get('quarantine_rate', 0):.2%}); ledger {'balanced' if led.get('balanced', True) else 'NOT balanced'}"
        if led
        else "no ingest yet"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tidegate report: {html.escape(lake.root)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1000px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2rem .6rem}} figure.chart svg{{width:100%;height:auto}}</style></head>
<body><h1>tidegate report</h1><p>Lake <code>{html.escape(lake.root)}</code>, generated {datetime.now(UTC).isoformat()[:19]}Z.</p>
<p>{html.escape(summary)}</p>
<table><tr><th>table</th><th>version</th><th>rows</th><th>last commit</th></tr>{rows}</table>
{sections}</body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
