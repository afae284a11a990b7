"""`tidegate keys show|rotate|retokenize`: the PII key ring (docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, LakeOpt, Table, app, console, progress

keys_app = typer.Typer(
    help="The PII key ring: show versions, rotate, re-tokenize the lake.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

RingOpt = Annotated[
    Path,
    typer.Option(
        "--keyring-file",
        help="The key ring file (JSON, 0600) to rotate; point TIDEGATE_PII_KEY_FILE at it.",
    ),
]


@keys_app.command("show")
def keys_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lake: LakeOpt = None,
) -> None:
    """The key versions this process is given and their key ids (never the keys)."""
    from tidegate import settings
    from tidegate.lake.pii import load_protector
    from tidegate.ops.keys import key_ids

    protector, warning = load_protector(lake=settings.lake_path(lake))
    rows = key_ids(protector.ring)
    if as_json:
        console.print_json(json.dumps({"current": protector.key_version, "versions": rows}))
        return
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    t = Table(title="PII key ring")
    for col in ("version", "key id", "current"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["version"]), r["key_id"], "yes" if r["current"] else "")
    console.print(t)


@keys_app.command("rotate")
def keys_rotate(keyring_file: RingOpt) -> None:
    """Add a new random key version and make it current (older versions stay: nothing in the lake becomes unreadable)."""
    from tidegate.ops.keys import key_ids, rotate_keyring

    ring = rotate_keyring(keyring_file)
    current = next(r for r in key_ids(ring) if r["current"])
    console.print(
        f"[green]✓[/] {keyring_file}: version {ring.current} is current (key id {current['key_id']}); "
        f"versions {', '.join(str(v) for v, _ in ring.keys)} stay readable."
    )
    console.print(
        "next: point TIDEGATE_PII_KEY_FILE at it (or `gcloud secrets versions add tidegate-pii-key "
        f"--data-file={keyring_file}`), restart ingestion, then `tidegate keys retokenize`."
    )


@keys_app.command("retokenize")
def keys_retokenize(lake: LakeOpt = None, catalog_path: CatalogOpt = None) -> None:
    """Move every token and encrypted original of the lake to the current key version, then rebuild the aggregates keyed by tokens."""
    from tidegate import settings
    from tidegate.lake.pii import load_protector
    from tidegate.ops.keys import retokenize
    from tidegate.pipelines.replay import replayer
    from tidegate.pipelines.runs import new_run_id

    catalog = load_catalog(catalog_path)
    root = settings.lake_path(lake)
    protector, warning = load_protector(lake=root)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    run_id = new_run_id("retokenize")

    with progress(f"Re-tokenizing {root} to key version {protector.key_version} ..."):
        report = retokenize(
            catalog,
            root,
            protector,
            run_id=run_id,
            storage=settings.storage_options(),
            replay=replayer(catalog, root, run_id=run_id, storage=settings.storage_options()),
        )
    for r in report.tables:
        name = r.table.removeprefix(root).lstrip("/")
        console.print(
            f"  {name}: {r.partitions} partition(s), {r.rows:,} rows rewritten"
            if r.partitions
            else f"  {name}: already on version {protector.key_version}"
        )
    for name in report.replayed:
        console.print(f"  aggregates/{name}: rebuilt from raw (its keys hold tokens)")
    console.print(f"[green]✓[/] the lake is on key version {protector.key_version} (run {run_id})")
