"""Benchmarks on this machine (`tidegate bench ...`): figures for notes and docs, never tests.

    tidegate bench produce --events 200000
    tidegate bench replay --events 1000000
    tidegate bench backlog --messages 60000

`bench ingest` and `bench soak` live in `tidegate/bench_ingest.py`.

`bench replay` builds (once, cached under $TIDEGATE_HOME/bench) raw tables of N events per
source type, committed in 20k-event batches the way ingestion commits them (insert-only MERGE,
watermark base stamped), with 5% out-of-order (<= 2 min) and 1% late (2 h) events, then times
`tidegate replay` of every aggregate from scratch.
"""

from __future__ import annotations

import random
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from tidegate import settings
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra import emulator as emu
from tidegate.infra.backlog import count_backlog
from tidegate.infra.pubsub import provision, subscriber
from tidegate.lake.rows import stamp_seen_max_event_time
from tidegate.lake.tables import raw_schema, raw_uri
from tidegate.lake.writer import insert_new
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
    lake: Path, catalog: Catalog, registry: ContractRegistry, events: int, progress: Any
) -> None:
    """Raw tables of `events` orders and `events` page views, committed like ingestion does."""

    rng = random.Random(11)
    start = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    now = datetime.now(UTC)
    users = [f"cus_{i:05d}" for i in range(3000)]
    urls = [f"https://shop.example.com/p/{i}" for i in range(60)]
    currencies = ["EUR", "USD", "GBP", "CHF", "SEK"]
    batch = 20_000
    for event_type in ("shop.order.placed", "shop.page.viewed"):
        schema = raw_schema(registry.types[event_type])
        for first in range(0, events, batch):
            n = min(batch, events - first)
            times = []
            for i in range(first, first + n):
                t = start + timedelta(milliseconds=10 * i)
                r = rng.random()
                if r < 0.01:
                    t -= timedelta(hours=2)
                elif r < 0.06:
                    t -= timedelta(milliseconds=rng.randint(1000, 120_000))
                times.append(t)
            cols: dict[str, list[Any]] = {
                "event_id": [f"{event_type}-{i}" for i in range(first, first + n)],
                "event_time": times,
                "event_date": [t.date() for t in times],
                "event_source": ["bench"] * n,
                "schema_version": [1] * n,
                "pubsub_message_id": [str(i) for i in range(first, first + n)],
                "subscription": ["bench"] * n,
                "ingest_time": [now] * n,
                "run_id": ["bench"] * n,
                "batch_id": [f"bench-{first}"] * n,
            }
            if event_type == "shop.order.placed":
                cols |= {
                    "order_id": [f"ord_{i}" for i in range(first, first + n)],
                    "customer_id": [rng.choice(users) for _ in range(n)],
                    "customer_email": ["pii_x"] * n,
                    "amount": [Decimal(rng.randint(100, 99_999)) / 100 for _ in range(n)],
                    "currency": [rng.choice(currencies) for _ in range(n)],
                    "item_count": [rng.randint(1, 9) for _ in range(n)],
                    "country": ["DE"] * n,
                    "placed_at": times,
                }
            else:
                cols |= {
                    "session_id": [f"s{i // 8}" for i in range(first, first + n)],
                    "user_id": [rng.choice(users) if rng.random() < 0.8 else None for _ in range(n)],
                    "url": [rng.choice(urls) for _ in range(n)],
                    "duration_ms": [rng.randint(100, 60_000) for _ in range(n)],
                }
            table = pa.table(
                {f.name: pa.array(cols.get(f.name, [None] * n), f.type) for f in schema}, schema=schema
            )
            insert_new(
                raw_uri(str(lake), event_type),
                table,
                keys=["event_id"],
                partition_by=["event_date"],
                prune_on="event_date",
                prepare=lambda t, b: stamp_seen_max_event_time(t, b, now),
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
