"""Re-tokenize a lake after a key rotation: every token and encrypted original moves to the
current key version (tidegate.lake.pii), one partition at a time.

    results = retokenize_lake(lake_tables, policies, protector, run_id=..., storage=...)

After `tidegate keys rotate`, new rows are tokenized with the new version while the lake still
holds tokens of the older ones: the same customer has two tokens, and joins across the
rotation miss. Re-tokenizing rewrites, in each raw table, the partitions (event dates) that
hold a token of an older version: PII columns are detokenized with their class's old subkey and
tokenized again with the current one; URL columns and ce-subject likewise. In the quarantine it
moves the tokens inside reasons, failures, attributes and previews, and re-encrypts the kept
originals (Fernet, MultiFernet.rotate). Each rewrite is one Delta overwrite of one partition
(`predicate`), with `tidegate_operation=retokenize` and the key version in its commit
metadata: the same rows, the same keys, new tokens. Running it again finds nothing stale and
writes nothing.

Aggregates whose keys hold tokens (e.g. a URL field) are rebuilt from raw afterwards by the
caller (tidegate.ops.keys), which also holds the lake lock: ingestion must not append while a
partition is rewritten.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, write_deltalake

from tidegate.lake.delta import try_open
from tidegate.lake.pii import SUBJECT, URL_QUERY, PiiPolicy, PiiProtector
from tidegate.lake.tables import QUARANTINE, LakeTables, raw_table


@dataclass(frozen=True)
class RekeyResult:
    table: str
    partitions: int  # partitions rewritten
    rows: int  # rows in them


def _stale(value: str | None, current: int) -> bool:
    """Whether a text holds a token of another key version than `current`."""
    if not value or "pii_" not in value:
        return False
    return any(int(v) != current for v in re.findall(r"pii_([0-9]{1,6})_", value))


def _literal(value: Any) -> str:
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def _rewrite_table(
    uri: str,
    partition: str,
    columns: Mapping[str, Callable[[Any], Any]],
    stale: Callable[[dict[str, Any]], bool],
    metadata: dict[str, str],
    storage: dict[str, str] | None,
) -> RekeyResult:
    """Overwrite each partition of `uri` that holds a stale row, with `columns` mapped."""
    table = try_open(uri, storage)
    if table is None:
        return RekeyResult(uri, 0, 0)
    actions = pa.table(table.get_add_actions(flatten=True))
    key = f"partition.{partition}"
    values = sorted(set(actions.column(key).to_pylist())) if key in actions.column_names else []
    done = rows = 0
    for value in values:
        part = table.to_pyarrow_table(filters=[(partition, "=", value)])
        present = [c for c in columns if c in part.column_names]
        records = part.select(present).to_pylist()
        if not any(stale(r) for r in records):
            continue
        for name in present:
            i = part.schema.get_field_index(name)
            field = part.schema.field(i)
            moved = [columns[name](v) for v in part.column(name).to_pylist()]
            part = part.set_column(i, field, pa.array(moved, type=field.type))
        write_deltalake(
            uri,
            part,
            mode="overwrite",
            predicate=f"{partition} = {_literal(value)}",
            partition_by=[partition],
            commit_properties=CommitProperties(custom_metadata=metadata),
            storage_options=storage,
        )
        done += 1
        rows += part.num_rows
        table = try_open(uri, storage) or table
    return RekeyResult(uri, done, rows)


def retokenize_raw(
    uri: str,
    policy: PiiPolicy,
    protector: PiiProtector,
    metadata: dict[str, str],
    storage: dict[str, str] | None = None,
) -> RekeyResult:
    """One raw table's tokens (PII fields, ce-subject, URL query strings) to the current key."""
    current = protector.key_version
    columns: dict[str, Callable[[Any], Any]] = {
        name: functools.partial(protector.retokenize, token_class=cls) for name, cls in policy.classes.items()
    }
    if policy.subject:
        columns["event_subject"] = lambda v: protector.retokenize(v, SUBJECT)
    for name in policy.url_fields:
        columns[name] = lambda v: protector.retokenize_text(v, [URL_QUERY])

    def stale(row: dict[str, Any]) -> bool:
        return any(_stale(v, current) for v in row.values() if isinstance(v, str))

    return _rewrite_table(uri, "event_date", columns, stale, metadata, storage)


def retokenize_quarantine(
    uri: str,
    classes: Sequence[str],
    protector: PiiProtector,
    metadata: dict[str, str],
    storage: dict[str, str] | None = None,
) -> RekeyResult:
    """The quarantine's tokens (in reasons, failures, attributes, previews) and its encrypted
    originals to the current key version."""
    current = protector.key_version

    def old_original(token: bytes | None) -> bool:
        return bool(token) and not protector.encrypted_with_current(token or b"")

    def text(v: Any) -> Any:
        return protector.retokenize_text(v, classes)

    columns: dict[str, Callable[[Any], Any]] = {
        "reason": text,
        "payload_preview": text,
        "failures": lambda fs: [{**f, "message": text(f.get("message"))} for f in fs or []],
        "attributes": lambda kv: [(k, text(v)) for k, v in kv or []],
        "payload_encrypted": lambda t: protector.reencrypt(t) if old_original(t) else t,
    }

    def stale(row: dict[str, Any]) -> bool:
        texts = [row.get("reason"), row.get("payload_preview")]
        texts += [f.get("message") for f in row.get("failures") or []]
        texts += [v for _, v in row.get("attributes") or []]
        return any(_stale(t, current) for t in texts) or old_original(row.get("payload_encrypted"))

    return _rewrite_table(uri, QUARANTINE.partition_by[0], columns, stale, metadata, storage)


def retokenize_lake(
    tables: LakeTables,
    policies: Mapping[str, PiiPolicy],
    protector: PiiProtector,
    metadata: dict[str, str],
    storage: dict[str, str] | None = None,
) -> list[RekeyResult]:
    """Every raw table and the quarantine, to the current key version."""
    out = [
        retokenize_raw(raw_table(t).uri(tables.root), policies[t], protector, metadata, storage)
        for t in sorted(policies)
    ]
    classes = sorted({c for p in policies.values() for c in p.classes.values()})
    out.append(retokenize_quarantine(QUARANTINE.uri(tables.root), classes, protector, metadata, storage))
    return out
