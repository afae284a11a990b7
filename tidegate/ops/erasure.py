"""`tidegate forget <subject>`: erase a data subject and keep the books true.

    report = forget(catalog, lake, protector, "cus_7GQ32JMV", actor=..., run_id=..., replay=...)

In order, under the lake lock (no ingest appends meanwhile):
1. find what holds the subject (tidegate.lake.erasure.find_subject);
2. delete it: one DELETE per raw table, one on the quarantine, one on the late ledger, each
   commit saying `tidegate_operation=erase` (the projection skips it: this procedure rebuilds
   what it touched itself);
3. rebuild the touched windows of every aggregate over a touched raw table (a ranged replay
   from raw, which no longer has the subject), so sums and counts stop counting them and
   windows keyed by them (sessions per user) disappear; fold every state view over a touched
   table again (it holds the subject's columns, e.g. order_state's customer_id);
4. purge: vacuum and truncate the log of every table touched, so no file keeps them;
5. write the tombstone to `_audit`: who, when, which tables, how many rows, a keyed digest of the
   subject and digests of the erased events (what verify needs to tell erased from lost),
   never the subject in clear.
The ledger is not rewritten: it records what arrived, and verify knows what was erased.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from deltalake import CommitProperties, Transaction, write_deltalake

from tidegate.catalog import Catalog, parse_duration
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.delta import try_open
from tidegate.lake.erasure import (
    delete_where,
    find_subject,
    late_predicate,
    purge_history,
    subject_digest,
    touched_range,
)
from tidegate.lake.governance import write_audit
from tidegate.lake.lock import lake_lock
from tidegate.lake.pii import PiiProtector, pii_policies
from tidegate.lake.projection import Projector
from tidegate.lake.tables import LATE, QUARANTINE, LakeTables, aggregate_table, raw_table
from tidegate.lake.verify import event_digest
from tidegate.lake.views import rebuild as rebuild_view
from tidegate.lake.views import view_uri


@dataclass
class ForgetReport:
    subject_digest: str
    deleted: dict[str, int] = field(default_factory=dict)  # table -> rows
    rebuilt: list[str] = field(default_factory=list)  # aggregates whose touched windows were replayed
    purged: dict[str, int] = field(default_factory=dict)  # table -> files vacuumed


def _mark(lake: str, spec: Any, storage: dict[str, str] | None) -> None:
    """Record the raw table's current version as the version the aggregate incorporates (an
    empty commit carrying the app transaction: tidegate.lake.aggregate_writes)."""
    raw = try_open(raw_table(spec.source).uri(lake), storage)
    table = try_open(aggregate_table(spec.name).uri(lake), storage)
    if raw is None or table is None:
        return
    write_deltalake(
        table,
        table.to_pyarrow_table().schema.empty_table(),
        mode="append",
        commit_properties=CommitProperties(
            custom_metadata={"tidegate_operation": "erase"},
            app_transactions=[Transaction(app_id(spec), raw.version())],
        ),
    )


def _reach(spec: Any) -> timedelta:
    """How far before an event a window containing it may start."""
    w = spec.window
    span = [w.size, w.gap]
    return timedelta(seconds=max(parse_duration(x) for x in span if x))


def forget(
    catalog: Catalog,
    lake: str,
    protector: PiiProtector,
    subject: str,
    *,
    actor: str,
    run_id: str,
    replay: Callable[[str, datetime, datetime], object],  # (aggregate, since, until): rebuild windows
    storage: dict[str, str] | None = None,
) -> ForgetReport:
    tables = LakeTables(lake, catalog)
    registry = ContractRegistry.from_catalog(catalog)
    policies = pii_policies(catalog, registry)
    digest = subject_digest(protector, subject)
    report = ForgetReport(digest)
    meta = {
        "tidegate_operation": "erase",
        "tidegate_run_id": run_id,
        "tidegate_actor": actor,
        "tidegate_subject_digest": digest,
    }
    with lake_lock(lake):
        # every aggregate up to its raw table first: after the erasure its marker moves to the
        # raw version the erasure made (the history before it is purged), which is only right
        # if nothing older was left to project
        Projector(
            catalog, registry, lake, run_id=run_id, code_version="", git_sha="", storage=storage
        ).project_all()
        found = find_subject(tables, policies, protector, subject, storage)
        if found.empty:
            write_audit(
                lake,
                [
                    {
                        "action": "erase",
                        "actor": actor,
                        "run_id": run_id,
                        "table": "(none)",
                        "rows": 0,
                        "reason": "erasure of a data subject: nothing held them",
                        "subject_digest": digest,
                        "erased_events": [],
                    }
                ],
                storage,
            )
            return report
        audit: list[dict[str, Any]] = []
        touched: list[str] = []
        for event_type, rows in found.raw.items():
            name = f"raw/{event_type}"
            n, version = delete_where(raw_table(event_type).uri(lake), found.predicates[name], meta, storage)
            report.deleted[name] = n
            touched.append(raw_table(event_type).uri(lake))
            audit.append(
                {
                    "action": "erase",
                    "actor": actor,
                    "run_id": run_id,
                    "table": name,
                    "rows": n,
                    "reason": "erasure of a data subject",
                    "table_version": version,
                    "subject_digest": digest,
                    "erased_events": [
                        event_digest(event_type, e) for e in rows.get_column("event_id").to_list()
                    ],
                }
            )
        if found.quarantine is not None and found.quarantine.height:
            n, version = delete_where(QUARANTINE.uri(lake), found.predicates["quarantine"], meta, storage)
            report.deleted["quarantine"] = n
            touched.append(QUARANTINE.uri(lake))
            audit.append(
                {
                    "action": "erase",
                    "actor": actor,
                    "run_id": run_id,
                    "table": "quarantine",
                    "rows": n,
                    "reason": "erasure of a data subject",
                    "table_version": version,
                    "subject_digest": digest,
                    "erased_events": [
                        event_digest(r["event_type"] or "", r["event_id"] or r["pubsub_message_id"])
                        for r in found.quarantine.iter_rows(named=True)
                    ],
                }
            )
        late = late_predicate(found)
        if late is not None:
            n, _ = delete_where(LATE.uri(lake), late, meta, storage)
            if n:
                report.deleted[LATE.name] = n
                touched.append(LATE.uri(lake))
        # purge the raw tables, the quarantine and the late ledger first: the aggregates' markers
        # below must name a raw version the truncated log still has
        for uri in touched:
            report.purged[uri.removeprefix(lake).lstrip("/")] = purge_history(uri, storage)
        rebuilt: list[str] = []
        for spec in catalog.aggregates:
            span = touched_range(found, spec.source)
            if span is None:
                continue
            first, last = span
            replay(spec.name, first - _reach(spec), last + timedelta(microseconds=1))
            _mark(lake, spec, storage)  # it now incorporates the raw version after the erasure
            report.rebuilt.append(spec.name)
            rebuilt.append(aggregate_table(spec.name).uri(lake))
        for view in catalog.views:  # a view holds the subject's columns too: fold it again
            if any(e.type in found.raw and found.raw[e.type].height for e in view.events):
                rebuild_view(catalog, lake, view.name, run_id=run_id, storage=storage)
                report.rebuilt.append(f"views/{view.name}")
                rebuilt.append(view_uri(lake, view.name))
        for uri in rebuilt:
            report.purged[uri.removeprefix(lake).lstrip("/")] = purge_history(uri, storage)
        write_audit(lake, audit, storage)
    return report
