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

**The registry.** `LakeTables(root, catalog)` lists every table a lake of this catalog can hold
(`TableSpec`: name, kind, keys, partitioning, fixed schema) and maps a table's name to its URI.
Readers (`tidegate.lake.read.Lake`), the writers, maintain, status, lineage and the Dataflow
job all go through it; `raw_uri(lake, type)` and friends are its shorthands.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from tidegate.catalog import Catalog
from tidegate.errors import ConfigError, TidegateError
from tidegate.expectations.contracts import EventTypeContracts

UTC_TS = pa.timestamp("us", tz="UTC")

# Envelope and lineage columns every raw table starts with (name, type, nullable, doc).
ENVELOPE_COLUMNS: list[tuple[str, pa.DataType, bool, str]] = [
    ("event_id", pa.string(), False, "CloudEvents id (ce-id); with event_source, the event's identity"),
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
    (
        "payload_digest",
        pa.string(),
        True,
        "BLAKE2b-64 (hex) of the data as canonical JSON: a copy of (source, id) with another digest is an "
        "id conflict (quarantine rule id_conflict); null on rows landed before tidegate recorded it",
    ),
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
        # of `quarantined`, the copies of an event already in raw with another payload (null on
        # rows written before tidegate counted them)
        pa.field("id_conflicts", pa.int64()),
    ]
)


# The keys of tidegate's lineage in every commit's info (tidegate.lake.rows.lineage writes them,
# `tidegate lineage` shows them, `_commits` keeps them past the log's window)
LINEAGE_KEYS = (
    "tidegate_run_id",
    "tidegate_batch_id",
    "tidegate_version",
    "tidegate_git_sha",
    "tidegate_subscriptions",
    "tidegate_message_count",
    "tidegate_message_id_min",
    "tidegate_message_id_max",
    "tidegate_message_digest",
    "tidegate_contracts",
    "tidegate_gx_suite_fingerprint",
    "tidegate_pii_key_id",
    "tidegate_operation",
)


# Commit lineage beyond the commit log's window (tidegate.lake.lineage.archive_commits): one row
# per commit of every table, copied before the log files that held it are cleaned away.
COMMITS_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),  # its name in the lake, e.g. raw/<type>
        pa.field("version", pa.int64(), nullable=False),
        pa.field("timestamp", pa.string()),  # the commit's time, RFC 3339 (as `tidegate lineage`)
        pa.field("operation", pa.string()),
        pa.field("rows_added", pa.int64()),
        pa.field("archived_at", UTC_TS, nullable=False),
        # tidegate's lineage keys, as the commit info holds them
        *(pa.field(k, pa.string()) for k in LINEAGE_KEYS),
    ]
)


LATE_SCHEMA = pa.schema(
    [
        pa.field("aggregate", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        # the event's identity is (event_source, event_id); null on rows recorded before the
        # source was kept
        pa.field("event_source", pa.string()),
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
LATE_KEYS = ("aggregate", "event_source", "event_id", "window_start")

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


def payload_fields(contracts: EventTypeContracts) -> list[pa.Field]:
    """Payload columns for a type across all its versions (latest version's order)."""
    latest = contracts.latest
    required_everywhere: set[str] = set(latest.field_names)
    for c in contracts.versions.values():
        names = {f.name for f in c.arrow_schema if not f.nullable}
        required_everywhere &= names
    # a field's metadata (its doc) comes from the first version that has it: Delta refuses to
    # merge a column whose metadata changed, so editing a doc in a new version must not
    # change the table's schema
    first: dict[str, pa.Field] = {}
    for _v, c in sorted(contracts.versions.items()):
        for f in c.arrow_schema:
            first.setdefault(f.name, f)
    out: list[pa.Field] = []
    for f in latest.arrow_schema:
        f = f.with_metadata(first[f.name].metadata) if first[f.name].metadata else f.remove_metadata()
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


METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("step", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # counter | distribution
        pa.field("value", pa.float64()),  # counters: the count; distributions: the sum
        pa.field("count", pa.int64()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("p50", pa.float64()),
        pa.field("p99", pa.float64()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


REDRIVES_SCHEMA = pa.schema(
    [
        pa.field("subscription", pa.string(), nullable=False),
        pa.field(
            "pubsub_message_id", pa.string(), nullable=False, metadata={"doc": "the quarantine row's message"}
        ),
        pa.field("redriven_at", UTC_TS, nullable=False),
        pa.field(
            "run_id", pa.string(), nullable=False, metadata={"doc": "the redrive run (its _ledger row)"}
        ),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("rule_before", pa.string(), nullable=False),
        pa.field(
            "outcome",
            pa.string(),
            nullable=False,
            metadata={"doc": "landed (in raw, this run's batch) | rejected_again | original_not_kept"},
        ),
    ]
)


AUDIT_SCHEMA = pa.schema(
    [
        pa.field("audit_id", pa.string(), nullable=False),
        pa.field("at", UTC_TS, nullable=False),
        pa.field("action", pa.string(), nullable=False),  # expire | erase
        pa.field("actor", pa.string(), nullable=False),  # who ran it (--actor, else user@host)
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("predicate", pa.string()),  # the Delta delete's predicate (expire: by date)
        pa.field("rows", pa.int64(), nullable=False),  # rows deleted from `table`
        pa.field("reason", pa.string(), nullable=False),
        pa.field("cutoff", UTC_TS),  # expire: rows before this were deleted
        pa.field("table_version", pa.int64()),  # the version the deletion committed
        # erase: a keyed digest of the subject (never the subject) and of each erased event's
        # identity, so verify can tell an erased event from a lost one
        pa.field("subject_digest", pa.string()),
        pa.field("erased_events", pa.list_(pa.string())),
        # expire: the data files the DELETE removed (full URIs). They stay until `maintain`
        # vacuums them (--retain-hours, 168 h), long after the commit log's 10-minute window:
        # the rows can be restored from them (docs/operations.md, "Restore deleted rows")
        pa.field("removed_files", pa.list_(pa.string())),
    ]
)

# stream monitors' breaches (tidegate.ops.monitors): one row per breach, recorded once
MONITORS_SCHEMA = pa.schema(
    [
        # monitor/kind/event type/window start[/column]: what makes a breach the same one (the key)
        pa.field("breach_id", pa.string(), nullable=False),
        pa.field("monitor", pa.string(), nullable=False),  # volume | freshness | quarantine_rate | null_rate
        # drop | spike (volume), event_lag | commit_lag (freshness), above (quarantine_rate), drift (null_rate)
        pa.field("kind", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("column", pa.string()),  # null_rate: the payload column
        pa.field("window_start", UTC_TS, nullable=False),
        pa.field("window_end", UTC_TS, nullable=False),
        pa.field("observed", pa.float64(), nullable=False),
        pa.field("expected", pa.float64()),  # the baseline, where the monitor has one
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("detected_at", UTC_TS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


class Kind(StrEnum):
    RAW = "raw"
    QUARANTINE = "quarantine"
    LEDGER = "ledger"
    QUALITY = "quality"
    METRICS = "metrics"
    AGGREGATE = "aggregate"
    LATE = "late"
    REDRIVE = "redrive"
    AUDIT = "audit"
    MONITOR = "monitor"
    VIEW = "view"
    COMMITS = "commits"


@dataclass(frozen=True)
class TableSpec:
    """One Delta table of the lake. `keys` is what makes a row unique (the idempotent commits
    insert only rows whose key is new); `schema` is None where the catalog decides it (raw
    tables: the contracts; aggregates: their spec)."""

    name: str  # the path under the lake root, and the name users type (`raw/shop.order.placed`)
    kind: Kind
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    schema: pa.Schema | None = None
    event_type: str | None = None
    aggregate: str | None = None
    on_demand: bool = False  # made by an operator's action (a redrive), absent until then

    def uri(self, lake: str) -> str:
        """Its location under a lake root that may be a local path or a URI."""
        return "/".join([lake.rstrip("/"), self.name])


def raw_table(event_type: str) -> TableSpec:
    # an event's identity is (source, id), as CloudEvents defines it: two producers may both
    # send `order-42`, and both land
    return TableSpec(
        f"raw/{event_type}", Kind.RAW, ("event_source", "event_id"), ("event_date",), event_type=event_type
    )


def view_table(name: str, key: str) -> TableSpec:
    # a current-state view (tidegate.lake.views): one row per key (or per change, SCD type 2)
    return TableSpec(f"views/{name}", Kind.VIEW, (key,))


def aggregate_table(name: str) -> TableSpec:
    # keys: the window and the aggregate's key columns (tidegate.lake.aggregates.key_columns)
    return TableSpec(f"aggregates/{name}", Kind.AGGREGATE, ("window_start",), aggregate=name)


QUARANTINE = TableSpec(
    "quarantine",
    Kind.QUARANTINE,
    ("subscription", "pubsub_message_id"),
    ("quarantine_date",),
    QUARANTINE_SCHEMA,
)
LEDGER = TableSpec("_ledger", Kind.LEDGER, ("batch_id",), (), LEDGER_SCHEMA)
QUALITY = TableSpec("_quality", Kind.QUALITY, QUALITY_KEYS, ("quality_date",), QUALITY_SCHEMA)
METRICS = TableSpec("_metrics", Kind.METRICS, (), (), METRICS_SCHEMA)  # append-only, never deduplicated
LATE = TableSpec("aggregates/_late", Kind.LATE, LATE_KEYS, ("aggregate",), LATE_SCHEMA)
# what `tidegate quarantine redrive` did with each quarantined message it took (the quarantine
# itself is never rewritten: a row is "redriven" when this table says so)
REDRIVES = TableSpec(
    "_redrives",
    Kind.REDRIVE,
    ("subscription", "pubsub_message_id", "run_id"),
    (),
    REDRIVES_SCHEMA,
    on_demand=True,
)
# every deletion governance made (retention, erasure): what, where, how many, why, by whom
AUDIT = TableSpec("_audit", Kind.AUDIT, ("audit_id",), (), AUDIT_SCHEMA, on_demand=True)
# every breach a stream monitor found (tidegate.ops.monitors), once per breach
MONITORS = TableSpec("_monitors", Kind.MONITOR, ("breach_id",), (), MONITORS_SCHEMA, on_demand=True)
# every table's commits, kept past the commit log's window (tidegate.lake.lineage.archive_commits)
COMMITS = TableSpec("_commits", Kind.COMMITS, ("table", "version"), (), COMMITS_SCHEMA, on_demand=True)


class LakeTables:
    """Every table a lake of this catalog can hold, whether it exists yet or not."""

    def __init__(self, root: str, catalog: Catalog) -> None:
        self.root = root
        self.catalog = catalog
        specs = [raw_table(t) for t in catalog.event_types]
        specs += [QUARANTINE, LEDGER, QUALITY, METRICS, REDRIVES, AUDIT, MONITORS, COMMITS]
        specs += [aggregate_table(a.name) for a in catalog.aggregates] + [LATE]
        specs += [view_table(v.name, v.key) for v in catalog.views]
        self._specs = {s.name: s for s in specs}

    def specs(self) -> list[TableSpec]:
        return list(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> TableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise TidegateError(f"unknown table {name!r}", hint=f"tables: {', '.join(self._specs)}") from None

    def uri(self, name: str) -> str:
        return self.spec(name).uri(self.root)

    def resolve(self, name: str) -> TableSpec:
        """A table by the name a person types: its full name, or a short one (`shop.order.placed`,
        `revenue_per_currency_1m`, `ledger`, `quality`, `metrics`, `late`)."""
        short = {"ledger": "_ledger", "quality": "_quality", "metrics": "_metrics"}
        short |= {"late": LATE.name, "_late": LATE.name}
        short |= {t: f"raw/{t}" for t in self.catalog.event_types}
        short |= {a.name: f"aggregates/{a.name}" for a in self.catalog.aggregates}
        return self.spec(short.get(name, name))

    def uris(self) -> list[str]:
        return [s.uri(self.root) for s in self._specs.values()]


def raw_uri(lake: str, event_type: str) -> str:
    return raw_table(event_type).uri(lake)


def aggregate_uri(lake: str, name: str) -> str:
    return aggregate_table(name).uri(lake)


def quarantine_uri(lake: str) -> str:
    return QUARANTINE.uri(lake)


def ledger_uri(lake: str) -> str:
    return LEDGER.uri(lake)


def quality_uri(lake: str) -> str:
    return QUALITY.uri(lake)


def late_uri(lake: str) -> str:
    return LATE.uri(lake)
