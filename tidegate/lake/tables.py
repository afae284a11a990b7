"""Layout and schemas of the lake's Delta tables.

    <lake>/raw/<event type>   one append-only table per type: envelope + lineage + payload columns,
                              partitioned by event_date; exactly one row per ce-id
    <lake>/quarantine         every rejected message once (key: subscription + message id),
                              partitioned by quarantine_date
    <lake>/_ledger            one row per ingested micro-batch: received / written / skipped / quarantined
    <lake>/_quality           every batch's Great Expectations results, one row per expectation
                              (success, unexpected count and percent, batch and run ids)
    <lake>/aggregates/<name>  one table per catalog aggregate: window, keys, metrics, lineage
    <lake>/aggregates/_late   the late ledger: every (event, window) excluded from an aggregate
                              because it arrived after the watermark + allowed lateness

The raw schema is derived from the contracts: the envelope and lineage columns first, then
the payload fields of the latest version. A payload column is NOT NULL only if every version
requires it (so rows of older versions read as null in columns added later).

`<lake>` is a local path or any URI delta-rs understands (`gs://bucket/lake`, `file:///...`).
"""

from __future__ import annotations

import pyarrow as pa

from tidegate.errors import ConfigError
from tidegate.expectations.contracts import EventTypeContracts

UTC_TS = pa.timestamp("us", tz="UTC")

# Envelope and lineage columns every raw table starts with (name, type, nullable, doc).
ENVELOPE_COLUMNS: list[tuple[str, pa.DataType, bool, str]] = [
    ("event_id", pa.string(), False, "CloudEvents id (ce-id): the deduplication key"),
    ("event_time", UTC_TS, False, "CloudEvents time (ce-time), UTC"),
    ("event_date", pa.date32(), False, "UTC date of event_time (partition column)"),
    ("event_source", pa.string(), False, "CloudEvents source (ce-source)"),
    ("event_subject", pa.string(), True, "CloudEvents subject (ce-subject)"),
    ("schema_version", pa.int32(), False, "contract version named by ce-dataschema"),
    ("trace_id", pa.string(), True, "W3C trace id from ce-traceparent"),
    ("traceparent", pa.string(), True, "W3C traceparent as received"),
    ("pubsub_message_id", pa.string(), False, "Pub/Sub message id of the copy that landed"),
    ("pubsub_publish_time", UTC_TS, True, "when Pub/Sub accepted the message"),
    ("subscription", pa.string(), False, "subscription the message was read from"),
    ("ingest_time", UTC_TS, False, "when tidegate committed the row"),
    (
        "seen_max_event_time",
        UTC_TS,
        True,
        "latest event_time of this type already in the table when the row was committed "
        "(capped at the commit's clock): the row's watermark for an aggregate is this minus the "
        "aggregate's out_of_orderness (see lake.aggregates)",
    ),
    ("run_id", pa.string(), False, "ingest run (see the _ledger table and commit metadata)"),
    ("batch_id", pa.string(), False, "micro-batch within the run"),
]
ENVELOPE_NAMES = frozenset(c[0] for c in ENVELOPE_COLUMNS)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("pubsub_message_id", pa.string(), nullable=False),
        pa.field("subscription", pa.string(), nullable=False),
        pa.field("pubsub_publish_time", UTC_TS),
        pa.field("quarantined_at", UTC_TS, nullable=False),
        pa.field("quarantine_date", pa.date32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field(
            "failures",
            pa.list_(
                pa.struct(
                    [
                        pa.field("stage", pa.string()),
                        pa.field("rule", pa.string()),
                        pa.field("field", pa.string()),
                        pa.field("message", pa.string()),
                    ]
                )
            ),
            nullable=False,
        ),
        pa.field("event_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("schema_version", pa.int32()),
        pa.field("event_time", UTC_TS),
        pa.field("attributes", pa.map_(pa.string(), pa.string()), nullable=False),
        pa.field("payload_size", pa.int64(), nullable=False),
        pa.field("payload_sha256", pa.string(), nullable=False),
        pa.field("payload_preview", pa.string()),
        pa.field("payload_encrypted", pa.binary(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
    ]
)

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("started_at", UTC_TS, nullable=False),
        pa.field("committed_at", UTC_TS, nullable=False),
        pa.field("subscriptions", pa.list_(pa.string()), nullable=False),
        pa.field("received", pa.int64(), nullable=False),
        pa.field("raw_written", pa.int64(), nullable=False),
        pa.field("duplicates_skipped", pa.int64(), nullable=False),
        pa.field("quarantined", pa.int64(), nullable=False),
        pa.field("quarantine_duplicates", pa.int64(), nullable=False),
        pa.field("raw_versions", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("quarantine_version", pa.int64()),
        pa.field("message_digest", pa.string(), nullable=False),
    ]
)


def join(lake: str, *parts: str) -> str:
    """Join path parts onto a lake root that may be a local path or a URI."""
    return "/".join([lake.rstrip("/"), *parts])


def raw_uri(lake: str, event_type: str) -> str:
    return join(lake, "raw", event_type)


def quarantine_uri(lake: str) -> str:
    return join(lake, "quarantine")


def ledger_uri(lake: str) -> str:
    return join(lake, "_ledger")


LATE_SCHEMA = pa.schema(
    [
        pa.field("aggregate", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", UTC_TS, nullable=False),
        pa.field("window_start", UTC_TS, nullable=False),
        pa.field("window_end", UTC_TS, nullable=False),
        pa.field("watermark", UTC_TS, nullable=False),
        pa.field("late_by_seconds", pa.float64(), nullable=False),
        pa.field("raw_version", pa.int64(), nullable=False),
        pa.field("recorded_at", UTC_TS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)
LATE_KEYS = ("aggregate", "event_id", "window_start")

QUALITY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("expectation", pa.string(), nullable=False),
        pa.field("column", pa.string()),
        pa.field("success", pa.bool_(), nullable=False),
        pa.field("element_count", pa.int64(), nullable=False),
        pa.field("unexpected_count", pa.int64(), nullable=False),
        pa.field("unexpected_percent", pa.float64(), nullable=False),
        pa.field("suite_fingerprint", pa.string()),
        pa.field("validated_at", UTC_TS, nullable=False),
        pa.field("quality_date", pa.date32(), nullable=False),
    ]
)
QUALITY_KEYS = ("batch_id", "event_type", "expectation", "column")


def quality_uri(lake: str) -> str:
    return join(lake, "_quality")


def aggregate_uri(lake: str, name: str) -> str:
    return join(lake, "aggregates", name)


def late_uri(lake: str) -> str:
    return join(lake, "aggregates", "_late")


def payload_fields(contracts: EventTypeContracts) -> list[pa.Field]:
    """Payload columns for a type across all its versions (latest version's order)."""
    latest = contracts.latest
    required_everywhere: set[str] = set(latest.field_names)
    for c in contracts.versions.values():
        names = {f.name for f in c.arrow_schema if not f.nullable}
        required_everywhere &= names
    out: list[pa.Field] = []
    for f in latest.arrow_schema:
        if f.name in ENVELOPE_NAMES:
            raise ConfigError(
                f"{contracts.event_type}: payload field {f.name!r} collides with an envelope column",
                hint="rename the field (with an alias) in a new contract version",
            )
        out.append(f.with_nullable(f.name not in required_everywhere))
    return out


def raw_schema(contracts: EventTypeContracts) -> pa.Schema:
    envelope = [
        pa.field(n, t, nullable=nullable, metadata={"doc": doc}) for n, t, nullable, doc in ENVELOPE_COLUMNS
    ]
    return pa.schema(envelope + payload_fields(contracts))


__all__ = [
    "ENVELOPE_COLUMNS",
    "LATE_KEYS",
    "LATE_SCHEMA",
    "LEDGER_SCHEMA",
    "QUALITY_KEYS",
    "QUALITY_SCHEMA",
    "QUARANTINE_SCHEMA",
    "aggregate_uri",
    "late_uri",
    "ledger_uri",
    "quality_uri",
    "quarantine_uri",
    "raw_schema",
    "raw_uri",
]


def table_uris(lake: str, event_types: list[str], aggregates: list[str]) -> list[str]:
    """Every table a lake of this catalog can hold (whether it exists yet or not): what
    `tidegate maintain` and the follow-mode compactor walk."""
    uris = [raw_uri(lake, t) for t in event_types] + [quarantine_uri(lake), ledger_uri(lake)]
    uris += [aggregate_uri(lake, a) for a in aggregates] + [late_uri(lake), quality_uri(lake)]
    return [*uris, join(lake, "_metrics")]
