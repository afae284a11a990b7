"""`tidegate produce`: publish sample CloudEvents (valid and faulty) to the topics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tidegate.catalog import Catalog, load_catalog
from tidegate.errors import TidegateError

if TYPE_CHECKING:
    from tidegate.producer import ProduceConfig, PublishReport

from tidegate.cli.app import (
    CatalogOpt,
    EmulatorOpt,
    app,
    console,
    parse_duration,
    parse_rate,
    parse_time,
    require_emulator,
)
from tidegate.cli.render import summary_table


def publish_with_progress(
    catalog: Catalog, address: str, config: ProduceConfig, manifest: Path | None, quiet: bool = False
) -> PublishReport:
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.producer import generate, publish

    registry = ContractRegistry.from_catalog(catalog)
    messages = generate(config, catalog, registry)
    with Progress(
        TextColumn("publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or config.count < 2000,
    ) as bar:
        task = bar.add_task("publish", total=config.count, rate="")
        started = time.perf_counter()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            elapsed = time.perf_counter() - started
            bar.update(task, advance=n, rate=f"{done / elapsed:,.0f} msg/s" if elapsed > 0 else "")

        return publish(messages, catalog.project, address, config.count, config.rate, manifest, advance)


@app.command()
def produce(
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Event type to produce; repeat for a mix (default: every type in the catalog).",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, help="Messages to publish (duplicates included).")
    ] = 1000,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.1,
            help="Pace to this many messages/s (default: as fast as possible).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed and --start-time give the same messages.")
    ] = 42,
    start_time: Annotated[
        str | None,
        typer.Option(
            "--start-time",
            help="Event time of the first event, RFC 3339 (default: now, or so the last event is now).",
            show_default=False,
        ),
    ] = None,
    duplicate_rate: Annotated[
        float, typer.Option(help="Share of messages that re-publish an earlier event (same ce-id).")
    ] = 0.0,
    invalid_rate: Annotated[
        float, typer.Option(help="Share of messages with one injected fault (see docs/producer.md).")
    ] = 0.0,
    out_of_order_rate: Annotated[
        float, typer.Option(help="Share of valid events whose event time is shifted back a little.")
    ] = 0.0,
    late_rate: Annotated[
        float, typer.Option(help="Share of valid events whose event time is shifted back by --late-by.")
    ] = 0.0,
    out_of_order_max: Annotated[
        str, typer.Option(help="Largest shift for out-of-order events (e.g. 2m).")
    ] = "2m",
    late_by: Annotated[str, typer.Option(help="Shift for late events (e.g. 2h).")] = "2h",
    structured_rate: Annotated[
        float, typer.Option(help="Share of valid events sent in structured content mode.")
    ] = 0.05,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="Write one JSON line per message (ce-id, kind, message id, expected landing).",
            show_default=False,
        ),
    ] = None,
    catalog_path: CatalogOpt = None,
    emulator: EmulatorOpt = None,
) -> None:
    """Publish realistic CloudEvents for the sample shop, with fault knobs."""
    from tidegate import settings
    from tidegate.producer import ProduceConfig

    catalog = load_catalog(catalog_path)
    types = tuple(event_type) if event_type else tuple(catalog.event_types)
    for t in types:
        catalog.stream(t)  # unknown type -> clear error listing the known ones
    config = ProduceConfig(
        types=types,
        count=count,
        seed=seed,
        start_time=parse_time(start_time),
        rate=rate,
        duplicate_rate=parse_rate("--duplicate-rate", duplicate_rate),
        invalid_rate=parse_rate("--invalid-rate", invalid_rate),
        out_of_order_rate=parse_rate("--out-of-order-rate", out_of_order_rate),
        late_rate=parse_rate("--late-rate", late_rate),
        out_of_order_max=parse_duration(out_of_order_max, "--out-of-order-max"),
        late_by=parse_duration(late_by, "--late-by"),
        structured_rate=parse_rate("--structured-rate", structured_rate),
    )
    if config.out_of_order_rate + config.late_rate > 1.0:
        raise typer.BadParameter("--out-of-order-rate + --late-rate must not exceed 1")
    address = settings.emulator_address(catalog, emulator)
    require_emulator(address)
    report = publish_with_progress(catalog, address, config, manifest)
    console.print(summary_table(report))
    by_type = ", ".join(f"{t}: {n:,}" for t, n in sorted(report.by_type.items()))
    console.print(f"by type: {by_type}")
    if manifest:
        console.print(f"manifest: {manifest}")
    if report.failed or report.errors:
        raise TidegateError(
            f"{report.failed} publish(es) failed: " + "; ".join(report.errors),
            hint="is the emulator still running? `tidegate up`",
        )
