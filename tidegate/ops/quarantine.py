"""Working with the quarantine: what was rejected, and one rejected message in full.

    quarantined(lake, rule="wrong_type", since=datetime(...))   # newest first
    quarantined_message(lake, "<pubsub message id>", protector)   # the row and its original

The original bytes are kept Fernet-encrypted (tidegate.lake.rows); `quarantined_message`
decrypts them with this process's PII key and tokenizes the PII fields of the payload again,
so what it returns holds no PII in clear. A message whose original was larger than the kept
maximum has only its size and SHA-256.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import polars as pl
from cryptography.fernet import InvalidToken

from tidegate.errors import TidegateError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.pii import SUBJECT, PiiPolicy, PiiProtector, all_pii, pii_policies
from tidegate.lake.read import Lake

LIST_COLUMNS = [
    "quarantined_at",
    "stage",
    "rule",
    "event_type",
    "event_id",
    "pubsub_message_id",
    "subscription",
    "reason",
]


def quarantined(
    lake: Lake, *, rule: str | None = None, since: datetime | None = None, limit: int = 50
) -> pl.DataFrame:
    """The newest quarantine rows (of one rule, from a time on), `LIST_COLUMNS` only."""
    q = lake.quarantine()
    if rule is not None:
        q = q.filter(pl.col("rule") == rule)
    if since is not None:
        q = q.filter(pl.col("quarantined_at") >= since)
    return q.select(LIST_COLUMNS).sort("quarantined_at", descending=True).head(limit).collect()


def rules_in(lake: Lake) -> list[str]:
    """The rules the quarantine holds rows of, most frequent first (what `--rule` can name)."""
    counts = (
        lake.quarantine().group_by("rule").len().sort(["len", "rule"], descending=[True, False]).collect()
    )
    return [str(r) for r in counts.get_column("rule").to_list()]


def quarantined_message(lake: Lake, message_id: str, protector: PiiProtector) -> dict[str, Any]:
    """One quarantined message by its Pub/Sub message id: its row and, when it was kept and this
    key can open it, its original payload with PII fields tokenized (`original`), else why not
    (`original_note`)."""
    rows = lake.quarantine().filter(pl.col("pubsub_message_id") == message_id).collect()
    if rows.is_empty():
        raise TidegateError(
            f"no quarantined message with Pub/Sub message id {message_id!r}",
            hint="`tidegate quarantine list` shows the ids (column pubsub_message_id)",
        )
    row = rows.row(0, named=True)
    token = row.pop("payload_encrypted", None)
    out: dict[str, Any] = {**row, "attributes": dict(row.get("attributes") or [])}
    if not token:
        out["original_note"] = "not kept: larger than the quarantine keeps (size and SHA-256 only)"
        return out
    try:
        original = protector.decrypt(token)
    except InvalidToken:
        out["original_note"] = "kept, but this PII key cannot decrypt it (another key encrypted it)"
        return out
    policies = pii_policies(lake.catalog, ContractRegistry.from_catalog(lake.catalog))
    policy = policies.get(row.get("event_type") or "", all_pii(policies))
    out["original"] = _tokenized(original, policy, protector)
    return out


def _tokenized(original: bytes, policy: PiiPolicy, protector: PiiProtector) -> Any:
    """The payload as JSON with its PII tokenized at any depth (structured mode: also the
    event's `subject`); text that is not JSON comes back with anything like an e-mail address
    masked."""
    text = original.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return protector.mask_text(text)
    if isinstance(doc, dict) and isinstance(doc.get("subject"), str) and "specversion" in doc:
        doc["subject"] = protector.token(doc["subject"], SUBJECT)
    return protector.redact(doc, policy.preview_classes())
