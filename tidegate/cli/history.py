"""Rebuilding and keeping the lake: `replay`, `maintain`."""

from __future__ import annotations

from typing import Annotated

import typer

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, LakeOpt, Table, app, console, progress, require_lake


@app.command()
def replay(
    aggregate: Annotated[
        str, typer.Argument(help="An aggregate of the catalog (see `tidegate contracts list`).")
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
    """Rebuild an aggregate table from the raw history (a bounded Beam pipeline; the same windows, lateness and combine logic as ingestion)."""
    from tidegate import settings
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.pipelines.runs import new_run_id
    from tidegate.version import code_version, git_sha

    catalog = load_catalog(catalog_path)
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


@app.command()
def maintain(
    retain_hours: Annotated[
        int, typer.Option(help="Keep files a reader or time travel may still need for this long.")
    ] = 168,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Compact each table's small per-batch files into large ones and vacuum files older than --retain-hours (rows are never changed)."""
    from tidegate import settings
    from tidegate.lake.maintenance import maintain as run_maintain
    from tidegate.lake.tables import LakeTables

    catalog = load_catalog(catalog_path)
    root = settings.lake_path(lake)
    require_lake(root, catalog)
    with progress(f"Compacting and vacuuming {root} ..."):
        report = run_maintain(LakeTables(root, catalog), retain_hours, settings.storage_options())
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
