"""`tidegate status`: the lake at a glance, for a terminal or (--json) a machine."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.markup import escape

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, EmulatorOpt, LakeOpt, Table, app, console, no_tables, progress
from tidegate.errors import TidegateError


def _print_backlog(bl: dict[str, Any]) -> None:
    if bl["source"] == "off":
        return
    if bl["subscriptions"] and any(s["messages"] is not None for s in bl["subscriptions"]):
        t = Table(title=f"subscription backlog ({bl['source']})")
        for col, justify in (
            ("subscription", "left"),
            ("messages", "right"),
            ("oldest unacked", "right"),
            ("measured at", "left"),
        ):
            t.add_column(col, justify=justify)
        for sub in bl["subscriptions"]:
            n = sub["messages"]
            age = sub["oldest_unacked_age_seconds"]
            t.add_row(
                sub["subscription"],
                "?" if n is None else f"{'>= ' if not sub['complete'] else ''}{n:,}",
                "-" if age is None else f"{age:,.1f}s",
                (sub["measured_at"] or "-")[:19],
            )
        console.print(t)
    if bl["unavailable"]:
        console.print(f"[yellow]subscription backlog ({bl['source']}):[/] {escape(bl['unavailable'])}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for machines).")] = False,
    backlog: Annotated[
        str,
        typer.Option(
            help="Subscription backlog from: auto (Cloud Monitoring for a gs:// lake, else a count "
            "on the emulator), count, monitoring, off.",
        ),
    ] = "auto",
    backlog_limit: Annotated[
        int, typer.Option(min=1, help="Stop counting an emulator subscription's backlog here.")
    ] = 20_000,
    project: Annotated[
        str | None,
        typer.Option(help="GCP project of the subscriptions (default: the catalog's).", show_default=False),
    ] = None,
    emulator: EmulatorOpt = None,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """The lake at a glance: every table's version, rows, last commit, age and owner; subscription backlog; ledger balance, quarantine, late and data-quality rates; latest publish->commit latency."""
    from tidegate import settings
    from tidegate.lake.read import Lake
    from tidegate.ops.status import BACKLOG_MODES
    from tidegate.ops.status import backlog as lake_backlog
    from tidegate.ops.status import status as lake_status

    if backlog not in BACKLOG_MODES:
        raise TidegateError(
            f"--backlog {backlog!r} is not one of {', '.join(BACKLOG_MODES)}",
            hint="e.g. --backlog off to skip it, --backlog monitoring on GCP",
        )
    catalog = load_catalog(catalog_path)
    the_lake = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    with progress(f"Reading {the_lake.root} ..."):
        report = lake_status(the_lake)
        report["backlog"] = lake_backlog(
            the_lake,
            backlog,
            address=settings.emulator_address(catalog, emulator),
            project=project or catalog.project,
            emulator_explicit=bool(emulator or os.environ.get("PUBSUB_EMULATOR_HOST")),
            limit=backlog_limit,
        ).as_dict()
    if as_json:  # an empty lake is a state too (a new deployment: what matters is the backlog)
        console.print_json(json.dumps(report, default=str))
        return
    if not report["tables"]:
        _print_backlog(report["backlog"])
        raise no_tables(report["lake"], catalog)
    t = Table(title=f"tidegate status: {report['lake']}")
    # Below 100 columns the files and last-commit columns give way (age says how recent; --json
    # has everything), so a table's name, what you type next, is not cut in two at 80.
    narrow = console.width < 100
    columns = [("table", "left"), ("version", "right"), ("rows", "right")]
    columns += [] if narrow else [("files", "right"), ("last commit", "left")]
    columns += [("age", "right"), ("owner", "left")]
    for col, justify in columns:
        t.add_column(
            col, justify=justify, overflow="fold", no_wrap=col in ("table", "version", "rows", "age")
        )
    for row in report["tables"]:
        owner = row.get("owner")
        cells = [row["table"], str(row["version"]), f"{row['rows']:,}"]
        if not narrow:
            cells += [str(row["files"]), row["last_commit"][:19].replace("T", " ")]
        cells += [
            f"{row['age_seconds']:,.0f}s",
            "-" if owner is None else escape(owner["team"]),  # the contact: --json, `tidegate lineage`
        ]
        t.add_row(*cells)
    console.print(t)
    _print_backlog(report["backlog"])
    if "ledger" in report:
        led = report["ledger"]
        mark = "[green]✓[/]" if led["balanced"] else "[red]✗[/]"
        console.print(
            f"{mark} ledger: {led['batches']:,} batches, {led['received']:,} received = {led['raw_written']:,} written + "
            f"{led['duplicates_skipped']:,} duplicates + {led['quarantined']:,} quarantined + {led['quarantine_duplicates']:,} re-quarantined"
        )
        console.print(f"  quarantine rate {led['quarantine_rate']:.2%}; latest run {led['latest_run']}")
        if led.get("id_conflicts"):
            console.print(
                f"  [yellow]{led['id_conflicts']:,} id conflict(s)[/]: copies of a landed (source, id) with another "
                "payload, quarantined as id_conflict (`tidegate quarantine list --rule id_conflict`)"
            )
        lat = report["latency_seconds"]
        if lat["events"]:
            console.print(
                f"  publish -> commit latency of that run: p50 {lat['p50']} s, p99 {lat['p99']} s ({lat['events']:,} events)"
            )
    if "hops" in report:
        hops = {k: v for k, v in report["hops"].items() if k != "run"}
        console.print("  per hop (latest run): " + ", ".join(f"{k} {v:,}" for k, v in hops.items()))
    if "data_quality" in report and report["data_quality"]["pass_rate"] is not None:
        dq = report["data_quality"]
        console.print(
            f"  data quality: {dq['pass_rate']:.2%} of {dq['events']:,} validated events passed every "
            f"expectation ({dq['failed']:,} quarantined by one)"
        )
        for t, v in dq["per_event_type"].items():
            if v["failed"]:
                console.print(f"    {t}: {v['pass_rate']:.2%} of {v['events']:,} events")
        worst = [e for e in dq["per_expectation"] if e["unexpected"]][:3]
        for e in worst:
            where = f"{e['event_type']} {e['expectation']}" + (f" on {e['column']}" if e["column"] else "")
            console.print(f"    {where}: {e['pass_rate']:.2%} of {e['events']:,} events met it")
    late = report["late"]
    console.print(
        f"  late for aggregates: {late['events']:,} events ({late['pairs']:,} (event, window) pairs)"
        if late["pairs"]
        else "  late for aggregates: none"
    )
    for name, one in late["per_aggregate"].items():
        if one["pairs"]:
            console.print(
                f"    {name}: {one['events']:,} events ({one['late_rate']:.2%} of its source), "
                f"{one['pairs']:,} pairs"
            )
    _print_monitors(report.get("monitors", []))


def _print_monitors(breaches: list[dict[str, Any]]) -> None:
    if not breaches:
        console.print(
            "  monitors: no breach in the last 24 h (`tidegate monitor` evaluates the catalog's monitors)"
        )
        return
    console.print(
        f"  [yellow]monitors: {len(breaches):,} breach{'es' if len(breaches) != 1 else ''} in the last 24 h[/] "
        "(newest window first; `tidegate monitor` for all of them):"
    )
    for b in breaches[:10]:
        console.print(
            f"    {b['window_start'][:19].replace('T', ' ')} {b['monitor']} {b['kind']}: {escape(b['message'])}"
        )
    if len(breaches) > 10:
        console.print(f"    ... and {len(breaches) - 10:,} more (`tidegate status --json`, key monitors)")
