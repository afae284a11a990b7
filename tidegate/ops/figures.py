"""One definition of each figure users see: `tidegate status`, the report and verify read these.

- **Data quality** is counted per *event*, the way a person reads it: of the events an event
  type's Great Expectations suite validated, the share that passed every expectation (the rest
  are in the quarantine under stage `expectations`); and per *expectation*: the share of the
  events it checked that met it. (Status used to print the share of (batch, expectation) runs
  that passed: 70% when 98.5% of the events were fine.)
- **Late** is counted two ways, always named: *late events* (distinct events excluded from at
  least one aggregate) and *late (event, window) pairs* (what the late ledger holds: one event
  is late for each window of each aggregate it misses; a sliding window counts several).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from tidegate.lake.read import Lake


def data_quality(lake: Lake, present: set[str]) -> dict[str, Any] | None:
    """Per event type and per expectation; None without a `_quality` table."""
    if "_quality" not in present:
        return None
    q = lake.quality().collect()
    if q.is_empty():
        return None
    validated = (
        q.group_by("batch_id", "event_type")
        .agg(pl.col("element_count").max())
        .group_by("event_type")
        .agg(pl.col("element_count").sum().alias("events"))
    )
    failed: dict[str, int] = {}
    if "quarantine" in present:
        failed = dict(
            lake.quarantine()
            .filter(pl.col("stage") == "expectations")
            .group_by("event_type")
            .len()
            .collect()
            .iter_rows()
        )
    per_type: dict[str, dict[str, Any]] = {}
    for event_type, events in validated.sort("event_type").iter_rows():
        bad = int(failed.get(event_type, 0))
        per_type[event_type] = {
            "events": int(events),
            "failed": bad,
            "pass_rate": round(1 - bad / events, 4) if events else None,
        }
    per_expectation = (
        q.group_by("event_type", "expectation", "column")
        .agg(
            pl.col("element_count").sum().alias("events"),
            pl.col("unexpected_count").sum().alias("unexpected"),
        )
        .with_columns((1 - pl.col("unexpected") / pl.col("events")).round(4).alias("pass_rate"))
        .sort("pass_rate", "event_type", "expectation", nulls_last=True)
    )
    events = sum(int(v["events"]) for v in per_type.values())
    bad = sum(int(v["failed"]) for v in per_type.values())
    return {
        "events": events,
        "failed": bad,
        "pass_rate": round(1 - bad / events, 4) if events else None,
        "per_event_type": per_type,
        "per_expectation": per_expectation.to_dicts(),
    }


def late(lake: Lake, present: set[str]) -> dict[str, Any]:
    """Late events and late (event, window) pairs, in all and per aggregate."""
    names = [a.name for a in lake.catalog.aggregates]
    empty = {"events": 0, "pairs": 0}
    if "aggregates/_late" not in present:
        return {**empty, "per_aggregate": {n: dict(empty) for n in names}}
    scan = lake.late()
    if "event_source" not in scan.collect_schema().names():  # a ledger from before sources were kept
        scan = scan.with_columns(pl.lit(None, pl.String).alias("event_source"))
    ledger = scan.select("aggregate", "event_type", "event_source", "event_id").collect()
    identity = ["event_type", "event_source", "event_id"]
    per = {
        name: {"events": int(events), "pairs": int(pairs)}
        for name, events, pairs in ledger.group_by("aggregate")
        .agg(pl.struct(identity).n_unique().alias("events"), pl.len().alias("pairs"))
        .iter_rows()
    }
    return {
        "events": ledger.select(pl.struct(identity).n_unique()).item() if ledger.height else 0,
        "pairs": ledger.height,
        "per_aggregate": {n: per.get(n, dict(empty)) for n in names},
    }
