"""Arrow rows for the lake: validated events -> raw rows, rejections -> quarantine rows.

Pure functions, column-wise (one `pa.array` per column, no per-row dicts), PII tokenized
on the way in. `lineage()` builds the metadata every Delta commit carries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from expectations.checks import Rejection, ValidEvent
from expectations.contracts import ContractRegistry
from lake.pii import PiiProtector
from lake.tables import QUARANTINE_SCHEMA


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return None


def raw_rows(
    events: Sequence[ValidEvent],
    schema: pa.Schema,
    pii_fields: Iterable[str],
    protector: PiiProtector,
    *,
    run_id: str,
    batch_id: str,
    ingest_time: datetime,
) -> pa.Table:
    """One row per event, in the raw table's schema, PII fields tokenized."""
    pii = set(pii_fields)
    n = len(events)
    envs = [e.envelope for e in events]
    msgs = [e.message for e in events]
    columns: dict[str, list[Any]] = {
        "event_id": [e.id for e in envs],
        "event_time": [e.time for e in envs],
        "event_date": [e.time.date() for e in envs],
        "event_source": [e.source for e in envs],
        "event_subject": [e.subject for e in envs],
        "schema_version": [e.contract.version for e in events],
        "trace_id": [trace_id(e.traceparent) for e in envs],
        "traceparent": [e.traceparent for e in envs],
        "pubsub_message_id": [m.message_id for m in msgs],
        "pubsub_publish_time": [m.publish_time for m in msgs],
        "subscription": [m.subscription for m in msgs],
        "ingest_time": [ingest_time] * n,
        "seen_max_event_time": [None] * n,  # stamped at commit time: see stamp_seen_max_event_time
        "run_id": [run_id] * n,
        "batch_id": [batch_id] * n,
    }
    arrays = []
    for field in schema:
        if field.name in columns:
            values = columns[field.name]
        else:
            values = [e.record.get(field.name) for e in events]
            if field.name in pii:
                values = [protector.token(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_max_event_time(table: Any) -> datetime | None:
    """Latest event_time in a raw Delta table, from the log's file statistics (no data read).

    Delta keeps timestamp statistics at millisecond precision and rounds the max up, so this can
    be up to 1 ms above the true max; it is recorded on the rows it stamps, so every reader
    agrees on it anyway."""
    if table is None:
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0 or "max.event_time" not in actions.column_names:
        return None
    value = pc.max(actions.column("max.event_time")).as_py()
    return value if isinstance(value, datetime) else None


def stamp_seen_max_event_time(table: Any, rows: pa.Table, now: datetime) -> pa.Table:
    """Set `seen_max_event_time` on a batch about to be committed to `table` (None: new table).

    The value is the table's latest event time *before* this batch, capped at the commit's
    clock so one event from a producer with a broken clock cannot make everything late."""
    seen = table_max_event_time(table)
    if seen is not None:
        seen = min(seen, now)
    i = rows.schema.get_field_index("seen_max_event_time")
    column = pa.array([seen] * rows.num_rows, type=rows.schema.field(i).type)
    return rows.set_column(i, rows.schema.field(i), column)


def committed_rows(
    uri: str,
    *,
    batch_id: str,
    dates: Sequence[Any],
    columns: Sequence[str],
    storage_options: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of `uri` that the commit of `batch_id` inserted (streaming mode hands them to the
    windowed aggregates). Duplicates skipped by the MERGE carry an earlier batch id and are not
    returned; a retried bundle returns the same rows again, which is what the runner expects
    of a retry. File statistics on batch_id and the event_date partitions prune the read to the
    files that commit wrote."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    dataset = DeltaTable(uri, storage_options=storage_options).to_pyarrow_dataset()
    when = None
    for d in dates:
        part = ds.field("event_date") == d
        when = part if when is None else when | part
    filt = ds.field("batch_id") == batch_id
    if when is not None:
        filt = filt & when
    names = set(dataset.schema.names)
    rows: list[dict[str, Any]] = dataset.to_table(
        columns=[c for c in columns if c in names], filter=filt
    ).to_pylist()
    return rows


def _parsed_payload(r: Rejection) -> Any:
    return r.envelope.data if r.envelope is not None else None


def quarantine_rows(
    rejections: Sequence[Rejection],
    registry: ContractRegistry,
    protector: PiiProtector,
    *,
    run_id: str,
    batch_id: str,
    now: datetime,
) -> pa.Table:
    """One row per rejected message: why, where it came from, its bytes (encrypted)."""
    all_pii = {f for t in registry.types.values() for c in t.versions.values() for f in c.pii_fields}
    rows: dict[str, list[Any]] = {f.name: [] for f in QUARANTINE_SCHEMA}
    for r in rejections:
        m = r.message
        first = r.failures[0]
        known = registry.types.get(r.event_type or "")
        pii = known.latest.pii_fields if known else all_pii
        event_time = r.envelope.time if r.envelope is not None else None
        rows["pubsub_message_id"].append(m.message_id)
        rows["subscription"].append(m.subscription)
        rows["pubsub_publish_time"].append(m.publish_time)
        rows["quarantined_at"].append(now)
        rows["quarantine_date"].append(now.date())
        rows["stage"].append(r.stage)
        rows["rule"].append(first.rule)
        rows["reason"].append(protector.mask_text(first.message))
        rows["failures"].append(
            [
                {
                    "stage": f.stage,
                    "rule": f.rule,
                    "field": f.field,
                    "message": protector.mask_text(f.message),
                }
                for f in r.failures
            ]
        )
        rows["event_id"].append(r.event_id)
        rows["event_type"].append(r.event_type)
        rows["schema_version"].append(r.schema_version)
        rows["event_time"].append(event_time)
        rows["attributes"].append([(k, protector.mask_text(v)) for k, v in sorted(m.attributes.items())])
        rows["payload_size"].append(len(m.data))
        rows["payload_sha256"].append(hashlib.sha256(m.data).hexdigest())
        rows["payload_preview"].append(protector.preview(m.data, _parsed_payload(r), pii))
        rows["payload_encrypted"].append(protector.encrypt(m.data))
        rows["run_id"].append(run_id)
        rows["batch_id"].append(batch_id)
    return pa.Table.from_pydict(rows, schema=QUARANTINE_SCHEMA)


def message_digest(message_ids: Iterable[str]) -> str:
    """SHA-256 over the sorted Pub/Sub message ids of a commit: which messages it holds."""
    h = hashlib.sha256()
    for mid in sorted(message_ids):
        h.update(mid.encode())
        h.update(b"\n")
    return h.hexdigest()


def lineage(
    *,
    run_id: str,
    batch_ids: Sequence[str],
    code_version: str,
    git_sha: str,
    subscriptions: Iterable[str],
    message_ids: Sequence[str],
    contracts: dict[str, str] | None = None,
    suite_fingerprint: str | None = None,
    pii_key_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Commit metadata: which messages, which run, which code, which rules."""
    numeric = [int(m) for m in message_ids if m.isdigit()]
    meta: dict[str, Any] = {
        "tidegate_run_id": run_id,
        "tidegate_batch_id": ",".join(sorted(set(batch_ids))),
        "tidegate_version": code_version,
        "tidegate_git_sha": git_sha,
        "tidegate_subscriptions": json.dumps(sorted(set(subscriptions))),
        "tidegate_message_count": len(message_ids),
        "tidegate_message_id_min": str(min(numeric))
        if numeric
        else (min(message_ids) if message_ids else ""),
        "tidegate_message_id_max": str(max(numeric))
        if numeric
        else (max(message_ids) if message_ids else ""),
        "tidegate_message_digest": message_digest(message_ids),
        "tidegate_committed_at": datetime.now(UTC).isoformat(),
    }
    if contracts is not None:
        meta["tidegate_contracts"] = json.dumps(contracts, sort_keys=True)
    if suite_fingerprint is not None:
        meta["tidegate_gx_suite_fingerprint"] = suite_fingerprint
    if pii_key_id is not None:
        meta["tidegate_pii_key_id"] = pii_key_id
    meta.update(extra or {})
    return {k: str(v) for k, v in meta.items()}
