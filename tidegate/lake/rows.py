"""Arrow rows for the lake: validated events -> raw rows, rejections -> quarantine rows.

Pure functions, PII tokenized on the way in. Raw rows are built column-wise (one `pa.array`
per column, no per-row dicts: the hot path); their values were checked against the column
types by the contract stage. Quarantine rows are built one dict per rejection, so that one
rejection that cannot be rendered (a payload too deep to redact, a string Arrow refuses)
degrades alone instead of failing the batch. The encrypted original is kept up to
`QUARANTINE_MAX_ORIGINAL_BYTES` (1 MiB); a larger message keeps its size and SHA-256 only.
`commit_metadata()` builds the lineage metadata every Delta commit carries.

    uv run python -c "from tidegate.lake.rows import quarantine_rows; help(quarantine_rows)"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from tidegate.expectations.checks import Rejection, ValidEvent
from tidegate.expectations.envelope import json_depth_exceeds
from tidegate.lake.pii import SUBJECT, PiiPolicy, PiiProtector, all_pii
from tidegate.lake.tables import ENVELOPE_NAMES, QUARANTINE_SCHEMA

# Above this size a quarantined message keeps only payload_size and payload_sha256: Pub/Sub
# allows 10 MB bodies, and a 9.5 MB oversize message would otherwise put a 12.7 MB Fernet token
# (base64) into one Parquet cell. Every stream's payload limit (64 KiB by default) is far below.
QUARANTINE_MAX_ORIGINAL_BYTES = 1 << 20


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return None


def payload_digest(data: Any) -> str:
    """The digest that tells two copies of one event apart: BLAKE2b-64 (16 hex digits) of the event's data
    as canonical JSON (keys sorted, no whitespace). The same data sent in binary or structured
    mode, as `data` or `data_base64`, or with other whitespace, has the same digest; a copy of a
    (source, id) with another digest is an id conflict (lake.writer, quarantine rule
    `id_conflict`). Unkeyed, so it survives a PII key rotation; it is a digest of the whole
    payload, not of any one field."""
    try:
        text = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # beyond orjson (e.g. an int over 64 bits): the standard library agrees on the rest
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def raw_rows(
    events: Sequence[ValidEvent],
    schema: pa.Schema,
    policy: PiiPolicy,
    protector: PiiProtector,
    *,
    run_id: str,
    batch_id: str,
    ingest_time: datetime,
) -> pa.Table:
    """One row per event, in the raw table's schema, PII tokenized: the contract's PII fields
    (each in its class), ce-subject if the catalog says so, and the query strings of URL fields.

    The events are read in **one pass**, a tuple of every value they give, and turned into
    columns by `zip` (C): a pass per column walked 20,000 scattered event objects ~25 times a
    batch, and those list comprehensions were ~7% of a backlog's driver time."""
    n = len(events)
    # one value for every row: built in Arrow, not converted from n Python objects
    constants: dict[str, Any] = {
        "ingest_time": ingest_time,
        "seen_max_event_time": None,  # stamped at commit time: see stamp_seen_max_event_time
        "run_id": run_id,
        "batch_id": batch_id,
    }
    fields = [f.name for f in schema if f.name not in ENVELOPE_NAMES]  # the payload's own columns
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for e in events:
        env = e.envelope
        m = e.message
        t = env.time
        append(
            (
                env.id,
                t,
                t.date(),
                env.source,
                env.subject,
                e.contract.version,
                env.traceparent,
                m.message_id,
                m.publish_time,
                m.subscription,
                env.data,
                *map(e.record.get, fields),
            )
        )
    names = (*_EVENT_COLUMNS, *fields)
    columns: dict[str, Any] = (
        dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else dict.fromkeys(names, ())
    )
    if policy.subject:
        columns["event_subject"] = [protector.token(s, SUBJECT) for s in columns["event_subject"]]
    columns["trace_id"] = [trace_id(tp) for tp in columns["traceparent"]]
    columns["payload_digest"] = [payload_digest(d) for d in columns["payload_digest"]]
    for name in fields:
        if name in policy.classes:
            columns[name] = [protector.token(v, policy.classes[name]) for v in columns[name]]
        elif name in policy.url_fields:
            columns[name] = [protector.mask_url(v) for v in columns[name]]
    arrays = []
    for field in schema:
        if field.name in constants:
            arrays.append(pa.repeat(pa.scalar(constants[field.name], type=field.type), n))
        else:
            arrays.append(pa.array(columns[field.name], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# What raw_rows reads off each event, in the order of its tuples (payload_digest: the data,
# digested once the columns are split; trace_id: derived from traceparent)
_EVENT_COLUMNS = (
    "event_id",
    "event_time",
    "event_date",
    "event_source",
    "event_subject",
    "schema_version",
    "traceparent",
    "pubsub_message_id",
    "pubsub_publish_time",
    "subscription",
    "payload_digest",
)


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
    column = pa.repeat(pa.scalar(seen, type=rows.schema.field(i).type), rows.num_rows)
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


_PREVIEW_PARSE_BYTES = 1 << 16


def _parsed_payload(r: Rejection) -> Any:
    """What a preview may be built from: the envelope's parsed data, or, when the envelope was
    refused before its data was read, the body if it is small, shallow, valid JSON. Anything
    else (malformed, too deep, too big, not UTF-8) gets no preview: previews are never made
    from unparsed text."""
    if r.envelope is not None:
        return r.envelope.data
    data = r.message.data
    if len(data) > _PREVIEW_PARSE_BYTES:
        return None
    try:
        text = data.decode("utf-8")
        return None if json_depth_exceeds(text) else json.loads(text)
    except ValueError:
        return None


def _kept_original(data: bytes, protector: PiiProtector) -> bytes:
    """The encrypted original, or b"" (never a Fernet token) above QUARANTINE_MAX_ORIGINAL_BYTES."""
    return protector.encrypt(data) if len(data) <= QUARANTINE_MAX_ORIGINAL_BYTES else b""


def _attribute(name: str, value: str, protector: PiiProtector) -> str:
    """A message attribute for the quarantine: ce-subject tokenized (whatever the catalog says:
    a rejected message may be of any type), anything else with e-mail-like text masked."""
    return protector.token(value, SUBJECT) or "" if name == "ce-subject" else protector.mask_text(value)


def _quarantine_row(
    r: Rejection, pii: PiiPolicy, protector: PiiProtector, common: dict[str, Any]
) -> dict[str, Any]:
    """One quarantine row, every text PII-masked, the payload previewed with PII tokenized
    (only a parsed payload: unparsed bytes are never previewed)."""
    m = r.message
    first = r.failures[0]
    parsed = _parsed_payload(r)
    classes = pii.preview_classes()
    structured = r.envelope is None and isinstance(parsed, dict) and "specversion" in parsed
    if structured:
        classes["subject"] = SUBJECT  # a structured-mode event: its attributes are in the body
    return {
        **common,
        "pubsub_message_id": m.message_id,
        "subscription": m.subscription,
        "pubsub_publish_time": m.publish_time,
        "stage": r.stage,
        "rule": first.rule,
        "reason": protector.mask_text(first.message),
        "failures": [
            {"stage": f.stage, "rule": f.rule, "field": f.field, "message": protector.mask_text(f.message)}
            for f in r.failures
        ],
        "event_id": r.event_id,
        "event_type": r.event_type,
        "schema_version": r.schema_version,
        "event_time": r.envelope.time if r.envelope is not None else r.event_time,
        "attributes": [(k, _attribute(k, v, protector)) for k, v in sorted(m.attributes.items())],
        "payload_size": len(m.data),
        "payload_sha256": hashlib.sha256(m.data).hexdigest(),
        "payload_preview": protector.preview(parsed, classes, pii.declared, structured),
        "payload_encrypted": _kept_original(m.data, protector),
    }


def _text(value: Any, limit: int = 1024) -> str | None:
    """A string any Arrow/Parquet writer accepts: UTF-8-encodable (lone surrogates become '?')."""
    if value is None:
        return None
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


def _degraded_row(
    r: Rejection, exc: BaseException, protector: PiiProtector, common: dict[str, Any]
) -> dict[str, Any]:
    """The row of a rejection whose full row could not be built or converted: where it came
    from, why it was rejected, size + digest + (under the cap) the encrypted original; no
    attributes, no preview (a note says why), nothing that was not cleaned first."""
    m = r.message
    failures = [
        {
            "stage": _text(f.stage),
            "rule": _text(f.rule),
            "field": _text(f.field),
            "message": protector.mask_text(_text(f.message, 2000) or ""),
        }
        for f in r.failures
    ] or [{"stage": _text(r.stage), "rule": "unknown", "field": None, "message": ""}]
    version = r.schema_version
    when = r.envelope.time if r.envelope is not None else None
    return {
        **common,
        "pubsub_message_id": _text(m.message_id) or "",
        "subscription": _text(m.subscription) or "",
        "pubsub_publish_time": m.publish_time if isinstance(m.publish_time, datetime) else None,
        "stage": _text(r.stage) or "",
        "rule": failures[0]["rule"] or "",
        "reason": failures[0]["message"],
        "failures": failures,
        "event_id": _text(r.event_id),
        "event_type": _text(r.event_type),
        "schema_version": version if isinstance(version, int) and 0 <= version < 2**31 else None,
        "event_time": when if isinstance(when, datetime) else None,
        "attributes": [],
        "payload_size": len(m.data),
        "payload_sha256": hashlib.sha256(m.data).hexdigest(),
        "payload_preview": f"(no preview or attributes: {type(exc).__name__} while building the row)",
        "payload_encrypted": _kept_original(m.data, protector),
    }


# What pyarrow raises for a value its column cannot hold (UnicodeEncodeError is a ValueError).
_ARROW_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError)


def quarantine_rows(
    rejections: Sequence[Rejection],
    policies: Mapping[str, PiiPolicy],
    protector: PiiProtector,
    *,
    run_id: str,
    batch_id: str,
    now: datetime,
) -> pa.Table:
    """One row per rejected message: why, where it came from, its bytes (encrypted up to
    QUARANTINE_MAX_ORIGINAL_BYTES; above it only payload_size and payload_sha256, and
    payload_encrypted is empty).

    Never fails for one rejection: a row that cannot be built (e.g. a payload too deep to
    redact) or converted to Arrow (e.g. a string with a lone surrogate) is replaced by a
    degraded row that keeps the reason, size, digest and encrypted original."""
    unknown = all_pii(policies)
    common = {"quarantined_at": now, "quarantine_date": now.date(), "run_id": run_id, "batch_id": batch_id}
    rows: list[dict[str, Any]] = []
    for r in rejections:
        try:
            policy = policies.get(r.event_type or "", unknown)
            rows.append(_quarantine_row(r, policy, protector, common))
        except Exception as exc:  # noqa: BLE001 - one rejection must never stop the batch
            rows.append(_degraded_row(r, exc, protector, common))
    try:
        return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    except _ARROW_ERRORS:
        pass
    # Rare path: find the rows Arrow refuses, one by one.
    for i, (r, row) in enumerate(zip(rejections, rows, strict=True)):
        try:
            pa.Table.from_pylist([row], schema=QUARANTINE_SCHEMA)
        except _ARROW_ERRORS as exc:
            rows[i] = _degraded_row(r, exc, protector, common)
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def message_digest(message_ids: Iterable[str]) -> str:
    """SHA-256 over the sorted Pub/Sub message ids of a commit: which messages it holds."""
    ids = sorted(message_ids)
    return hashlib.sha256(("\n".join(ids) + "\n").encode() if ids else b"").hexdigest()  # each id, then \n


def commit_metadata(
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
    pii_key_version: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Commit metadata: which messages, which run, which code, which rules."""
    numeric = list(map(int, filter(str.isdigit, message_ids)))
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
    if pii_key_version is not None:
        meta["tidegate_pii_key_version"] = pii_key_version
    meta.update(extra or {})
    return {k: str(v) for k, v in meta.items()}
