"""Where a table version or a row came from (`tidegate lineage`), and table upkeep.

    tidegate lineage raw/shop.order.placed                  # every commit: run, batch, code, rules
    tidegate lineage raw/shop.order.placed --row <ce-id>     # one event: message, run, code, rules
    tidegate lineage quarantine --row <pubsub message id>
    tidegate maintain                                       # compact small files, vacuum old ones

Every commit tidegate makes carries `tidegate_*` keys in its commit info (see
`tidegate.lake.rows.lineage`); a raw row carries its message id, run id and batch id, so a row leads to
its commit and a commit to its messages (by digest) and its code (version + git sha).

Who answers for a table (`table_owner`): a raw table's stream owner from the catalog; an
aggregate's is the owner of its source stream; the shared tables (quarantine, _ledger,
_quality, _metrics, the late ledger, _audit, _redrives) have none of their own (a quarantined
or late row names its event type, whose owner `row_owner` finds). `tidegate status`,
`tidegate lineage` and the OpenLineage ownership facet all ask here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import write_deltalake

from tidegate.catalog import Catalog, Owner
from tidegate.errors import ConfigError, TidegateError
from tidegate.lake.delta import open_table, retention_properties, scan_table, try_open
from tidegate.lake.tables import COMMITS, COMMITS_SCHEMA, LINEAGE_KEYS, TableSpec


def _entry(h: dict[str, Any]) -> dict[str, Any]:
    """One commit info of a Delta history as `tidegate lineage` shows it."""
    metrics = h.get("operationMetrics") or {}
    rows = metrics.get(
        "num_target_rows_inserted", metrics.get("num_added_rows", metrics.get("numOutputRows"))
    )
    try:
        rows = int(rows) if rows is not None else None
    except (TypeError, ValueError):
        rows = None
    ts = h.get("timestamp")
    entry = {
        "version": h.get("version"),
        "timestamp": datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="seconds") if ts else None,
        "operation": h.get("operation"),
        "rows_added": rows,
    }
    entry.update({k: str(h[k]) for k in LINEAGE_KEYS if h.get(k) is not None})
    return entry


def table_name(root: str, uri: str) -> str:
    """`uri`'s name in the lake at `root` (raw/<type>, quarantine, aggregates/<name>, ...)."""
    return uri.rstrip("/").removeprefix(root.rstrip("/")).strip("/")


def commits(
    uri: str, storage_options: dict[str, str] | None = None, *, root: str | None = None
) -> list[dict[str, Any]]:
    """The table's history, newest first, with tidegate's lineage keys and row counts. With the
    lake's `root`, the commits whose log files were cleaned away (the log keeps LOG_RETENTION:
    tidegate.lake.maintenance) follow from the lake's `_commits` archive, marked `archived`."""
    out = [_entry(h) for h in open_table(uri, storage_options).history()]
    if root is not None and table_name(root, uri) != COMMITS.name:
        oldest = min((int(e["version"]) for e in out if e.get("version") is not None), default=None)
        out += archived(root, table_name(root, uri), storage_options, before=oldest)
    return out


def archived(
    root: str, name: str, storage_options: dict[str, str] | None = None, before: int | None = None
) -> list[dict[str, Any]]:
    """The archived commits of table `name` (older than version `before`), newest first."""
    archive = try_open(COMMITS.uri(root), storage_options)
    if archive is None:
        return []
    found = scan_table(archive, storage_options).filter(pl.col("table") == name)
    if before is not None:
        found = found.filter(pl.col("version") < before)
    rows = found.unique(["version"], keep="first").sort("version", descending=True).collect().to_dicts()
    keep = ("version", "timestamp", "operation", "rows_added", *LINEAGE_KEYS)
    return [{k: r[k] for k in keep if r.get(k) is not None} | {"archived": True} for r in rows]


class CommitArchive:
    """Copies a lake's commit lineage into `_commits` before the commit log's window drops it.

    A table's log keeps LOG_RETENTION of commits (tidegate.lake.maintenance: a short window
    keeps every open and commit cheap), but a commit's lineage (run, batch, messages, code,
    contracts, GX suite) must outlive it: `tidegate lineage` and `--row` read the archive for
    what the log no longer holds. `clean_log` calls `archive(uri)` right before it deletes log
    files, so nothing is cleaned unarchived. One archiver per lake writes at a time (the
    compactor thread of the process holding the lake lock, `maintain` under the lock, the
    streaming job's single maintenance tick); should two ever race, a commit archived twice is
    read once (`archived` keeps one row per version). The archive holds no PII: commit infos
    carry ids, digests and fingerprints only. It is never itself archived."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        self.root = root
        self.storage = storage_options
        self.last: dict[str, int] = {}  # per table: the newest version archived

    def archive(self, uri: str) -> int:
        """Append the commits of `uri` the archive lacks; how many."""
        name = table_name(self.root, uri)
        if name == COMMITS.name:
            return 0
        table = try_open(uri, self.storage)
        if table is None:
            return 0
        if name not in self.last:
            newest = archived(self.root, name, self.storage)
            self.last[name] = int(newest[0]["version"]) if newest else -1
        last, current = self.last[name], table.version()
        if current <= last:
            return 0
        history = table.history(limit=current - last)
        now = datetime.now(UTC)
        rows = [
            {**e, "table": name, "archived_at": now}
            for e in map(_entry, history)
            if e.get("version") is not None and last < int(e["version"]) <= current
        ]
        if rows:
            exists = try_open(COMMITS.uri(self.root), self.storage) is not None
            write_deltalake(
                COMMITS.uri(self.root),
                pa.Table.from_pylist(rows, schema=COMMITS_SCHEMA),
                mode="append",
                configuration=None if exists else retention_properties(),
                storage_options=self.storage,
            )
        self.last[name] = current
        return len(rows)


def row_lineage(
    uri: str,
    key: str,
    storage_options: dict[str, str] | None = None,
    source: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """One row (by event id, or by Pub/Sub message id) and the commit that added it. An event is
    identified by (source, id): when producers share an id, `source` says whose."""
    table = open_table(uri, storage_options)
    names = table.schema().to_arrow().names
    cols = [c for c in ("event_id", "pubsub_message_id") if c in names]
    if not cols:
        raise TidegateError(f"{uri} has no event or message ids to look a row up by")
    match = pl.any_horizontal([pl.col(c) == key for c in cols])
    found = scan_table(table, storage_options).filter(match).collect()
    if found.height == 0:
        raise TidegateError(
            f"no row with id {key!r} in {uri}", hint=f"ids are matched against {', '.join(cols)}"
        )
    if source is not None and "event_source" in found.columns:
        found = found.filter(pl.col("event_source") == source)
        if found.height == 0:
            raise TidegateError(f"no row with id {key!r} and source {source!r} in {uri}")
    elif "event_source" in found.columns and found.get_column("event_source").n_unique() > 1:
        sources = sorted(str(s) for s in found.get_column("event_source").unique().to_list())
        raise TidegateError(
            f"{key!r} is the id of {len(sources)} events in {uri}, one per source: {', '.join(sources)}",
            hint="an event is identified by (source, id): add --source <one of them>",
        )
    row = found.drop([c for c in ("payload_encrypted",) if c in found.columns]).to_dicts()[0]
    batch_ids = set(str(row.get("batch_id", "")).split(","))
    commit = next(
        (
            c
            for c in reversed(commits(uri, storage_options, root=root))
            if batch_ids & set(str(c.get("tidegate_batch_id", "")).split(","))
        ),
        None,
    )
    contract = None
    if commit and commit.get("tidegate_contracts") and row.get("schema_version") is not None:
        contract = json.loads(commit["tidegate_contracts"]).get(f"v{row['schema_version']}")
    return {"row": row, "commit": commit, "contract_fingerprint": contract, "copies": found.height}


# -- ownership ----------------------------------------------------------------------------------


def stream_owner(catalog: Catalog, event_type: str) -> Owner | None:
    """The owner the catalog declares for the stream carrying `event_type` (None: none declared,
    or a type this catalog does not know)."""
    try:
        return catalog.stream(event_type).owner
    except ConfigError:
        return None


def table_owner(catalog: Catalog, spec: TableSpec) -> Owner | None:
    """Who answers for a table: raw/<type> -> its stream's owner; aggregates/<name> -> the owner
    of its source stream (`AggregateSpec.source`); a table shared by every stream -> None."""
    if spec.event_type is not None:
        return stream_owner(catalog, spec.event_type)
    if spec.aggregate is not None:
        source = next((a.source for a in catalog.aggregates if a.name == spec.aggregate), None)
        return stream_owner(catalog, source) if source is not None else None
    return None


def row_owner(catalog: Catalog, spec: TableSpec, row: dict[str, Any]) -> Owner | None:
    """The owner of one row: its table's, else (a quarantined or late row) its event type's."""
    owner = table_owner(catalog, spec)
    if owner is None and isinstance(row.get("event_type"), str):
        owner = stream_owner(catalog, row["event_type"])
    return owner


def owner_json(owner: Owner | None) -> dict[str, str] | None:
    """An owner as `{"team": ..., "contact": ...}` (status --json, lineage --json)."""
    return None if owner is None else {"team": owner.team, "contact": owner.contact}


def owner_text(owner: Owner | None) -> str:
    """An owner for people: `checkout (checkout-team@shop.example.com)`, or `-`."""
    if owner is None:
        return "-"
    return f"{owner.team} ({owner.contact})" if owner.contact else owner.team
