"""Reading the lake: `docs`, `report`, `verify`, `lineage`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tidegate.catalog import load_catalog
from tidegate.cli.app import (
    CatalogOpt,
    JsonOpt,
    LakeOpt,
    Table,
    app,
    console,
    err_console,
    progress,
    require_lake,
)
from tidegate.errors import TidegateError


@app.command()
def docs(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to build the site (default: <TIDEGATE_HOME>/data-docs).", show_default=False
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="Only this ingest run's batches.", show_default=False)
    ] = None,
    last: Annotated[int, typer.Option(min=1, help="At most this many most recent batches.")] = 200,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Build Great Expectations Data Docs (static HTML) from the data-quality results stored in the lake's _quality table."""
    from tidegate import settings
    from tidegate.lake.read import Lake
    from tidegate.ops.docs import build_docs, quality_rows

    catalog = load_catalog(catalog_path)
    require_lake(settings.lake_path(lake), catalog)
    reader = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    rows = quality_rows(reader, run, last)
    with progress(f"Building Data Docs for {len({r['batch_id'] for r in rows})} batch(es) ..."):
        built = build_docs(reader, out or settings.home() / "data-docs", rows)
    console.print(f"[green]✓[/] Data Docs: {built.index}")


@app.command()
def report(
    out: Annotated[
        Path | None,
        typer.Option(help="The HTML file (default: <TIDEGATE_HOME>/report.html).", show_default=False),
    ] = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Write a self-contained HTML report: throughput, latency, quarantine reasons, data-quality pass rate and the aggregates, as charts."""
    from tidegate import settings
    from tidegate.lake.read import Lake
    from tidegate.ops.report import build_report

    catalog = load_catalog(catalog_path)
    require_lake(settings.lake_path(lake), catalog)
    reader = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    with progress("Drawing the report ..."):
        path = build_report(reader, out or settings.home() / "report.html")
    console.print(f"[green]✓[/] report: {path}")


@app.command()
def verify(
    manifest: Annotated[
        Path | None,
        typer.Option(help="Producer manifest (JSONL) to reconcile against the tables.", show_default=False),
    ] = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the lake: one row per event id, one quarantine row per message, balanced ledger; with --manifest, that every message sent landed where it must, exactly once."""
    from tidegate import settings
    from tidegate.lake.verify import verify as run_verify

    catalog = load_catalog(catalog_path)
    if manifest is not None and not manifest.is_file():
        raise TidegateError(
            f"manifest {manifest} does not exist", hint="write one with `tidegate produce --manifest FILE`"
        )
    if manifest is not None:
        from tidegate.lake.verify import read_manifest

        read_manifest(manifest)  # a file that is not a manifest is named before anything is read
    require_lake(settings.lake_path(lake), catalog)
    with progress(f"Verifying {settings.lake_path(lake)} ..."):
        report = run_verify(
            settings.lake_path(lake),
            catalog.event_types,
            manifest,
            storage_options=settings.storage_options(),
            aggregates=catalog.aggregates,
            catalog=catalog,
        )
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "ok": report.ok,
                    "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in report.checks],
                    "problems": report.problems,
                }
            )
        )
        if not report.ok:
            raise typer.Exit(1)
        return
    for name, passed, detail in report.checks:
        mark = "[green]✓[/]" if passed else "[red]✗[/]"
        console.print(f"{mark} {name}: {detail}")
    if not report.ok:
        for p in report.problems[:50]:
            err_console.print(f"    {escape(p)}")
        if len(report.problems) > 50:
            err_console.print(f"    … {len(report.problems) - 50} more")
        raise typer.Exit(1)


@app.command()
def lineage(
    table: Annotated[
        str,
        typer.Argument(
            help="raw/<event type>, quarantine, _ledger, _quality, aggregates/<name> or aggregates/_late."
        ),
    ],
    row: Annotated[
        str | None,
        typer.Option(
            "--row",
            help="An event id (or Pub/Sub message id): show where that row came from.",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="With --row: the event's ce-source, when producers share the id.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Commits to show, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Who owns a table, and where its versions, or one row, came from: run, batch, messages, code version and git sha, contracts and GX suite."""
    from tidegate import settings
    from tidegate.lake.lineage import commits, owner_json, owner_text, row_lineage, row_owner, table_owner
    from tidegate.lake.tables import LakeTables

    root = settings.lake_path(lake)
    catalog = load_catalog(catalog_path)
    spec = LakeTables(root, catalog).resolve(table)  # an unknown name is named first
    uri = spec.uri(root)
    require_lake(root, catalog)
    if row is not None:
        with progress(f"Finding {row} in {table} ..."):
            info = row_lineage(uri, row, settings.storage_options(), source=source, root=root)
        owner = row_owner(catalog, spec, info["row"])
        if as_json:
            console.print_json(
                json.dumps({"table": spec.name, "owner": owner_json(owner), **info}, default=str)
            )
            return
        console.print(f"owner: {escape(owner_text(owner))}")
        r, c = info["row"], info["commit"] or {}
        t = Table(title=f"{table}: row {row}", show_header=False)
        t.add_column("what")
        t.add_column("value")
        for k in (
            "event_id",
            "event_time",
            "schema_version",
            "event_source",
            "trace_id",
            "pubsub_message_id",
            "pubsub_publish_time",
            "subscription",
            "ingest_time",
            "quarantined_at",
            "stage",
            "rule",
            "reason",
            "run_id",
            "batch_id",
        ):
            if k in r:
                t.add_row(k, escape(str(r[k])))
        t.add_row("copies in table", str(info["copies"]))
        t.add_row("added by version", str(c.get("version", "?")))
        for k in (
            "tidegate_version",
            "tidegate_git_sha",
            "tidegate_gx_suite_fingerprint",
            "tidegate_pii_key_id",
            "tidegate_message_digest",
        ):
            if k in c:
                t.add_row(k.removeprefix("tidegate_"), str(c[k]))
        if info["contract_fingerprint"]:
            t.add_row("contract fingerprint", info["contract_fingerprint"])
        console.print(t)
        return
    history = commits(uri, settings.storage_options(), root=root)[:limit]
    owner = table_owner(catalog, spec)
    if as_json:
        console.print_json(
            json.dumps({"table": spec.name, "owner": owner_json(owner), "commits": history}, default=str)
        )
        return
    console.print(f"owner: {escape(owner_text(owner))}")
    t = Table(title=f"{table}: commits, newest first")
    t.add_column("version", justify="right", no_wrap=True)
    t.add_column("when (UTC)", no_wrap=True)
    t.add_column("operation", overflow="fold")
    t.add_column("rows", justify="right", no_wrap=True)
    t.add_column("run", overflow="fold")
    t.add_column("batch", no_wrap=True)
    wide = console.width >= 120  # at 80 columns: code and contracts are in --json and --row
    if wide:
        t.add_column("git sha", no_wrap=True)
        t.add_column("contracts", overflow="fold")
    archived = False
    for h in history:
        versions = sorted(json.loads(h.get("tidegate_contracts", "{}")))  # fingerprints: --json, --row
        when = str(h.get("timestamp") or "")
        archived = archived or bool(h.get("archived"))
        cells = [
            f"{h['version']}{'*' if h.get('archived') else ''}",
            when[:19].replace("T", " ")[5:] if when else "",  # MM-DD HH:MM:SS
            str(h.get("operation", ""))
            + (f" ({h['tidegate_operation']})" if h.get("tidegate_operation") else ""),
            "" if h.get("rows_added") is None else str(h["rows_added"]),
            str(h.get("tidegate_run_id", "")),
            str(h.get("tidegate_batch_id", "")).rsplit("-", 1)[-1],
        ]
        if wide:
            cells += [str(h.get("tidegate_git_sha", ""))[:7], " ".join(versions)]
        t.add_row(*cells)
    console.print(t)
    if archived:
        console.print("* archived in _commits (the commit log itself keeps 10 minutes)")
