"""`tidegate demo`: the whole story on a private emulator."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer
from rich.markup import escape

from tidegate.catalog import Catalog, load_catalog
from tidegate.cli.app import CatalogOpt, Table, app, console, err_console, progress
from tidegate.cli.ingest import run_local_ingest
from tidegate.cli.produce import publish_with_progress
from tidegate.cli.render import summary_table
from tidegate.errors import TidegateError


@app.command()
def demo(
    count: Annotated[int, typer.Option("--count", "-n", min=10, help="Messages to publish.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    catalog_path: CatalogOpt = None,
) -> None:
    """The whole story on a private emulator: provision, publish a messy mix, ingest it into a fresh demo lake until idle, verify every message against the manifest, and show what landed where."""
    import shutil

    from tidegate import settings
    from tidegate.infra import emulator as emu
    from tidegate.infra.backlog import emulator_backlog
    from tidegate.infra.pubsub import desired_subscriptions, provision
    from tidegate.lake.verify import verify as run_verify
    from tidegate.producer import ProduceConfig

    catalog = load_catalog(catalog_path)
    workdir = settings.home() / "demo"
    lake = workdir / "lake"
    shutil.rmtree(lake, ignore_errors=True)  # the demo's own lake: every run starts clean
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "manifest.jsonl"
    console.rule("tidegate demo")
    with progress("Starting a private Pub/Sub emulator ..."):
        ctx = emu.private_emulator(workdir / "logs")
        proc = ctx.__enter__()
    try:
        console.print(f"1. Pub/Sub emulator on {proc.address} (private to this demo)")
        changes = provision(catalog, proc.address)
        console.print(
            f"2. Provisioned {len(changes)} resources from {catalog.path.name}: "
            + ", ".join(f"{n} {a}" for a, n in Counter(c.action for c in changes).items())
        )
        config = ProduceConfig(
            types=tuple(catalog.event_types),
            count=count,
            seed=seed,
            duplicate_rate=0.01,
            invalid_rate=0.05,
            out_of_order_rate=0.05,
            late_rate=0.01,
        )
        report = publish_with_progress(catalog, proc.address, config, manifest)
        console.print("3. Published a messy mix:")
        console.print(summary_table(report))
        console.print("4. Ingesting until the subscriptions are idle:")
        # several batches: later batches see the watermark that earlier ones set, so the events
        # sent 2 h late really are late for the aggregates (the first batch has no watermark yet)
        summary = run_local_ingest(
            catalog, proc.address, str(lake), until_idle=1.0, max_wait=1.0, max_batch=max(200, count // 5)
        )
        left = emulator_backlog(
            proc.address,
            catalog.project,
            [s.name for s in desired_subscriptions(catalog)],
        )
        console.print(
            "   subscription backlog afterwards (counted on the emulator): "
            + ", ".join(
                f"{b.subscription} {b.messages if b.messages is not None else '?'}"
                for b in left.subscriptions
            )
        )
    finally:
        ctx.__exit__(None, None, None)
    console.print("5. Verifying the lake against the manifest:")
    result = run_verify(
        str(lake), catalog.event_types, manifest, aggregates=catalog.aggregates, catalog=catalog
    )
    for name, passed, detail in result.checks:
        console.print(f"   {'[green]✓[/]' if passed else '[red]✗[/]'} {name}: {detail}")
    if not result.ok:
        for p in result.problems[:20]:
            err_console.print(f"    {escape(p)}")
        raise TidegateError("the lake does not match what was sent (see above)")
    _print_landing(str(lake), catalog)
    console.print(f"\n{summary.received:,} messages ingested in {summary.seconds:.1f}s. Lake: {lake}")
    # each command on a line of its own, never hard-wrapped: a narrow terminal folds it on
    # screen, and copy-paste still gets one command
    for label, command in (
        (
            "Read it:",
            f"uv run python -c \"import polars as pl; print(pl.read_delta('{lake}/raw/shop.order.placed'))\"",
        ),
        (
            "Aggregates:",
            f"uv run python -c \"import polars as pl; print(pl.read_delta('{lake}/aggregates/revenue_per_currency_1m'))\"",
        ),
        ("Check it again:", f"uv run tidegate verify --lake {lake} --manifest {manifest}"),
        ("Notebook:", "uv run jupyter execute notebooks/quickstart.ipynb"),
    ):
        console.print(label)
        console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)


def _print_landing(lake: str, catalog: Catalog) -> None:
    from tidegate.lake.read import Lake
    from tidegate.ops.landing import landed

    table = Table(title="6. What landed where")
    for col, justify in (("table", "left"), ("stage", "left"), ("rule", "left"), ("rows", "right")):
        table.add_column(col, justify=justify, no_wrap=col in ("table", "rows"))  # names stay whole
    for row in landed(Lake(lake, catalog=catalog)):
        table.add_row(row.table, row.stage, row.rule, f"{row.rows:,}")
    console.print(table)
