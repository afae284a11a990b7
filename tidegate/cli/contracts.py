"""`tidegate contracts list|show|check|new|bump`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, JsonOpt, Table, console, contracts_app, err_console, progress
from tidegate.errors import TidegateError

# stream settings a scaffolded stream is validated with (it inherits the catalog's defaults)
_INHERITED = {
    "ack_deadline_seconds",
    "message_retention",
    "exactly_once_delivery",
    "max_payload_bytes",
    "compatibility",
}


@contracts_app.command("list")
def contracts_list(catalog_path: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Every event type, its versions, compatibility mode, topic, PII (and token classes) and suite; then the aggregates."""
    from tidegate.expectations.contracts import ContractRegistry

    catalog = load_catalog(catalog_path)
    registry = ContractRegistry.from_catalog(catalog)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "contracts_dir": str(catalog.contracts_dir),
                    "types": [
                        {
                            "event_type": event_type,
                            "versions": sorted(registry.types[event_type].versions),
                            "compatibility": s.compatibility.value,
                            "topic": s.topic,
                            "subscription": s.subscription,
                            "dataschema": registry.types[event_type].latest.dataschema,
                            "pii": registry.types[event_type].latest.pii_classes,
                            "pii_url_fields": s.pii_url_fields,
                            "pii_attributes": s.pii_attributes,
                            "suite": str(registry.types[event_type].suite_path or ""),
                        }
                        for s in catalog.streams
                        for event_type in s.types
                    ],
                    "aggregates": [
                        {"name": a.name, "source": a.source, "window": a.window.type, "keys": a.keys}
                        for a in catalog.aggregates
                    ],
                }
            )
        )
        return
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
    if catalog.aggregates:
        aggs = Table(title="Aggregates (tidegate replay <name>)")
        for col in ("aggregate", "source", "window", "keys", "metrics"):
            aggs.add_column(col)
        for a in catalog.aggregates:
            aggs.add_row(
                a.name,
                a.source,
                a.window.type,
                ", ".join(a.keys) or "-",
                ", ".join(str(m.name or m.fn) for m in a.metrics),
            )
        console.print(aggs)


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
def contracts_check(catalog_path: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Check every contract version against its predecessors per the catalog's compatibility mode; exit 1 naming type, versions, field and rule if one breaks."""
    from tidegate.expectations.compat import check_registry
    from tidegate.expectations.suites import load_suite
    from tidegate.lake.catalog_check import check_catalog

    catalog = load_catalog(catalog_path)
    with progress("Checking contracts, suites and aggregates ..."):
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
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "ok": not any(report[t] for t in modes),
                    "types": [
                        {
                            "event_type": t,
                            "compatibility": m.value,
                            "versions": registry.versions(t),
                            "problems": [str(p) for p in report[t]],
                        }
                        for t, m in modes.items()
                    ],
                }
            )
        )
        if any(report[t] for t in modes):
            raise typer.Exit(1)
        return
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


_AVSC = """{{
  "type": "record",
  "name": "{record}",
  "namespace": "{event_type}",
  "doc": "{event_type}: describe the event here.",
  "fields": [
    {{"name": "{key}", "type": "string", "doc": "The id of the thing this event is about: rename it, then add your fields."}}
  ]
}}
"""


@contracts_app.command("new")
def contracts_new(
    event_type: Annotated[
        str, typer.Argument(help="The new ce-type, dotted lowercase, e.g. shop.order.cancelled.")
    ],
    topic: Annotated[
        str | None, typer.Option(help="Its topic (default: the type with dashes).", show_default=False)
    ] = None,
    subscription: Annotated[
        str | None, typer.Option(help="Its subscription (default: <topic>-tidegate).", show_default=False)
    ] = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Scaffold a new event type: v1.avsc, an empty suite.json and a stream in the catalog; `contracts check` passes on it as written."""
    from tidegate.catalog import Stream, default_catalog_path
    from tidegate.expectations.contracts import dataschema_uri

    path = catalog_path or default_catalog_path()
    catalog = load_catalog(path)
    if event_type in catalog.event_types:
        raise TidegateError(
            f"{event_type} is already a type of the catalog",
            hint=f"a new version of it: `tidegate contracts bump {event_type}`",
        )
    topic = topic or event_type.replace(".", "-")
    subscription = subscription or f"{topic}-tidegate"
    try:
        Stream.model_validate(  # the catalog's own rules for names, before anything is written
            {
                "event_type": event_type,
                "topic": topic,
                "subscription": subscription,
                **catalog.streams[0].model_dump(include=_INHERITED),
            }
        )
    except ValueError as exc:  # pydantic's ValidationError: the first reason is the one to show
        reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise TidegateError(
            f"cannot add {event_type!r}: {reason.removeprefix('Value error, ')}",
            hint="a type is dotted lowercase (shop.order.cancelled); --topic/--subscription are Pub/Sub ids",
        ) from None
    folder = catalog.contracts_dir / event_type
    if folder.exists():
        raise TidegateError(f"{folder} already exists", hint="remove it, or add it to the catalog by hand")
    folder.mkdir(parents=True)
    record = "".join(part.capitalize() for part in event_type.replace("-", ".").split("."))
    key = event_type.split(".")[-2] + "_id" if event_type.count(".") >= 2 else "id"
    (folder / "v1.avsc").write_text(
        _AVSC.format(record=record, event_type=event_type, key=key), encoding="utf-8"
    )
    (folder / "suite.json").write_text(
        json.dumps(
            {
                "name": event_type,
                "expectations": [
                    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": key}, "meta": {}}
                ],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    text = Path(path).read_text(encoding="utf-8")
    stanza = (
        f"\n  - event_type: {event_type}\n"
        f"    description: TODO what this event means.\n"
        f"    topic: {topic}\n"
        f"    subscription: {subscription}\n"
    )
    marker = "\naggregates:"
    text = text.replace(marker, stanza + marker, 1) if marker in text else text.rstrip("\n") + "\n" + stanza
    Path(path).write_text(text, encoding="utf-8")
    load_catalog(path)  # still a valid catalog
    console.print(
        f"[green]✓[/] {event_type}: {folder / 'v1.avsc'}, {folder / 'suite.json'}, and a stream in {path}"
    )
    console.print(
        f"next: edit the fields and rules, then `tidegate contracts check` and `tidegate up`; producers send "
        f"ce-type {event_type} and ce-dataschema {dataschema_uri(event_type, 1)} on topic {topic}"
    )


@contracts_app.command("bump")
def contracts_bump(
    event_type: Annotated[str, typer.Argument(help="An event type of the catalog.")],
    catalog_path: CatalogOpt = None,
) -> None:
    """Start the next contract version: copy the latest v<N>.avsc to v<N+1>.avsc; edit it, then `contracts check` says whether the change is compatible."""
    from tidegate.expectations.contracts import ContractRegistry, dataschema_uri

    catalog = load_catalog(catalog_path)
    catalog.stream(event_type)  # a clear error for an unknown type
    t = ContractRegistry.from_catalog(catalog).types[event_type]
    latest = t.latest
    target = latest.path.with_name(f"v{latest.version + 1}.avsc")
    target.write_text(latest.path.read_text(encoding="utf-8"), encoding="utf-8")
    console.print(f"[green]✓[/] {target} (a copy of v{latest.version})")
    console.print(
        f"next: change it, run `tidegate contracts check` ({catalog.stream(event_type).compatibility.value}); "
        f"producers opt in with ce-dataschema {dataschema_uri(event_type, latest.version + 1)}"
    )
