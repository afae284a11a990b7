"""`tidegate contracts list|show|check`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, console, contracts_app, err_console
from tidegate.errors import TidegateError


@contracts_app.command("list")
def contracts_list(catalog_path: CatalogOpt = None) -> None:
    """Every event type, its versions, compatibility mode, PII fields and suite."""
    from tidegate.expectations.contracts import ContractRegistry

    catalog = load_catalog(catalog_path)
    registry = ContractRegistry.from_catalog(catalog)
    table = Table(title=f"Contracts ({catalog.contracts_dir})")
    for col in ("event type", "versions", "compatibility", "topic", "PII fields", "GX suite"):
        table.add_column(col)
    for s in catalog.streams:
        for event_type in s.types:
            t = registry.types[event_type]
            table.add_row(
                event_type,
                ", ".join(f"v{v}" for v in sorted(t.versions)),
                s.compatibility.value,
                s.topic,
                ", ".join(f"{f} ({c})" for f, c in sorted(t.latest.pii_classes.items()))
                + "".join(f", {f} (url_query)" for f in s.pii_url_fields)
                + (", ce-subject (subject)" if "subject" in s.pii_attributes else "")
                or "-",
                t.suite_path.name if t.suite_path else "[red]missing[/]",
            )
    console.print(table)


@contracts_app.command("show")
def contracts_show(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. shop.order.placed.")],
    version: Annotated[
        int | None, typer.Option(help="Version (default: latest).", show_default=False)
    ] = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """A contract's fields and the Delta column types derived from it."""
    from tidegate.expectations.contracts import ContractRegistry

    catalog = load_catalog(catalog_path)
    catalog.stream(event_type)
    registry = ContractRegistry.from_catalog(catalog)
    contract = registry.latest(event_type) if version is None else registry.get(event_type, version)
    if contract is None:
        raise TidegateError(
            f"{event_type} has no version {version}",
            hint="known versions: " + ", ".join(f"{v}" for v in registry.versions(event_type)),
        )
    table = Table(title=f"{event_type} v{contract.version}  ({contract.dataschema})")
    for col in ("field", "column type", "nullable", "PII", "doc"):
        table.add_column(col)
    for f in contract.arrow_schema:
        table.add_row(
            f.name,
            escape(str(f.type)),
            "yes" if f.nullable else "no",
            f"class {contract.pii_classes[f.name]}" if f.name in contract.pii_classes else "",
            contract.schema["fields"][contract.field_names.index(f.name)].get("doc", ""),
        )
    console.print(table)
    console.print(f"fingerprint (SHA-256 of Avro canonical form): {contract.fingerprint}")


@contracts_app.command("check")
def contracts_check(catalog_path: CatalogOpt = None) -> None:
    """Check every contract version against its predecessors per the catalog's compatibility mode; exit 1 naming type, versions, field and rule if one breaks."""
    from tidegate.expectations.compat import check_registry
    from tidegate.expectations.suites import load_suite
    from tidegate.lake.catalog_check import check_catalog

    catalog = load_catalog(catalog_path)
    registry = check_catalog(catalog)  # contracts, aggregate keys and fields, PII URL fields
    for t in registry.types.values():
        if t.suite_path is None:
            raise TidegateError(
                f"{t.event_type} has no suite.json next to its contracts",
                hint='value rules live in a GX suite; an empty one is {"name": ..., "expectations": []}',
            )
        load_suite(t.suite_path)
    modes = {t: s.compatibility for s in catalog.streams for t in s.types}
    report = check_registry(registry, modes)
    broken = 0
    for event_type, mode in modes.items():
        problems = report[event_type]
        versions = registry.versions(event_type)
        if problems:
            broken += len(problems)
            err_console.print(f"[red]✗[/] {event_type} ({mode.value}, versions {versions}):")
            for p in problems:
                err_console.print(f"    {p}")
        else:
            console.print(
                f"[green]✓[/] {event_type}: {len(versions)} version(s) compatible under {mode.value}"
            )
    if broken:
        raise typer.Exit(1)
