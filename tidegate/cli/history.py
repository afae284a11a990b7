"""Rebuilding and keeping the lake: `replay`, `maintain`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, JsonOpt, LakeOpt, Table, app, console, progress, require_lake
from tidegate.errors import TidegateError


@app.command()
def replay(
    aggregate: Annotated[
        str,
        typer.Argument(help="An aggregate or a state view of the catalog (see `tidegate contracts list`)."),
    ],
    since: Annotated[
        str | None,
        typer.Option(
            help="Rebuild only windows starting at or after this time (RFC 3339).", show_default=False
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="... and before this time (RFC 3339).", show_default=False),
    ] = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Rebuild an aggregate table from the raw history (a bounded Beam pipeline; the same windows, lateness and combine logic as ingestion), or a state view (a fold of raw history)."""
    from tidegate import settings
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.pipelines.runs import new_run_id
    from tidegate.version import code_version, git_sha

    catalog = load_catalog(catalog_path)
    if aggregate in {v.name for v in catalog.views}:
        _replay_view(catalog, aggregate, lake, since, until)
        return
    catalog.aggregate(aggregate)  # a clear error for an unknown name, before Beam is imported
    check_catalog(catalog)
    from tidegate.pipelines.replay import replay as run_replay

    lake_path = settings.lake_path(lake)
    with progress(f"Replaying {aggregate} from raw history ..."):
        r = run_replay(
            catalog,
            lake_path,
            aggregate,
            since=since,
            until=until,
            run_id=new_run_id("replay"),
            code_version=code_version(),
            git_sha=git_sha(),
            storage=settings.storage_options(),
        )
    span = f" (windows starting in [{since or '-inf'}, {until or '+inf'}))" if since or until else ""
    console.print(
        f"[green]✓[/] aggregates/{aggregate}{span}: {r.windows:,} windows from {r.events_read:,} raw events "
        f"({r.files} files, raw version {r.raw_version}); {r.late_pairs:,} late pairs in the ledger; "
        f"table version {r.table_version}; {r.seconds:.1f}s"
    )


def _replay_view(catalog: Any, name: str, lake: str | None, since: str | None, until: str | None) -> None:
    from tidegate import settings
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.lake.lock import lake_lock
    from tidegate.lake.views import rebuild
    from tidegate.pipelines.runs import new_run_id

    if since or until:
        raise TidegateError(
            f"{name} is a state view: it is rebuilt whole (a view has no windows)",
            hint="drop --since/--until",
        )
    check_catalog(catalog)
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    run_id = new_run_id("replay")
    with lake_lock(root), progress(f"Folding {name} from raw history ..."):
        rows = rebuild(catalog, root, name, run_id=run_id, storage=settings.storage_options())
    console.print(f"[green]✓[/] views/{name}: {rows:,} rows folded from raw history (run {run_id})")


@app.command()
def maintain(
    retain_hours: Annotated[
        int,
        typer.Option(
            help="Removed-file window: files a reader of an older version or a restore (_audit.removed_files) may still need are kept this long; time travel by version reaches back 10 minutes (the commit log)."
        ),
    ] = 168,
    actor: Annotated[
        str | None,
        typer.Option(help="Who runs it, for the _audit table (default: user@host).", show_default=False),
    ] = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Apply the catalog's retention (delete raw rows, quarantine rows and aggregate windows past it, each deletion recorded in _audit), then compact small files and vacuum files older than --retain-hours."""
    from tidegate import settings
    from tidegate.lake.governance import actor as who
    from tidegate.lake.governance import expire
    from tidegate.lake.lock import lake_lock
    from tidegate.lake.maintenance import maintain as run_maintain
    from tidegate.lake.tables import LakeTables
    from tidegate.pipelines.runs import new_run_id

    catalog = load_catalog(catalog_path)
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    tables = LakeTables(root, catalog)
    run_id = new_run_id("maintain")
    with lake_lock(root):  # no ingest appends while rows are deleted and files rewritten
        with progress(f"Applying retention to {root} ..."):
            expired = expire(tables, run_id=run_id, actor=who(actor), storage=settings.storage_options())
        with progress(f"Compacting and vacuuming {root} ..."):
            report = run_maintain(tables, retain_hours, settings.storage_options())
    for e in expired:
        console.print(
            f"  {e['table']}: {e['rows']:,} rows deleted ({e['reason']}; cutoff {e['cutoff']:%Y-%m-%d})"
        )
    if not expired:
        console.print("  retention: nothing past it")
    t = Table(title=f"maintain {root}")
    for col in ("table", "files before", "compacted", "vacuumed", "files after"):
        t.add_column(col)
    for r in report:
        t.add_row(
            r["table"],
            str(r["files_before"]),
            f"{r['compacted_from']} -> {r['compacted_into']}",
            str(r["vacuumed"]),
            str(r["files_after"]),
        )
    console.print(t)


@app.command()
def audit(
    as_json: JsonOpt = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Every deletion governance made (retention, erasure): when, who, which table, how many rows, why."""
    from tidegate import settings
    from tidegate.lake.governance import audit_rows

    catalog = load_catalog(catalog_path)
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    rows = audit_rows(root, settings.storage_options()).sort("at", descending=True)
    if as_json:
        console.print_json(json.dumps(rows.drop("erased_events").to_dicts(), default=str))
        return
    if rows.is_empty():
        console.print("no deletion recorded (retention has not removed anything; nobody was erased)")
        return
    t = Table(title=f"_audit ({rows.height} deletions, newest first)")
    for col in ("at", "action", "actor", "table", "rows", "reason"):
        t.add_column(col)
    for r in rows.iter_rows(named=True):
        t.add_row(
            f"{r['at']:%Y-%m-%d %H:%M:%S}", r["action"], r["actor"], r["table"], f"{r['rows']:,}", r["reason"]
        )
    console.print(t)


@app.command()
def forget(
    subject: Annotated[
        str,
        typer.Argument(
            help="The data subject's id, as the streams' subject_fields hold it (e.g. a customer id)."
        ),
    ],
    actor: Annotated[
        str | None,
        typer.Option(help="Who asks, for the _audit tombstone (default: user@host).", show_default=False),
    ] = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Erase a data subject: delete their rows from raw and the quarantine, rebuild the aggregate windows they touched, purge the files and log history that held them, and record a tombstone (never the id) in _audit."""
    from tidegate import settings
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.lake.governance import actor as who
    from tidegate.lake.pii import load_protector
    from tidegate.ops.erasure import forget as run_forget
    from tidegate.pipelines.replay import replayer
    from tidegate.pipelines.runs import new_run_id

    catalog = load_catalog(catalog_path)
    check_catalog(catalog)
    if not any(s.subject_fields for s in catalog.streams):
        raise TidegateError(
            "no stream declares subject_fields: tidegate cannot tell which rows belong to a subject",
            hint="add e.g. `subject_fields: [customer_id]` to the streams in the catalog (docs/catalog.md)",
        )
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    protector, _warning = load_protector(lake=root)
    run_id = new_run_id("forget")

    with progress("Erasing the subject ..."):
        report = run_forget(
            catalog,
            root,
            protector,
            subject,
            actor=who(actor),
            run_id=run_id,
            replay=replayer(catalog, root, run_id=run_id, storage=settings.storage_options()),
            storage=settings.storage_options(),
        )
    if not report.deleted:
        console.print(
            f"nothing in {root} held that subject; the request is recorded in _audit ({report.subject_digest})"
        )
        return
    for table, rows in report.deleted.items():
        console.print(f"  {table}: {rows:,} rows deleted")
    for name in report.rebuilt:
        if name.startswith("views/"):
            console.print(f"  {name}: folded again from raw")
        else:
            console.print(f"  aggregates/{name}: touched windows rebuilt from raw")
    console.print(
        f"[green]✓[/] erased (tombstone {report.subject_digest} in _audit, run {run_id}); "
        f"{sum(report.purged.values()):,} files purged and the log history of {len(report.purged)} tables truncated"
    )


@app.command()
def monitor(
    as_json: JsonOpt = False,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Evaluate as of this time (RFC 3339; default: now).", show_default=False),
    ] = None,
    lookback: Annotated[
        str, typer.Option(help="Judge the windows that ended within this span before --at (e.g. 24h, 7d).")
    ] = "24h",
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Evaluate the catalog's stream monitors (volume, freshness, quarantine rate, null-rate drift), record new breaches in _monitors, log each new one (tidegate_monitor_breach, stderr) and print them. Breaches are data, not errors: exit 0 either way."""
    from datetime import UTC

    from tidegate import settings
    from tidegate.cli.app import parse_duration, parse_time
    from tidegate.lake.delta import try_open
    from tidegate.lake.openlineage import LineageEmitter, OutputTable, dataset_name
    from tidegate.lake.read import Lake
    from tidegate.lake.tables import MONITORS
    from tidegate.ops.monitors import evaluate, log_breaches, new_run_id, record

    catalog = load_catalog(catalog_path)
    now = parse_time(at, "--at") or datetime.now(UTC)
    span = parse_duration(lookback, "--lookback")
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    storage = settings.storage_options()
    the_lake = Lake(root, storage, catalog)
    run_id = new_run_id()
    read = [f"raw/{t}" for t in catalog.event_types] + ["quarantine"]
    inputs = [dataset_name(the_lake.uri(t)) for t in read if try_open(the_lake.uri(t), storage) is not None]
    lineage = LineageEmitter(root, catalog=catalog)
    lineage.emit("START", "monitor", run_id, inputs=inputs, tidegate_run_id=run_id)
    try:
        with progress(f"Evaluating the stream monitors of {root} ..."):
            found = evaluate(the_lake, now, lookback=span, run_id=run_id)
            new = record(root, found, storage)
    except BaseException as exc:
        lineage.emit("FAIL", "monitor", run_id, inputs=inputs, error=f"{exc.__class__.__name__}: {exc}")
        raise
    log_breaches(new)  # one structured line per new breach: what a log-based metric counts (GCP)
    fresh = {b.breach_id for b in new}
    shown = [{**b.as_dict(), "new": b.breach_id in fresh} for b in found]
    outputs = (
        [OutputTable(MONITORS.uri(root), the_lake.delta(MONITORS.name).version(), len(new))] if new else []
    )
    lineage.emit(
        "COMPLETE", "monitor", run_id, inputs=inputs, outputs=outputs, tidegate_run_id=run_id, monitors=shown
    )
    when = now.astimezone(UTC)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "lake": root,
                    "evaluated_at": when.isoformat().replace("+00:00", "Z"),
                    "lookback": lookback,
                    "run_id": run_id,
                    "new": len(new),
                    "breaches": shown,
                },
                default=str,
            )
        )
        return
    if not found:
        console.print(
            f"[green]✓[/] no breach: every stream monitor is within its thresholds for the windows that "
            f"ended in the {lookback} before {when:%Y-%m-%d %H:%M:%S} UTC"
        )
    else:
        t = Table(title=f"monitor breaches as of {when:%Y-%m-%d %H:%M:%S} UTC (run {run_id})")
        for col in ("window start (UTC)", "event type", "monitor", "recorded", "what"):
            t.add_column(col)
        for b in shown:
            t.add_row(
                b["window_start"][:19].replace("T", " "),
                b["event_type"],
                f"{b['monitor']} {b['kind']}" + (f" ({b['column']})" if b["column"] else ""),
                "new" if b["new"] else "already recorded",
                b["message"],
            )
        console.print(t)
    console.print(
        f"{len(new):,} new breach{'es' if len(new) != 1 else ''} recorded in _monitors, "
        f"{len(found) - len(new):,} already recorded. Breaches are data, not errors: this command exits 0; "
        "they show in `tidegate status`, `tidegate report` and the OpenLineage run facet tidegateMonitors."
    )
