"""`tidegate quarantine list|show`: what was rejected and why, and one rejected message in full."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, LakeOpt, Table, app, console, parse_time, progress, require_lake
from tidegate.errors import TidegateError

quarantine_app = typer.Typer(
    help="The quarantine: list rejected messages, show one, redrive them after a fix.", no_args_is_help=True
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    rule: Annotated[
        str | None, typer.Option(help="Only this rule, e.g. wrong_type.", show_default=False)
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only rows quarantined at or after (RFC 3339).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Rows as JSON.")] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """The newest quarantined messages: when, stage, rule, event and message ids, reason."""
    from tidegate import settings
    from tidegate.lake.read import Lake
    from tidegate.ops.quarantine import quarantined, rules_in

    catalog = load_catalog(catalog_path)
    require_lake(settings.lake_path(lake), catalog)
    reader = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    rows = quarantined(reader, rule=rule, since=parse_time(since, "--since"), limit=limit)
    if rule is not None and rows.is_empty():
        known = rules_in(reader)
        if rule not in known:  # a typo, most likely: an empty table would say "nothing wrong"
            raise TidegateError(
                f"the quarantine has no rows under rule {rule!r}",
                hint=f"its rules: {', '.join(known)}" if known else "the quarantine is empty",
            )
    if as_json:
        console.print_json(json.dumps(rows.to_dicts(), default=str))
        return
    t = Table(title=f"quarantine ({rows.height} newest" + (f", rule {rule}" if rule else "") + ")")
    t.add_column("at (UTC)", no_wrap=True)
    t.add_column("rule", overflow="fold")
    t.add_column("event type", overflow="fold")
    t.add_column("message id", overflow="fold")
    t.add_column("reason", overflow="fold")
    for r in rows.iter_rows(named=True):
        reason = r["reason"] if len(r["reason"]) <= 60 else r["reason"][:59] + "…"
        t.add_row(
            r["quarantined_at"].strftime("%m-%d %H:%M:%S"),
            r["rule"],
            escape(r["event_type"] or "?"),
            r["pubsub_message_id"],
            escape(reason),
        )
    console.print(t)
    console.print("[dim]one in full: tidegate quarantine show <message id>[/]")


@quarantine_app.command("show")
def quarantine_show(
    message_id: Annotated[str, typer.Argument(help="The Pub/Sub message id (see `quarantine list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="The row and original as JSON.")] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """One quarantined message: every failure, its attributes and its original payload (decrypted with this process's PII key; PII fields stay tokenized)."""
    from tidegate import settings
    from tidegate.lake.pii import load_protector
    from tidegate.lake.read import Lake
    from tidegate.ops.quarantine import quarantined_message

    catalog = load_catalog(catalog_path)
    require_lake(settings.lake_path(lake), catalog)
    reader = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    protector, _warning = load_protector(lake=reader.root)
    info = quarantined_message(reader, message_id, protector)
    if as_json:
        console.print_json(json.dumps(info, default=str))
        return
    t = Table(title=f"quarantined message {message_id}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")
    for key in ("quarantined_at", "stage", "rule", "reason", "event_type", "event_id", "event_time"):
        t.add_row(key, escape(str(info.get(key))))
    for f in info.get("failures") or []:
        t.add_row("failure", escape(f"{f['rule']} {f['field'] or ''}: {f['message']}"))
    t.add_row("attributes", escape(json.dumps(info["attributes"], sort_keys=True)))
    t.add_row("payload", f"{info['payload_size']:,} bytes, sha256 {info['payload_sha256']}")
    original = info.get("original")
    t.add_row(
        "original",
        escape(
            json.dumps(original, indent=1, default=str) if original is not None else info["original_note"]
        ),
    )
    console.print(t)


@quarantine_app.command("redrive")
def quarantine_redrive(
    rule: Annotated[
        str | None, typer.Option(help="Redrive the messages quarantined under this rule.", show_default=False)
    ] = None,
    ids: Annotated[
        str | None,
        typer.Option(help="... or these Pub/Sub message ids (comma-separated).", show_default=False),
    ] = None,
    production: Annotated[
        bool, typer.Option("--production", help="Refuse to run without a real PII key.")
    ] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Run quarantined messages through today's contracts and suites (after a fix): those that now pass land in raw once, the rest stay quarantined; a ledger row and a `_redrives` row each."""
    from tidegate import settings
    from tidegate.pipelines.redrive import redrive

    catalog = load_catalog(catalog_path)
    wanted = [i.strip() for i in ids.split(",") if i.strip()] if ids else None
    with progress("Redriving ..."):
        result = redrive(
            catalog, settings.lake_path(lake), rule=rule, message_ids=wanted, production=production
        )
    if result.taken == 0:
        console.print("Nothing to redrive: no quarantined message matches (or all of them landed already).")
        return
    console.print(
        f"Redrive {result.run_id}: {result.taken:,} taken -> {len(result.landed):,} landed in raw, "
        f"{len(result.rejected_again):,} rejected again, {len(result.not_kept):,} without a kept original."
    )
    if result.rejected_again:
        console.print("[dim]why they still fail: tidegate quarantine show <message id>[/]")
