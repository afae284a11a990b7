"""Benchmarks on this machine (`tidegate bench ...`): figures for notes and docs, never tests.

    tidegate bench produce --events 200000
    tidegate bench ingest --events 500000 --rate 2000 --latency-seconds 60

`bench ingest` runs everything against a private emulator and a temporary lake:
1. **ceiling**: the emulator's own pull + ack rate for N messages with the same client code
   the pipeline uses (synchronous pulls, which the emulator caps at 100 messages, acks in
   bulk), single stream;
2. **throughput**: N messages of the realistic mix (3 types, 2% invalid, 1% duplicates)
   published first, then `ingest --until-idle` from a warm process (imports, GX context and
   the first Beam run paid by a warm-up batch); time from the first pull to the last commit;
3. **latency**: `ingest --follow` while a separate producer process offers R events/s for S
   seconds; per message, Pub/Sub publish time -> its Delta commit; p50 / p99;
4. **aggregate freshness** (same run): per message, publish time -> the aggregate windows it
   touched committed in Delta (the projection after its raw commit); p50 / p99;
5. files the run created, and peak RSS of this process.

`bench replay` builds (once, cached under $TIDEGATE_HOME/bench) raw tables of N events per
source type, committed in 20k-event batches the way ingestion commits them (insert-only MERGE,
watermark base stamped), with 5% out-of-order (<= 2 min) and 1% late (2 h) events, then times
`tidegate replay` of every aggregate from scratch.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from expectations.contracts import ContractRegistry
from infra import emulator as emu
from infra.pubsub import provision, pull_now, subscriber, subscription_path
from tidegate.catalog import Catalog
from tidegate.producer import ProduceConfig, generate, publish


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mix(catalog: Catalog, count: int, seed: int) -> ProduceConfig:
    return ProduceConfig(
        types=tuple(catalog.event_types), count=count, seed=seed, invalid_rate=0.02, duplicate_rate=0.01
    )


def ceiling(catalog: Catalog, address: str, registry: ContractRegistry, events: int) -> float:
    """Pull + ack rate of the emulator for `events` messages, as the pipeline pulls."""
    report = publish(generate(_mix(catalog, events, 99), catalog, registry), catalog.project, address, events)
    assert report.failed == 0, report.errors
    client = subscriber(address)
    total = 0
    started = time.perf_counter()
    for stream in catalog.streams:
        path = subscription_path(catalog.project, stream.subscription)
        ack_ids: list[str] = []
        while True:
            received = pull_now(client, path, 1000)
            if not received:
                break
            ack_ids += [r.ack_id for r in received]
            if len(ack_ids) >= 2500:
                client.acknowledge(request={"subscription": path, "ack_ids": ack_ids})
                total += len(ack_ids)
                ack_ids = []
        if ack_ids:
            client.acknowledge(request={"subscription": path, "ack_ids": ack_ids})
            total += len(ack_ids)
    elapsed = time.perf_counter() - started
    client.close()
    return total / elapsed


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _files(lake: Path) -> int:
    return sum(1 for _ in lake.rglob("*.parquet"))


def bench_ingest(
    catalog: Catalog,
    events: int,
    rate: float,
    latency_seconds: float,
    max_batch: int,
    max_wait: float,
    progress: Any = print,
) -> dict[str, Any]:
    from pipelines.local import BatchOutcome, LocalIngest, LocalOptions, new_run_id
    from tidegate.version import code_version, git_sha
    from transforms.ingest import IngestConfig

    registry = ContractRegistry.from_catalog(catalog)
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    figures: dict[str, Any] = {"events": events, "max_batch": max_batch, "max_wait_s": max_wait}

    def config(lake: Path) -> IngestConfig:
        return IngestConfig(str(lake), new_run_id(), str(catalog.path), code_version(), git_sha())

    with emu.private_emulator(work / "logs") as proc:
        provision(catalog, proc.address)
        progress(f"ceiling: pull + ack of {events:,} messages ...")
        figures["ceiling_msg_per_s"] = round(ceiling(catalog, proc.address, registry, events))

        progress("warm-up batch ...")
        publish(generate(_mix(catalog, 500, 1), catalog, registry), catalog.project, proc.address, 500)
        LocalIngest(
            catalog, proc.address, config(work / "warmup"), LocalOptions(until_idle=0.5, max_wait=0.5)
        ).run()

        progress(f"publishing a backlog of {events:,} messages (2% invalid, 1% duplicates, 3 types) ...")
        publish(generate(_mix(catalog, events, 2), catalog, registry), catalog.project, proc.address, events)
        lake = work / "lake"
        first_pull = time.perf_counter()
        last_commit = [first_pull]
        batches: list[BatchOutcome] = []

        def on_batch(b: BatchOutcome) -> None:
            last_commit[0] = time.perf_counter()
            batches.append(b)

        progress("ingesting the backlog ...")
        summary = LocalIngest(
            catalog,
            proc.address,
            config(lake),
            LocalOptions(max_batch=max_batch, max_wait=max_wait, until_idle=1.0),
            on_batch=on_batch,
        ).run()
        elapsed = last_commit[0] - first_pull
        figures.update(
            ingest_msg_per_s=round(summary.received / elapsed),
            ingest_seconds=round(elapsed, 1),
            received=summary.received,
            raw_written=summary.raw_written,
            duplicates_skipped=summary.duplicates_skipped,
            quarantined=summary.quarantined,
            batches=summary.batches,
            files_created=_files(lake),
            peak_rss_mib_after_backlog=round(_peak_rss_mib()),
        )
        figures["ratio_ingest_to_ceiling"] = round(
            figures["ingest_msg_per_s"] / figures["ceiling_msg_per_s"], 2
        )

        if latency_seconds > 0:
            progress(
                f"latency: --follow while a producer offers {rate:g} events/s for {latency_seconds:g}s ..."
            )
            count = int(rate * latency_seconds)
            env = {**os.environ, "PUBSUB_EMULATOR_HOST": proc.address, "TIDEGATE_CATALOG": str(catalog.path)}
            producer = subprocess.Popen(  # noqa: S603 - our own CLI
                [
                    sys.executable,
                    "-m",
                    "tidegate.cli",
                    "produce",
                    "--count",
                    str(count),
                    "--rate",
                    str(rate),
                    "--invalid-rate",
                    "0.02",
                    "--duplicate-rate",
                    "0.01",
                    "--seed",
                    "3",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
            follow_batches: list[BatchOutcome] = []
            ingest = LocalIngest(
                catalog,
                proc.address,
                config(work / "follow"),
                LocalOptions(max_batch=max_batch, max_wait=max_wait, follow=True),
                on_batch=follow_batches.append,
            )

            def stop_when_drained() -> None:
                producer.wait()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and sum(b.received for b in follow_batches) < count:
                    time.sleep(0.2)
                ingest.stop_requested = True

            watcher = threading.Thread(target=stop_when_drained, daemon=True)
            watcher.start()
            ingest.run()
            watcher.join(timeout=5)
            latencies = [x for b in follow_batches for x in b.publish_latencies]
            figures.update(
                offered_per_s=rate,
                latency_messages=len(latencies),
                latency_p50_s=round(_percentile(latencies, 0.50), 2),
                latency_p99_s=round(_percentile(latencies, 0.99), 2),
                latency_max_s=round(max(latencies, default=float("nan")), 2),
                follow_batches=len(follow_batches),
            )
            fresh = [x for b in follow_batches for x in b.aggregate_latencies]
            figures.update(
                aggregate_freshness_messages=len(fresh),
                aggregate_freshness_p50_s=round(_percentile(fresh, 0.50), 2),
                aggregate_freshness_p99_s=round(_percentile(fresh, 0.99), 2),
                late_pairs=sum(b.late for b in follow_batches),
            )
        figures["peak_rss_mib"] = round(_peak_rss_mib())
    return figures


def _synthetic_raw(
    lake: Path, catalog: Catalog, registry: ContractRegistry, events: int, progress: Any
) -> None:
    """Raw tables of `events` orders and `events` page views, committed like ingestion does."""
    import random
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    import pyarrow as pa

    from lake.rows import stamp_seen_max_event_time
    from lake.tables import raw_schema, raw_uri
    from lake.writer import insert_new

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
    import shutil

    from pipelines.local import new_run_id
    from pipelines.replay import replay
    from tidegate import settings
    from tidegate.version import code_version, git_sha

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
    from infra.backlog import count_backlog

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
