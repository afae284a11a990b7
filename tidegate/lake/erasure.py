"""Erasure of a data subject from the lake (`tidegate forget`), the pieces on Delta tables.

    found = find_subject(tables, policies, protector, subject)     # what holds the subject
    erase_rows(...)                                                 # delete it, commit by commit
    purge_history(uri)                                              # vacuum + truncate the log

Which rows hold the subject:
- raw: rows whose subject field (the catalog's `subject_fields` per stream, e.g. customer_id)
  equals the subject;
- quarantine: rows whose decrypted original, preview, reason or attributes contain the subject
  (a rejected message may hold it anywhere, in any shape);
- the late ledger: the (event, window) pairs of the erased raw events;
- aggregates: recomputed for the touched windows by the caller (tidegate.ops.erasure), so
  windows keyed by the subject (sessions per user) disappear and sums no longer count them.

Deletion leaves the subject in the files a DELETE removed (kept for time travel) and in the
Delta log (an `add` action's statistics hold a column's min and max). `purge_history` vacuums
those files at once and truncates the log to a fresh checkpoint: time travel to versions
before the erasure ends there, which is the point. A scan of every file of the lake finds no
byte of the subject afterwards (tests/test_governance.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from cryptography.fernet import InvalidToken
from deltalake import CommitProperties

from tidegate.lake.delta import try_open
from tidegate.lake.pii import PiiPolicy, PiiProtector
from tidegate.lake.tables import QUARANTINE, LakeTables, raw_table


def subject_digest(protector: PiiProtector, subject: str) -> str:
    """A keyed digest of the subject for `_audit`: with the key one can check whether X was
    erased; without it the tombstone names nobody."""
    secret = protector.ring.secret(protector.key_version)
    return hmac.new(secret, b"tidegate/erasure/" + subject.encode(), "sha256").hexdigest()[:32]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(_quote(v) for v in values)})"


@dataclass
class Found:
    """Where the subject is: raw events per type, quarantined messages, late pairs."""

    raw: dict[str, pl.DataFrame] = field(default_factory=dict)  # type -> event_id, event_time, ...
    quarantine: pl.DataFrame | None = None  # subscription, pubsub_message_id, event_type, event_id
    predicates: dict[str, str] = field(default_factory=dict)  # table -> the delete's predicate

    @property
    def empty(self) -> bool:
        return not any(df.height for df in self.raw.values()) and not (
            self.quarantine is not None and self.quarantine.height
        )


def find_subject(
    tables: LakeTables,
    policies: Mapping[str, PiiPolicy],
    protector: PiiProtector,
    subject: str,
    storage: dict[str, str] | None = None,
) -> Found:
    found = Found()
    for stream in tables.catalog.streams:
        for event_type in stream.types:
            uri = raw_table(event_type).uri(tables.root)
            table = try_open(uri, storage)
            if table is None or not stream.subject_fields:
                continue
            names = set(table.schema().to_arrow().names)
            fields = [f for f in stream.subject_fields if f in names]
            if not fields:
                continue
            # a subject field the catalog classes as PII holds tokens: match the token
            tokens = {
                f: protector.token(subject, policies[event_type].classes[f])
                for f in fields
                if f in policies[event_type].classes
            }
            match = pl.any_horizontal(
                [pl.col(f).cast(pl.String) == (tokens.get(f) or subject) for f in fields]
            )
            frame = pl.from_arrow(
                table.to_pyarrow_table(columns=["event_source", "event_id", "event_time", *fields])
            )
            assert isinstance(frame, pl.DataFrame)
            rows = frame.filter(match).select("event_source", "event_id", "event_time")
            if rows.height:
                found.raw[event_type] = rows
                found.predicates[f"raw/{event_type}"] = " OR ".join(
                    f"{f} = {_quote(tokens.get(f) or subject)}" for f in fields
                )
    q = try_open(QUARANTINE.uri(tables.root), storage)
    if q is not None:
        data = q.to_pyarrow_table(
            columns=[
                "subscription",
                "pubsub_message_id",
                "event_type",
                "event_id",
                "reason",
                "payload_preview",
                "attributes",
                "payload_encrypted",
            ]
        ).to_pylist()
        hits = []
        needle = subject.encode()
        for r in data:
            text = " ".join(
                str(x) for x in (r["reason"], r["payload_preview"], *(v for _, v in r["attributes"] or []))
            )
            holds = subject in text
            if not holds and r["payload_encrypted"]:
                try:
                    holds = needle in protector.decrypt(r["payload_encrypted"])
                except InvalidToken:
                    holds = False
            if holds:
                hits.append(
                    {k: r[k] for k in ("subscription", "pubsub_message_id", "event_type", "event_id")}
                )
        if hits:
            found.quarantine = pl.DataFrame(hits)
            found.predicates["quarantine"] = _in("pubsub_message_id", [h["pubsub_message_id"] for h in hits])
    return found


def delete_where(
    uri: str, predicate: str, metadata: dict[str, str], storage: dict[str, str] | None
) -> tuple[int, int | None]:
    """One Delta DELETE (rows, version); a missing table deletes nothing."""
    table = try_open(uri, storage)
    if table is None:
        return 0, None
    metrics = table.delete(predicate, commit_properties=CommitProperties(custom_metadata=metadata))
    rows = int(metrics.get("num_deleted_rows", 0))
    return rows, table.version() if rows else None


def late_predicate(found: Found) -> str | None:
    """The late ledger's pairs of the erased raw events."""
    parts = [
        f"(event_type = {_quote(t)} AND {_in('event_id', df.get_column('event_id').to_list())})"
        for t, df in found.raw.items()
        if df.height
    ]
    return " OR ".join(parts) or None


def touched_range(found: Found, event_type: str) -> tuple[datetime, datetime] | None:
    df = found.raw.get(event_type)
    if df is None or df.height == 0:
        return None
    times = df.get_column("event_time")
    return times.min(), times.max()  # type: ignore[return-value]


def purge_history(uri: str, storage: dict[str, str] | None = None) -> int:
    """Make what a DELETE removed unrecoverable: vacuum every file no version needs now, then
    truncate the Delta log to a fresh checkpoint (the old commits' statistics name column
    values). Time travel before this point ends. Returns the files vacuumed."""
    table = try_open(uri, storage)
    if table is None:
        return 0
    removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    table = try_open(uri, storage)
    assert table is not None
    table.alter.set_table_properties(
        {"delta.logRetentionDuration": "interval 0 seconds"}, raise_if_not_exists=False
    )
    table.create_checkpoint()
    table.cleanup_metadata()
    table.alter.set_table_properties(
        {"delta.logRetentionDuration": "interval 3600 seconds"}, raise_if_not_exists=False
    )
    return len(removed)
