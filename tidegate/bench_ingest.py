"""Ingest benchmarks (`tidegate bench ingest`, `tidegate bench soak`): figures, never tests.

    tidegate bench ingest --events 100000 --latency-seconds 30
    tidegate bench ingest --events 500000 --latency-seconds 0
    tidegate bench soak --minutes 10 --rate 1500

`bench ingest` runs everything against a private emulator and temporary lakes:
1. **ceiling**: the fastest of two plain drains of the same messages: every subscription pulled
   in parallel with as many pulls in flight as the ingest may have (3 threads each, pulls of
   1,000), acks in bulk, nothing else; measured once the emulator has warmed up (after the
   cold start and the warm-up batch), as the ingest is. (Until 2026-12-03 it was measured first,
   one thread per subscription, on a JVM that had just started: 14.5-16k msg/s, where the
   same drains later in the run gave 17-34k. That ceiling was too low, and the ratios reported
   against it too high.)
2. **throughput**: N messages of the realistic mix (3 types, 2% invalid, 1% duplicates)
   published first, then `ingest --until-idle` from a warm process; time from the first pull to
   the last commit; peak RSS; CPU seconds over that ingest (`bench_cpu`): the process, its
   threads by job (`cpu_thread_batch_s`, `_pullers_s`, `_commits_s`, ...), what no Python
   thread accounts for (`cpu_native_threads_s`), and the emulator's JVM (`cpu_emulator_s`);
3. **latency**: `ingest --follow` while a separate producer process offers R events/s for S
   seconds; per message, Pub/Sub publish time -> its Delta commit (p50 / p99); aggregate
   freshness (publish -> the windows it touched committed); and the fixed cost of a batch
   stage by stage, from the run's own `_metrics` rows;
4. **recovery_s**: a backlog, an ingest SIGKILLed at its first raw commit (mid-batch), then a
   restarted `tidegate ingest` process: seconds from the restart until every message has landed
   (checked exactly once against the producer's manifest);
5. **cold_start_s**: a fresh `tidegate ingest --until-idle 1` process for one message: seconds
   from its start (imports included) to its first raw commit.

`bench soak` runs `ingest --follow` for M minutes under a producer offering R events/s and
prints, per minute, publish -> commit p50 / p99, the longest raw commit, RSS and files per table.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from tidegate.bench_cpu import CpuMeter
from tidegate.bench_scratch import scratch_dir
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra import emulator as emu
from tidegate.infra.pubsub import ack_request, provision, pull_now, subscriber, subscription_path
from tidegate.lake.metrics import metrics_uri
from tidegate.lake.tables import ledger_uri, raw_uri
from tidegate.lake.verify import verify
from tidegate.pipelines.local import BatchOutcome, LocalIngest, LocalOptions
from tidegate.pipelines.local.consumer import ConsumerOptions
from tidegate.pipelines.runs import new_run_id
from tidegate.producer import ProduceConfig, generate, publish
from tidegate.transforms.base import IngestConfig
from tidegate.version import code_version, git_sha

Progress = Callable[[str], None]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mix(catalog: Catalog, count: int, seed: int) -> ProduceConfig:
    return ProduceConfig(
        types=tuple(catalog.event_types), count=count, seed=seed, invalid_rate=0.02, duplicate_rate=0.01
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def files(lake: Path) -> int:
    return sum(1 for _ in lake.rglob("*.parquet"))


def files_per_table(lake: Path) -> dict[str, int]:
    """Live data files per Delta table under the lake (what a reader opens)."""

    out: dict[str, int] = {}
    for log_dir in sorted(lake.rglob("_delta_log")):
        out[str(log_dir.parent.relative_to(lake))] = len(DeltaTable(str(log_dir.parent)).file_uris())
    return out


def disk_mib_per_table(lake: Path) -> dict[str, float]:
    """MiB on disk per Delta table: its live files, the files later commits removed (kept for
    time travel until `tidegate maintain` vacuums them) and its log."""
    out: dict[str, float] = {}
    for log_dir in sorted(lake.rglob("_delta_log")):
        table = log_dir.parent
        nested = {p.parent for p in table.rglob("_delta_log")} - {table}  # aggregates/_late etc.
        size = sum(
            f.stat().st_size
            for f in table.rglob("*")
            if f.is_file() and not any(n in f.parents for n in nested)
        )
        out[str(table.relative_to(lake))] = round(size / 2**20, 1)
    return out


def _publish_mix(catalog: Catalog, address: str, count: int, seed: int, manifest: Path | None = None) -> None:
    registry = ContractRegistry.from_catalog(catalog)
    report = publish(
        generate(mix(catalog, count, seed), catalog, registry),
        catalog.project,
        address,
        count,
        manifest=manifest,
    )
    assert report.failed == 0, report.errors


def ceiling(catalog: Catalog, address: str, events: int, runs: int = 2) -> float:
    """The fastest of `runs` plain drains of `events` messages of the mix (module docstring, 1).
    Drains vary by ±30% from one to the next on this VM; right after the emulator started they
    ran at 8.5-16k msg/s (its JVM still compiling), so call this on a warm emulator."""
    pullers = ConsumerOptions().pullers_per_subscription
    return max(_drain_once(catalog, address, events, seed, pullers) for seed in range(99, 99 + runs))


def _drain_once(catalog: Catalog, address: str, events: int, seed: int, pullers: int) -> float:
    _publish_mix(catalog, address, events, seed)
    client = subscriber(address)
    total = [0]
    lock = threading.Lock()

    def drain(path: str) -> None:
        ack_ids: list[str] = []
        while True:
            received = pull_now(client, path, 1000)
            if not received:
                break
            ack_ids += [r.ack_id for r in received]
            if len(ack_ids) >= 2500:
                client.acknowledge(request=ack_request(path, ack_ids))
                with lock:
                    total[0] += len(ack_ids)
                ack_ids = []
        if ack_ids:
            client.acknowledge(request=ack_request(path, ack_ids))
            with lock:
                total[0] += len(ack_ids)

    paths = [subscription_path(catalog.project, s.subscription) for s in catalog.streams]
    threads = [threading.Thread(target=drain, args=(p,)) for p in paths for _ in range(pullers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    client.close()
    return total[0] / elapsed


def stage_costs(lake: Path, run_id: str) -> dict[str, float]:
    """Mean milliseconds per batch of each stage, from the run's `_metrics` rows: the Beam
    distributions (decode, contract, GX, each commit) and the driver's own stages."""

    m = pl.read_delta(metrics_uri(str(lake))).filter(pl.col("run_id") == run_id)
    batches = max(1, m.get_column("batch_id").n_unique())
    dist = (
        m.filter((pl.col("kind") == "distribution") & pl.col("name").str.ends_with("_ms"))
        .group_by("name")
        .agg(pl.col("value").sum())
    )
    out = {f"stage_{n.removesuffix('_ms')}_ms": round(v / batches, 1) for n, v in dist.iter_rows()}
    driver = (
        m.filter((pl.col("step") == "driver") & (pl.col("kind") == "counter"))
        .group_by("name")
        .agg(pl.col("value").sum())
    )
    out |= {f"stage_{n.removesuffix('_s')}_ms": round(1000 * v / batches, 1) for n, v in driver.iter_rows()}
    out |= projection_costs(lake, run_id)
    return dict(sorted(out.items()))


def projection_costs(lake: Path, run_id: str) -> dict[str, float]:
    """Mean milliseconds of the run's aggregate and view commits (off the batch's path, on the
    projector's thread), from the tables' commit logs: delta-rs's own `execution_time_ms`."""
    out: dict[str, float] = {}
    for kind, folder in (("aggregate", "aggregates"), ("view", "views")):
        times = [
            float(c["operationMetrics"]["execution_time_ms"])
            for log_dir in sorted((lake / folder).glob("*/_delta_log"))
            if not log_dir.parent.name.startswith("_")  # aggregates/_late: no projection commit
            for c in DeltaTable(str(log_dir.parent)).history()
            if c.get("tidegate_run_id") == run_id
            and c.get("operation") in ("MERGE", "WRITE")
            and "execution_time_ms" in c.get("operationMetrics", {})
        ]
        if times:
            out[f"stage_{kind}_commit_ms"] = round(sum(times) / len(times), 1)
    return out


def _config(catalog: Catalog, lake: Path) -> IngestConfig:

    return IngestConfig(str(lake), new_run_id(), str(catalog.path), code_version(), git_sha())


def _env(address: str, catalog: Catalog, **extra: str) -> dict[str, str]:
    return {**os.environ, "PUBSUB_EMULATOR_HOST": address, "TIDEGATE_CATALOG": str(catalog.path), **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tidegate.cli", *args]


def _producer(address: str, catalog: Catalog, count: int, rate: float, seed: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own CLI
        _cli(
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
            str(seed),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(address, catalog),
    )


def follow_while_producing(
    catalog: Catalog,
    address: str,
    lake: Path,
    count: int,
    rate: float,
    options: LocalOptions,
    on_batch: Callable[[BatchOutcome], None],
    keep: bool = True,
) -> tuple[LocalIngest, list[BatchOutcome]]:
    """`ingest --follow` in this process while a producer process offers `rate` events/s.

    `keep`: return every batch's outcome (its per-message publish times and latencies). A soak
    passes False: 900k messages' worth of float lists is ~70 MB of the process's RSS that the
    ingest does not hold, and it would count as the ingest's growth."""
    producer = _producer(address, catalog, count, rate, seed=3)
    batches: list[BatchOutcome] = []
    received = [0]

    def each(b: BatchOutcome) -> None:
        received[0] += b.received
        if keep:
            batches.append(b)
        on_batch(b)

    ingest = LocalIngest(catalog, address, _config(catalog, lake), options, on_batch=each)

    def stop_when_drained() -> None:
        producer.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and received[0] < count:
            time.sleep(0.2)
        ingest.stop_requested = True

    watcher = threading.Thread(target=stop_when_drained, daemon=True)
    watcher.start()
    ingest.run()
    watcher.join(timeout=5)
    return ingest, batches


def recovery(catalog: Catalog, address: str, work: Path, events: int, progress: Progress) -> dict[str, Any]:
    """SIGKILL at the first raw commit, restart, seconds until everything landed (module doc, 4)."""

    manifest = work / "recovery-manifest.jsonl"
    _publish_mix(catalog, address, events, 13, manifest)
    lake = work / "recovery"
    args = ["ingest", "--lake", str(lake), "--emulator", address]
    progress(f"recovery: {events:,} messages, SIGKILL at the first raw commit ...")
    killed = subprocess.run(  # noqa: S603 - our own CLI
        _cli(*args, "--until-idle", "1"),
        env=_env(address, catalog, TIDEGATE_FAULT_INJECT="before_commit"),
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    restart = time.time()
    progress("recovery: restarting ingest ...")
    subprocess.run(  # noqa: S603 - our own CLI
        _cli(*args, "--until-idle", "15"),
        env=_env(address, catalog),
        capture_output=True,
        timeout=600,
        check=True,
    )
    ledger = pl.read_delta(ledger_uri(str(lake)))
    landed = ledger.get_column("committed_at").max()
    report = verify(str(lake), catalog.event_types, manifest)
    return {
        "recovery_s": round(landed.timestamp() - restart, 2)
        if isinstance(landed, datetime)
        else float("nan"),
        "recovery_exactly_once": report.ok,
    }


def cold_start(catalog: Catalog, address: str, work: Path) -> float:
    """One message, a fresh `tidegate ingest --until-idle 1`: start -> first raw commit (module doc, 5)."""

    registry = ContractRegistry.from_catalog(catalog)
    config = ProduceConfig(types=("shop.order.placed",), count=1, seed=17)
    publish(generate(config, catalog, registry), catalog.project, address, 1)
    lake = work / "cold"
    started = time.time()
    subprocess.run(  # noqa: S603 - our own CLI
        _cli("ingest", "--lake", str(lake), "--emulator", address, "--until-idle", "1"),
        env=_env(address, catalog),
        capture_output=True,
        timeout=300,
        check=True,
    )
    first = DeltaTable(raw_uri(str(lake), "shop.order.placed")).history()[-1]["timestamp"] / 1000
    return round(float(first) - started, 2)


def bench_ingest(
    catalog: Catalog,
    events: int,
    rate: float,
    latency_seconds: float,
    max_batch: int,
    max_wait: float,
    progress: Progress = print,
    recovery_events: int = 20_000,
) -> dict[str, Any]:
    work = scratch_dir("tidegate-bench-")
    figures: dict[str, Any] = {"events": events, "max_batch": max_batch, "max_wait_s": max_wait}

    with emu.private_emulator(work / "logs") as proc:
        provision(catalog, proc.address)
        progress("cold start: one message, a fresh ingest process ...")
        figures["cold_start_s"] = cold_start(catalog, proc.address, work)

        progress("warm-up batch ...")
        _publish_mix(catalog, proc.address, 500, 1)
        LocalIngest(
            catalog, proc.address, _config(catalog, work / "warmup"), LocalOptions(until_idle=0.5)
        ).run()

        progress(f"ceiling: parallel plain drains of {events:,} messages ...")
        figures["ceiling_msg_per_s"] = round(ceiling(catalog, proc.address, events))

        progress(f"publishing a backlog of {events:,} messages (2% invalid, 1% duplicates, 3 types) ...")
        _publish_mix(catalog, proc.address, events, 2)
        lake = work / "lake"
        first_pull = time.perf_counter()
        last_commit = [first_pull]

        def on_batch(b: BatchOutcome) -> None:
            last_commit[0] = time.perf_counter()

        progress("ingesting the backlog ...")
        with CpuMeter(other_pid=proc.pid) as cpu:
            summary = LocalIngest(
                catalog,
                proc.address,
                _config(catalog, lake),
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
            files_created=files(lake),
            peak_rss_mib_after_backlog=round(peak_rss_mib()),
        )
        figures["ratio_ingest_to_ceiling"] = round(
            figures["ingest_msg_per_s"] / figures["ceiling_msg_per_s"], 2
        )
        figures |= cpu.figures(messages=summary.received)

        if latency_seconds > 0:
            progress(
                f"latency: --follow while a producer offers {rate:g} events/s for {latency_seconds:g}s ..."
            )
            count = int(rate * latency_seconds)
            ingest, batches = follow_while_producing(
                catalog,
                proc.address,
                work / "follow",
                count,
                rate,
                LocalOptions(max_batch=max_batch, max_wait=max_wait, follow=True, until_idle=None),
                lambda b: None,
            )
            ingest_latency_figures(figures, batches)
            figures |= stage_costs(work / "follow", ingest.config.run_id)

        figures |= recovery(catalog, proc.address, work, recovery_events, progress)
        figures["peak_rss_mib"] = round(peak_rss_mib())
    return figures


def ingest_latency_figures(figures: dict[str, Any], batches: list[BatchOutcome]) -> None:
    latencies = [x for b in batches for x in b.publish_latencies]
    fresh = [x for b in batches for x in b.aggregate_latencies]
    figures.update(
        latency_messages=len(latencies),
        latency_p50_s=round(percentile(latencies, 0.50), 2),
        latency_p99_s=round(percentile(latencies, 0.99), 2),
        latency_max_s=round(max(latencies, default=float("nan")), 2),
        follow_batches=len(batches),
        aggregate_freshness_messages=len(fresh),
        aggregate_freshness_p50_s=round(percentile(fresh, 0.50), 2),
        aggregate_freshness_p99_s=round(percentile(fresh, 0.99), 2),
        late_pairs=sum(b.late for b in batches),
    )


def bench_soak(catalog: Catalog, minutes: float, rate: float, progress: Progress = print) -> dict[str, Any]:
    """`ingest --follow` for `minutes` at `rate` events/s: per-minute latency, commits, RSS, files."""
    work = scratch_dir("tidegate-soak-")
    count = int(rate * minutes * 60)
    lake = work / "lake"
    per_minute: dict[int, dict[str, Any]] = {}
    started = time.monotonic()

    def on_batch(b: BatchOutcome) -> None:
        minute = int((time.monotonic() - started) // 60) + 1
        # 8 bytes a latency (a list of floats: ~32), the harness's own memory is the ingest's RSS
        m = per_minute.setdefault(minute, {"latencies": array("d"), "rss": array("d")})
        m["latencies"].extend(b.publish_latencies)
        m["rss"].append(rss_mib())

    with emu.private_emulator(work / "logs") as proc:
        provision(catalog, proc.address)
        progress(f"soak: --follow for {minutes:g} min while a producer offers {rate:g} events/s ...")
        ingest, _batches = follow_while_producing(
            catalog,
            proc.address,
            lake,
            count,
            rate,
            LocalOptions(follow=True, until_idle=None),
            on_batch,
            keep=False,
        )
    figures: dict[str, Any] = {"minutes": minutes, "rate": rate, "events": count}
    for minute, m in sorted(per_minute.items()):
        figures[f"m{minute:02d}_p50_s"] = round(percentile(m["latencies"], 0.5), 2)
        figures[f"m{minute:02d}_p99_s"] = round(percentile(m["latencies"], 0.99), 2)
        # the minute's RSS: the median of one sample after each batch (one sample alone may
        # catch a checkpoint's or a view update's transient buffers), and the highest sample
        figures[f"m{minute:02d}_rss_mib"] = round(statistics.median(m["rss"]))
        figures[f"m{minute:02d}_rss_max_mib"] = round(max(m["rss"]))
    figures |= _raw_commit_ms_per_minute(lake, ingest.config.run_id)
    figures |= {f"files_{k}": v for k, v in files_per_table(lake).items()}
    figures |= {f"disk_mib_{k}": v for k, v in disk_mib_per_table(lake).items()}
    # the minutes under load: a last, partial minute of draining after the producer stopped
    # would flatter the ratios
    minutes_seen = [m for m in sorted(per_minute) if m <= math.ceil(minutes)]
    if len(minutes_seen) >= 3:
        second, last = per_minute[minutes_seen[1]], per_minute[minutes_seen[-1]]
        figures["p99_last_over_second"] = round(
            percentile(last["latencies"], 0.99) / percentile(second["latencies"], 0.99), 2
        )
        figures["rss_last_over_second"] = round(
            statistics.median(last["rss"]) / statistics.median(second["rss"]), 2
        )
    figures["peak_rss_mib"] = round(peak_rss_mib())
    return figures


def _raw_commit_ms_per_minute(lake: Path, run_id: str) -> dict[str, float]:
    """The longest raw commit per minute of the run, from its `_metrics` rows."""

    m = pl.read_delta(metrics_uri(str(lake))).filter(
        (pl.col("run_id") == run_id) & (pl.col("name") == "raw_commit_ms")
    )
    if m.is_empty():
        return {}
    first = m.get_column("recorded_at").min()
    per = (
        m.with_columns(
            ((pl.col("recorded_at") - first).dt.total_seconds() // 60 + 1).cast(pl.Int64).alias("minute")
        )
        .group_by("minute")
        .agg(pl.col("max").max())
        .sort("minute")
    )
    return {f"m{int(k):02d}_raw_commit_max_ms": float(v) for k, v in per.iter_rows()}
