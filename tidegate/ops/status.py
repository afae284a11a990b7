"""`tidegate status`: the lake at a glance, for a terminal (rich) or a machine (--json).

Per table: version, rows, last commit and its age, and its owner from the catalog (a raw table's
stream owner; an aggregate's, its source stream's; none for the tables every stream shares).
Then the health figures an operator is paged on: ledger balance (received = written +
duplicates + quarantined), quarantine rate, late events and late (event, window) pairs per
aggregate, data quality per event type and per expectation (tidegate.ops.figures defines both),
and publish -> commit latency percentiles of the latest ingest run (from the raw rows
themselves: ingest_time - pubsub_publish_time). `monitors`: the breaches the stream monitors
recorded in the last 24 h (tidegate.ops.monitors; `tidegate monitor` evaluates them), newest
window first; an empty list when there were none.

Subscription backlog (`backlog()`) comes from Cloud Monitoring on GCP and from a snapshot count
on the emulator (tidegate/infra/backlog.py says how, and why that count is safe). The count runs only
while this process holds the lake's ingest lock: a running local ingest is consuming the
subscriptions, and the count's final seek would take its leases back.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from tidegate.infra.backlog import COUNT_LIMIT, BacklogReport, emulator_backlog, monitoring_backlog
from tidegate.infra.pubsub import desired_subscriptions
from tidegate.lake.delta import scan_table
from tidegate.lake.lineage import owner_json, table_owner
from tidegate.lake.lock import LakeBusy, lake_lock
from tidegate.lake.read import Lake
from tidegate.ops import figures, monitors

BACKLOG_MODES = ("auto", "count", "monitoring", "off")


def backlog(
    lake: Lake,
    mode: str,
    *,
    address: str,
    project: str,
    emulator_explicit: bool,
    limit: int = COUNT_LIMIT,
) -> BacklogReport:
    """Backlog of every catalog subscription plus the dead-letter subscription.

    mode `auto`: Cloud Monitoring when the lake is remote (gs://...) and no emulator was named
    (--emulator / $PUBSUB_EMULATOR_HOST), else a count on the emulator at `address`."""
    subs = [s.name for s in desired_subscriptions(lake.catalog)]  # the streams' + the dead-letter one
    if mode == "off":
        return BacklogReport("off", [], "not asked for (--backlog off)")
    remote = "://" in lake.root and not lake.root.startswith("file://")
    if mode == "monitoring" or (mode == "auto" and remote and not emulator_explicit):
        return monitoring_backlog(project, subs)
    local_root = Path(lake.root.removeprefix("file://"))
    if not remote and not local_root.exists():  # no lake yet, so no ingest either
        return emulator_backlog(address, project, subs, limit)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lake_lock(lake.root))
        except LakeBusy:  # any other refusal (the lake is a file, unwritable) is the user's to fix
            return BacklogReport(
                "emulator count",
                [],
                "a local `tidegate ingest` is consuming these subscriptions right now (it holds "
                "the lake's ingest lock), and counting would take its leases back: its progress "
                "is in the ledger and latency lines; run status again once it stops",
            )
        return emulator_backlog(address, project, subs, limit)


def _rows(dt: DeltaTable, lake: Lake) -> int:
    """A table's rows from its Delta log (each add action's `num_records`): no data read, so
    status costs the same on a year of history; a scan only where a file has no statistics."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    counts = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None]
    if actions.num_rows and all(n is not None for n in counts):
        return int(sum(counts))
    if not actions.num_rows:
        return 0
    return int(scan_table(dt, lake.storage_options).select(pl.len()).collect(engine="streaming").item())


def _table(lake: Lake, name: str) -> dict[str, Any] | None:
    try:
        dt = DeltaTable(lake.uri(name), storage_options=lake.storage_options)
    except TableNotFoundError:
        return None
    last = dt.history(limit=1)[0]
    when = datetime.fromtimestamp(last["timestamp"] / 1000, UTC)
    rows = _rows(dt, lake)
    return {
        "table": name,
        "version": dt.version(),
        "rows": int(rows),
        "files": len(dt.file_uris()),
        "last_commit": when.isoformat(),
        "age_seconds": round((datetime.now(UTC) - when).total_seconds(), 1),
        "last_operation": last.get("operation"),
        "last_run_id": last.get("tidegate_run_id"),
        "owner": owner_json(table_owner(lake.catalog, lake.tables.spec(name))),
    }


def status(lake: Lake) -> dict[str, Any]:
    tables = [t for t in (_table(lake, name) for name in lake.table_names()) if t is not None]
    present = {t["table"] for t in tables}
    out: dict[str, Any] = {"lake": lake.root, "tables": tables}
    if "_ledger" in present:
        led = lake.ledger().collect()
        sums = led.select(
            pl.col(
                "received", "raw_written", "duplicates_skipped", "quarantined", "quarantine_duplicates"
            ).sum()
        ).row(0, named=True)
        accounted = (
            sums["raw_written"]
            + sums["duplicates_skipped"]
            + sums["quarantined"]
            + sums["quarantine_duplicates"]
        )
        last_run = led.sort("committed_at").get_column("run_id")[-1]
        conflicts = (
            int(led.get_column("id_conflicts").fill_null(0).sum()) if "id_conflicts" in led.columns else 0
        )
        out["ledger"] = {
            **{k: int(v) for k, v in sums.items()},
            "id_conflicts": conflicts,
            "batches": led.height,
            "balanced": accounted == sums["received"],
            "quarantine_rate": round(sums["quarantined"] / sums["received"], 4) if sums["received"] else 0.0,
            "latest_run": last_run,
        }
        lat = []
        for t in lake.catalog.event_types:
            if f"raw/{t}" in present:
                lat.append(
                    lake.raw(t)
                    .filter(pl.col("run_id") == last_run)
                    .select(
                        (pl.col("ingest_time") - pl.col("pubsub_publish_time")).dt.total_milliseconds() / 1000
                    )
                    .collect(engine="streaming")  # the latest run's rows, never all history at once
                    .to_series()
                )
        series = pl.concat(lat).drop_nulls() if lat else pl.Series([], dtype=pl.Float64)
        out["latency_seconds"] = {
            "run": last_run,
            "events": series.len(),
            "p50": round(float(series.quantile(0.5) or 0.0), 2) if series.len() else None,
            "p99": round(float(series.quantile(0.99) or 0.0), 2) if series.len() else None,
        }
    if "_metrics" in present and "ledger" in out:
        run = out["ledger"]["latest_run"]
        counters = (
            lake.metrics()
            .filter((pl.col("run_id") == run) & (pl.col("kind") == "counter"))
            .group_by("name")
            .agg(pl.col("value").sum())
            .sort("name")
            .collect()
        )
        out["hops"] = {"run": run, **{n: int(v) for n, v in counters.iter_rows()}}
    quality = figures.data_quality(lake, present)
    if quality is not None:
        out["data_quality"] = quality
    late = figures.late(lake, present)
    for spec in lake.catalog.aggregates:
        raw_rows = next((t["rows"] for t in tables if t["table"] == f"raw/{spec.source}"), 0)
        mine = late["per_aggregate"][spec.name]
        mine["late_rate"] = round(mine["events"] / raw_rows, 4) if raw_rows else 0.0  # of its source's events
    out["late"] = late
    out["monitors"] = monitors.recent(lake)
    return out
