"""Benchmarks on this machine (`tidegate bench ...`): figures for notes and docs, never tests.

    tidegate bench produce --events 200000
    tidegate bench replay --events 1000000
    tidegate bench history --events 1000000 --events 10000000
    tidegate bench backlog --messages 60000

`bench ingest` and `bench soak` live in `tidegate/bench_ingest.py`.

`bench replay` builds (once, cached under $TIDEGATE_HOME/bench) raw tables of N events per
source type, committed in 20k-event batches the way ingestion commits them (insert-only MERGE,
watermark base stamped), with 5% out-of-order (<= 2 min) and 1% late (2 h) events, then times
`tidegate replay` of every aggregate from scratch.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import write_deltalake

from tidegate import settings
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra import emulator as emu
from tidegate.infra.backlog import count_backlog
from tidegate.infra.pubsub import provision, subscriber
from tidegate.lake.tables import raw_schema, raw_uri
from tidegate.lake.writer import NEW_TABLE_CONFIG
from tidegate.pipelines.replay import replay
from tidegate.pipelines.runs import new_run_id
from tidegate.producer import ProduceConfig, generate, publish
from tidegate.version import code_version, git_sha


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mix(catalog: Catalog, count: int, seed: int) -> ProduceConfig:
    return ProduceConfig(
        types=tuple(catalog.event_types), count=count, seed=seed, invalid_rate=0.02, duplicate_rate=0.01
    )


def _synthetic_raw(
    lake: Path,
    catalog: Catalog,
    registry: ContractRegistry,
    events: int,
    progress: Any,
    commit_rows: int = 500_000,
) -> None:
    """Raw tables of `events` orders and `events` page views, as ingestion would have left them.

    Ingestion commits 20k-event batches, each stamped with the latest event time already in the
    table (its watermark base, `stamp_seen_max_event_time`, capped at the commit's clock); this
    builder stamps every 20k-event batch the same way, vectorized, and appends 500k rows per
    commit: the bench measures reading history, and one insert-only MERGE per 20k events made
    building a 20M-row lake the slowest part of the bench."""

    rng = np.random.default_rng(11)
    start_us = int(datetime(2026, 11, 26, 0, 0, tzinfo=UTC).timestamp()) * 1_000_000
    now = datetime.now(UTC)
    currencies = np.array(["EUR", "USD", "GBP", "CHF", "SEK"])
    urls = np.array([f"https://shop.example.com/p/{i}" for i in range(60)])
    stamp_batch = 20_000
    ts = pl.Datetime("us", "UTC")
    for event_type in ("shop.order.placed", "shop.page.viewed"):
        schema = raw_schema(registry.types[event_type])
        uri = raw_uri(str(lake), event_type)
        seen: datetime | None = None  # the latest event time committed so far
        for first in range(0, events, commit_rows):
            n = min(commit_rows, events - first)
            i = np.arange(first, first + n, dtype=np.int64)
            r = rng.random(n)
            back_ms = np.where(r < 0.01, 7_200_000, 0) + np.where(
                (r >= 0.01) & (r < 0.06), rng.integers(1000, 120_001, n), 0
            )  # 1% late (2 h), 5% out of order (<= 2 min)
            frame = pl.DataFrame({"i": i, "event_time": start_us + i * 10_000 - back_ms * 1000}).with_columns(
                pl.col("event_time").cast(ts), (pl.col("i") // stamp_batch).alias("batch")
            )
            stamps = []
            for batch, latest in (
                frame.group_by("batch").agg(pl.col("event_time").max()).sort("batch").iter_rows()
            ):
                stamps.append((batch, min(seen, now) if seen is not None else None))
                seen = latest if seen is None else max(seen, latest)
            frame = frame.join(
                pl.DataFrame(stamps, schema={"batch": pl.Int64, "seen_max_event_time": ts}, orient="row"),
                on="batch",
            )
            cols = frame.select(
                pl.format(f"{event_type}-{{}}", "i").alias("event_id"),
                "event_time",
                pl.col("event_time").dt.date().alias("event_date"),
                pl.lit("bench").alias("event_source"),
                pl.col("i").cast(pl.String).alias("pubsub_message_id"),
                pl.lit("bench").alias("subscription"),
                "seen_max_event_time",
                pl.format("bench-{}", pl.col("batch") * stamp_batch).alias("batch_id"),
                "i",
            )
            who = pl.Series(rng.integers(0, 3000, n)).cast(pl.String).str.zfill(5)
            if event_type == "shop.order.placed":
                cents = pl.Series(rng.integers(100, 100_000, n))
                cols = cols.with_columns(
                    pl.format("ord_{}", "i").alias("order_id"),
                    pl.format("cus_{}", who).alias("customer_id"),
                    pl.lit("pii_x").alias("customer_email"),
                    pl.format("{}.{}", cents // 100, (cents % 100).cast(pl.String).str.zfill(2)).alias(
                        "amount"
                    ),
                    pl.Series("currency", currencies[rng.integers(0, 5, n)]),
                    pl.Series("item_count", rng.integers(1, 10, n)),
                    pl.lit("DE").alias("country"),
                    pl.col("event_time").alias("placed_at"),
                )
            else:
                anonymous = pl.Series(rng.random(n)) >= 0.8
                cols = cols.with_columns(
                    pl.format("s{}", pl.col("i") // 8).alias("session_id"),
                    pl.when(anonymous).then(None).otherwise(pl.format("cus_{}", who)).alias("user_id"),
                    pl.Series("url", urls[rng.integers(0, 60, n)]),
                    pl.Series("duration_ms", rng.integers(100, 60_001, n)),
                )
            arrow = cols.to_arrow()
            constant = {"schema_version": 1, "ingest_time": now, "run_id": "bench"}
            table = pa.table(
                {
                    f.name: arrow.column(f.name).cast(f.type)
                    if f.name in arrow.column_names
                    else pa.repeat(pa.scalar(constant.get(f.name), f.type), n)
                    for f in schema
                },
                schema=schema,
            )
            write_deltalake(
                uri,
                table,
                mode="append",
                partition_by=["event_date"],
                configuration=NEW_TABLE_CONFIG if first == 0 else None,
            )
        progress(f"raw/{event_type}: {events:,} events committed")


def bench_replay(catalog: Catalog, events: int, group_rows: int, progress: Any = print) -> dict[str, Any]:

    registry = ContractRegistry.from_catalog(catalog)
    lake = settings.home() / "bench" / f"replay-{events}"
    if not (lake / "raw" / "shop.page.viewed" / "_delta_log").exists():
        shutil.rmtree(lake, ignore_errors=True)
        progress(f"building raw tables of {events:,} events per type (once; cached in {lake}) ...")
        _synthetic_raw(lake, catalog, registry, events, progress)
    shutil.rmtree(lake / "aggregates", ignore_errors=True)
    figures: dict[str, Any] = {"events_per_source": events, "group_rows": group_rows}
    # warm-up: imports and the first Beam pipeline construction are paid once per process
    replay(catalog, str(lake), catalog.aggregates[0].name, run_id="warmup", code_version="", git_sha="")
    shutil.rmtree(lake / "aggregates", ignore_errors=True)
    total = 0.0
    for spec in catalog.aggregates:
        progress(f"replay {spec.name} ...")
        r = replay(
            catalog,
            str(lake),
            spec.name,
            run_id=new_run_id(),
            code_version=code_version(),
            git_sha=git_sha(),
            group_rows=group_rows,
        )
        total += r.seconds
        figures[f"{spec.name}_seconds"] = round(r.seconds, 2)
        figures[f"{spec.name}_events_per_s"] = round(r.events_read / r.seconds)
        figures[f"{spec.name}_windows"] = r.windows
        figures[f"{spec.name}_late_pairs"] = r.late_pairs
    figures["all_aggregates_seconds"] = round(total, 2)
    figures["peak_rss_mib"] = round(_peak_rss_mib())
    return figures


# The child runs under a small Python that waits for it and reports its peak RSS: a process
# forked from this one (which built a lake) would inherit this one's high-water mark across exec.
_WAIT_AND_REPORT = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); sys.stdout.flush(); "
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def _measured(argv: list[str]) -> dict[str, Any]:
    """Run a tidegate command in a child process: wall time, its own peak RSS, its exit code."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own CLI, arguments built here
        [sys.executable, "-c", _WAIT_AND_REPORT, sys.executable, "-m", "tidegate.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    seconds = time.perf_counter() - started
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    peak = next((int(x.split()[1]) for x in reversed(lines) if x.startswith("PEAK_RSS_KIB ")), 0)
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak / 1024),
        "exit": done.returncode,
        "tail": [x for x in lines if not x.startswith("PEAK_RSS_KIB ")][-3:],
    }


def bench_history(catalog: Catalog, sizes: list[int], progress: Any = print) -> dict[str, Any]:
    """Whole-history operations against raw history size: for each N (events per source type,
    2N raw rows), `tidegate replay` of every aggregate and view and then `tidegate verify`, each
    in its own process (wall time and that process's peak RSS, imports included)."""
    registry = ContractRegistry.from_catalog(catalog)
    runs = []
    for events in sizes:
        lake = settings.home() / "bench" / f"replay-{events}"
        if not (lake / "raw" / "shop.page.viewed" / "_delta_log").exists():
            shutil.rmtree(lake, ignore_errors=True)
            progress(f"building raw tables of {events:,} events per type (once; cached in {lake}) ...")
            started = time.perf_counter()
            _synthetic_raw(lake, catalog, registry, events, progress)
            progress(f"built in {time.perf_counter() - started:.0f} s")
        shutil.rmtree(lake / "aggregates", ignore_errors=True)
        shutil.rmtree(lake / "views", ignore_errors=True)
        run: dict[str, Any] = {"raw_rows": 2 * events}
        names = [s.name for s in catalog.aggregates if s.source in _BENCH_TYPES] + [
            v.name for v in catalog.views if any(e.type in _BENCH_TYPES for e in v.events)
        ]
        for name in names:
            progress(f"{2 * events:,} raw rows: replay {name} ...")
            run[f"replay {name}"] = _measured(["replay", name, "--lake", str(lake)])
        progress(f"{2 * events:,} raw rows: verify ...")
        run["verify"] = _measured(["verify", "--lake", str(lake)])
        run["replay_seconds"] = round(sum(v["seconds"] for k, v in run.items() if k.startswith("replay ")), 2)
        run["replay_peak_rss_mib"] = max(v["peak_rss_mib"] for k, v in run.items() if k.startswith("replay "))
        runs.append(run)
    return {"runs": runs, "cores": os.cpu_count()}


_BENCH_TYPES = ("shop.order.placed", "shop.page.viewed")


def bench_backlog(catalog: Catalog, messages: int, limit: int, progress: Any = print) -> dict[str, Any]:
    """How long `tidegate status` takes to count an emulator backlog of `messages` (spread over
    the catalog's subscriptions by the usual mix), and that counting left every message in place."""

    registry = ContractRegistry.from_catalog(catalog)
    with (
        tempfile.TemporaryDirectory(prefix="tidegate-bench-backlog-") as tmp,
        emu.private_emulator(Path(tmp)) as proc,
    ):
        provision(catalog, proc.address)
        progress(f"publishing {messages:,} messages to a private emulator ...")
        report = publish(
            generate(_mix(catalog, messages, 5), catalog, registry), catalog.project, proc.address, messages
        )
        assert report.failed == 0, report.errors
        client = subscriber(proc.address)
        subs = [s.subscription for s in catalog.streams]
        figures: dict[str, Any] = {"messages": messages, "limit": limit}
        for rnd in ("first", "second"):
            started = time.perf_counter()
            counts = [count_backlog(client, catalog.project, s, limit) for s in subs]
            figures[f"{rnd}_count_s"] = round(time.perf_counter() - started, 2)
            figures[f"{rnd}_counted"] = sum(c.messages or 0 for c in counts)
            figures["complete"] = all(c.complete for c in counts)
        client.close()
    figures["peak_rss_mib"] = round(_peak_rss_mib())
    return figures
