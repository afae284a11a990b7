"""Per-run pipeline metrics as data: `<lake>/_metrics`, one row per metric per micro-batch.

Rows come from Beam's own metrics of each batch's pipeline (counters at every hop: `events_in`,
`rejected_envelope|contract|expectations`, `raw_written`, `duplicates_skipped`, `quarantined`
and `quarantined_<stage>_<rule>`; the `raw_commit_ms` distribution), plus the batch's publish ->
commit latency distribution (`publish_to_commit_s`: count, sum, min, max, p50, p99).

    lake.read.Lake(root).scan("_metrics").filter(pl.col("name") == "quarantined").collect()
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from tidegate.lake.delta import OpenTables
from tidegate.lake.tables import METRICS, METRICS_SCHEMA
from tidegate.lake.writer import append


def metrics_uri(lake: str) -> str:
    return METRICS.uri(lake)


def _step(key: Any) -> str:
    step = str(getattr(key, "step", "") or "")
    return step.split("/")[1] if step.count("/") >= 1 and step.startswith("Ingest/") else step


def beam_metric_rows(query: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from `PipelineResult.metrics().query()` (the tidegate namespace only)."""
    rows: list[dict[str, Any]] = []
    for c in query.get("counters", []):
        if c.key.metric.namespace != "tidegate":
            continue
        value = c.committed if c.committed is not None else c.attempted
        rows.append(
            {"step": _step(c.key), "name": c.key.metric.name, "kind": "counter", "value": float(value or 0)}
        )
    for d in query.get("distributions", []):
        if d.key.metric.namespace != "tidegate":
            continue
        r = d.committed if d.committed is not None else d.attempted
        if r is None or not r.count:
            continue
        rows.append(
            {
                "step": _step(d.key),
                "name": d.key.metric.name,
                "kind": "distribution",
                "value": float(r.sum),
                "count": int(r.count),
                "min": float(r.min),
                "max": float(r.max),
            }
        )
    return rows


_COMMIT_STEPS = {"raw": "WriteRawHistory", "quarantine": "WriteQuarantine", "quality": "WriteQuality"}


def commit_metric_rows(commits: list[Any]) -> list[dict[str, Any]]:
    """The writers' counters and commit-time distributions from their `TableCommit`s: what the
    writers put in Beam metrics when they commit inside the bundle (streaming mode), for local
    mode's side-by-side commits, which finish after the bundle (`parallel_commits`)."""
    rows: list[dict[str, Any]] = []

    def counter(kind: str, name: str, value: float) -> None:
        rows.append({"step": _COMMIT_STEPS[kind], "name": name, "kind": "counter", "value": float(value)})

    for kind in ("raw", "quarantine", "quality"):
        done = [c for c in commits if c.kind == kind]
        if not done:
            continue
        if kind == "raw":
            counter(kind, "raw_written", sum(c.inserted for c in done))
            counter(kind, "duplicates_skipped", sum(c.received - c.inserted for c in done))
        if kind == "quarantine":
            counter(kind, "quarantined", sum(c.inserted for c in done))
        ms = [c.ms for c in done]
        rows.append(
            {
                "step": _COMMIT_STEPS[kind],
                "name": f"{kind}_commit_ms",
                "kind": "distribution",
                "value": float(sum(ms)),
                "count": len(ms),
                "min": float(min(ms)),
                "max": float(max(ms)),
            }
        )
    return rows


def latency_row(latencies: list[float]) -> dict[str, Any]:
    values = sorted(latencies)
    if not values:
        return {
            "step": "driver",
            "name": "publish_to_commit_s",
            "kind": "distribution",
            "value": 0.0,
            "count": 0,
        }

    def q(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))]

    return {
        "step": "driver",
        "name": "publish_to_commit_s",
        "kind": "distribution",
        "value": float(sum(values)),
        "count": len(values),
        "min": values[0],
        "max": values[-1],
        "p50": q(0.50),
        "p99": q(0.99),
    }


def write_metrics(
    lake: str,
    run_id: str,
    batch_id: str,
    rows: list[dict[str, Any]],
    storage: dict[str, str] | None,
    opened: OpenTables | None = None,
) -> None:

    now = datetime.now(UTC)
    full = [{"run_id": run_id, "batch_id": batch_id, "recorded_at": now, **r} for r in rows]
    table = pa.Table.from_pylist(full, schema=METRICS_SCHEMA)
    append(
        metrics_uri(lake),
        table,
        metadata={"tidegate_run_id": run_id, "tidegate_table": "_metrics"},
        storage_options=storage,
        opened=opened,
    )
