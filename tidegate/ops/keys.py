"""Key rotation and re-tokenization (`tidegate keys rotate|retokenize|show`): the operator side
of tidegate.lake.pii's key ring and tidegate.lake.rekey.

    ring = rotate_keyring(Path("/secure/tidegate-pii-keyring.json"))   # a new current version
    report = retokenize(catalog, lake, protector, run_id=..., storage=...)

Rotation never loses the ability to read what is already in the lake: the ring keeps every
version. Re-tokenizing moves the lake's tokens and encrypted originals to the current version
under the lake lock (no ingest may append meanwhile), then rebuilds the aggregates whose keys
hold tokens (a URL field, ce-subject, a PII field) from raw.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidegate.catalog import Catalog
from tidegate.errors import ConfigError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.lock import lake_lock
from tidegate.lake.pii import KEY_ENV, KEY_FILE_ENV, KeyRing, PiiProtector, pii_policies
from tidegate.lake.rekey import RekeyResult, retokenize_lake
from tidegate.lake.tables import LakeTables


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_ring(path: Path) -> KeyRing:
    """The ring in `path`; if there is none yet, the key this process is given becomes its
    version 1 (so the tokens already in the lake stay readable)."""
    if path.exists():
        return KeyRing.parse(path.read_bytes(), str(path))
    if os.environ.get(KEY_ENV):
        return KeyRing.parse(os.environ[KEY_ENV].encode(), KEY_ENV)
    if os.environ.get(KEY_FILE_ENV):
        return KeyRing.parse(Path(os.environ[KEY_FILE_ENV]).read_bytes(), KEY_FILE_ENV)
    raise ConfigError(
        f"{path} does not exist and no key is set to start a ring from",
        hint=f"set {KEY_ENV} or {KEY_FILE_ENV} to the key the lake was tokenized with, then rotate",
    )


def rotate_keyring(path: Path) -> KeyRing:
    """Add a new random key version to the ring in `path` (made from the current key if
    absent) and make it current; every older version stays."""
    ring = current_ring(path).rotated()
    write_private(path, ring.to_json() + "\n")
    return ring


def key_ids(ring: KeyRing) -> list[dict[str, Any]]:
    """Each version and its key id (never the key), newest first."""
    return [
        {"version": v, "key_id": PiiProtector(KeyRing(((v, k),), v)).key_id, "current": v == ring.current}
        for v, k in sorted(ring.keys, reverse=True)
    ]


@dataclass
class RetokenizeReport:
    tables: list[RekeyResult]
    replayed: list[str] = field(default_factory=list)  # aggregates rebuilt from raw


def retokenize(
    catalog: Catalog,
    lake: str,
    protector: PiiProtector,
    *,
    run_id: str,
    storage: dict[str, str] | None,
    replay: Any,  # (aggregate name) -> None: rebuild one aggregate from raw
) -> RetokenizeReport:
    policies = pii_policies(catalog, ContractRegistry.from_catalog(catalog))
    metadata = {
        "tidegate_operation": "retokenize",
        "tidegate_run_id": run_id,
        "tidegate_pii_key_version": str(protector.key_version),
        "tidegate_pii_key_id": protector.key_id,
        "tidegate_tables_columns": json.dumps({t: sorted(p.classes) for t, p in policies.items()}),
    }
    with lake_lock(lake):
        tables = retokenize_lake(LakeTables(lake, catalog), policies, protector, metadata, storage)
        touched = {r.table for r in tables if r.partitions}
        replayed = []
        for spec in catalog.aggregates:
            p = policies[spec.source]
            tokenized = {*p.classes, *p.url_fields, *(["event_subject"] if p.subject else [])}
            source_touched = any(
                r.table.endswith(f"/raw/{spec.source}") for r in tables if r.table in touched
            )
            if source_touched and tokenized & set(spec.keys):
                replay(spec.name)
                replayed.append(spec.name)
    return RetokenizeReport(tables, replayed)
