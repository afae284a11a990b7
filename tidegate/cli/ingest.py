"""`tidegate ingest`: local micro-batches (or the Dataflow job's dry run)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tidegate.catalog import Catalog, load_catalog
from tidegate.errors import TidegateError

if TYPE_CHECKING:
    from tidegate.pipelines.local import BatchOutcome, RunSummary

from tidegate.cli.app import (
    CatalogOpt,
    EmulatorOpt,
    LakeOpt,
    app,
    console,
    err_console,
    is_quiet,
    require_emulator,
)
from tidegate.cli.render import print_job


def run_local_ingest(
    catalog: Catalog,
    address: str | None,
    lake: str,
    *,
    max_batch: int = 20_000,
    max_wait: float = 2.0,
    until_idle: float | None = 5.0,
    follow: bool = False,
    production: bool = False,
    quiet: bool = False,
    subscriptions: list[str] | None = None,
    project: str | None = None,
) -> RunSummary:
    from tidegate.lake.pii import is_production, is_remote_lake, load_protector
    from tidegate.lake.read import Lake
    from tidegate.ops.monitors import MonitorTicker
    from tidegate.pipelines.local import Heartbeat, LocalIngest, LocalOptions
    from tidegate.pipelines.runs import ingest_config

    # real Pub/Sub (no emulator address) or a lake off this machine is production: the
    # development key is refused there (lake.pii.load_protector), here and in every writer
    quiet = quiet or is_quiet()
    gcp = address is None
    _protector, warning = load_protector(production, lake=lake, gcp=gcp)
    if warning and not quiet:
        err_console.print(f"[yellow]warning:[/] {warning}")
    production = is_production(production) or gcp or is_remote_lake(lake)
    config = ingest_config(catalog, lake, production)

    # the first batch pays for starting Beam and GX (seconds): a spinner until it lands
    warming = (
        err_console.status("Starting Beam and Great Expectations; the first batch takes a few seconds ...")
        if not quiet and err_console.is_terminal
        else None
    )

    def show(b: BatchOutcome) -> None:
        if warming is not None:
            warming.stop()
        if not quiet:
            console.print(
                f"  batch {b.batch_id.rsplit('-', 1)[-1]}: {b.received:,} received -> {b.raw_written:,} raw, "
                f"{b.duplicates_skipped:,} duplicates skipped, {b.quarantined:,} quarantined"
                + (f" ([yellow]{b.id_conflicts:,} id conflicts[/])" if b.id_conflicts else "")
                + (f", {b.late:,} late (event, window) pairs" if b.late else "")
                + (f", [red]{b.poisoned:,} poison (left to the dead-letter policy)[/]" if b.poisoned else "")
                + f" ({b.seconds:.2f}s, {b.received / b.seconds if b.seconds else 0:,.0f} msg/s)"
            )

    def beat(h: Heartbeat) -> None:
        last = h.last_commit.strftime("%H:%M:%S") if h.last_commit else "none yet"
        console.print(
            f"[dim]{datetime.now().strftime('%H:%M:%S')}[/] following: {h.rate:,.0f} msg/s over the last "
            f"interval ({h.messages:,} messages), {h.held:,} held by this process ({h.buffered:,} waiting), "
            f"{h.batches:,} batches, last commit {last}"
        )

    if not quiet:
        console.print(f"Ingesting into {lake} (run {config.run_id}) ...")
    # the catalog's stream monitors, evaluated once a minute on their own thread (breaches go
    # to _monitors and show in status; tidegate.ops.monitors)
    ticker = MonitorTicker(Lake(lake, config.storage, catalog), every=60)

    def on_batch(b: BatchOutcome) -> None:
        show(b)
        ticker()

    ingest = LocalIngest(
        catalog,
        address,
        config,
        LocalOptions(max_batch=max_batch, max_wait=max_wait, until_idle=until_idle, follow=follow),
        project=project,
        on_batch=on_batch,
        subscriptions=subscriptions,
        on_heartbeat=None if quiet else beat,
    )
    if warming is not None:
        warming.start()
    try:
        return ingest.run()
    finally:
        if warming is not None:
            warming.stop()
        ticker.close()


@app.command()
def ingest(
    until_idle: Annotated[
        float | None,
        typer.Option(
            "--until-idle",
            min=0.0,
            help="Stop once every subscription has been empty this many seconds (default 5).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Run until Ctrl-C (the current batch finishes cleanly); prints a heartbeat every 30 s.",
        ),
    ] = False,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=200_000, help="Most messages per micro-batch.")
    ] = 20_000,
    max_wait: Annotated[
        float, typer.Option("--max-wait", min=0.05, help="Longest time to fill a micro-batch, seconds.")
    ] = 2.0,
    production: Annotated[
        bool,
        typer.Option(
            "--production", help="Refuse to run without a real PII key (also: TIDEGATE_ENV=production)."
        ),
    ] = False,
    mode: Annotated[
        str, typer.Option("--mode", help="local (micro-batches, this machine) or streaming (Dataflow).")
    ] = "local",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="streaming: build the Dataflow job offline and print it; submit nothing."
        ),
    ] = False,
    project: Annotated[
        str | None,
        typer.Option(help="GCP project of the subscriptions (default: the catalog's).", show_default=False),
    ] = None,
    region: Annotated[str, typer.Option(help="streaming: Dataflow region.")] = "europe-west1",
    temp_location: Annotated[
        str | None,
        typer.Option(help="streaming: gs://bucket/path for Dataflow temp files.", show_default=False),
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option(help="streaming --dry-run: also write the job spec (JSON) here.", show_default=False),
    ] = None,
    dead_letters: Annotated[
        bool,
        typer.Option(
            "--dead-letters",
            help="local: read the catalog's dead-letter subscription instead: what Pub/Sub moved aside "
            "lands like any message (valid events in raw, the rest in quarantine with their reason).",
        ),
    ] = False,
    gcp: Annotated[
        bool,
        typer.Option(
            "--gcp",
            help="local: pull from real Pub/Sub in --project (Application Default Credentials) instead "
            "of the emulator, e.g. to sweep a Dataflow deployment's dead letters into its gs:// lake.",
        ),
    ] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
    emulator: EmulatorOpt = None,
) -> None:
    """Land the catalog's subscriptions in the lake: valid events once in raw/<type>, the rest in quarantine, a ledger row per batch. --mode local runs micro-batches in this process, on Beam's in-process engine (DirectRunner's FnApiRunner, pinned: it never tries to download Prism); --mode streaming --dry-run builds the Dataflow job offline (DataflowRunner)."""
    from tidegate import settings
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.lake.lock import check_lake_dir

    catalog = load_catalog(catalog_path)
    check_catalog(catalog)  # a typo in an aggregate or a contract stops here, not mid-batch
    if mode not in ("local", "streaming"):
        raise typer.BadParameter("must be 'local' or 'streaming'", param_hint="--mode")
    if follow and until_idle is not None:
        raise TidegateError(
            "--follow and --until-idle contradict each other",
            hint="--follow runs until Ctrl-C; --until-idle N stops after N idle seconds: give one of them",
        )
    streaming_only = [
        name
        for name, given in (
            ("--dry-run", dry_run),
            ("--job-file", job_file is not None),
            ("--temp-location", temp_location is not None),
        )
        if given
    ]
    if mode == "local" and streaming_only:
        # a local run consumes and acknowledges: never let "--dry-run" ingest for real
        raise TidegateError(
            f"{', '.join(streaming_only)} {'is' if len(streaming_only) == 1 else 'are'} for --mode "
            "streaming (building the Dataflow job offline); a local ingest has no dry run: it "
            "consumes and acknowledges what it pulls",
            hint="to see what waits without consuming it, run `tidegate status`; to build the Dataflow "
            "job offline, add `--mode streaming --temp-location gs://B/tmp`",
        )
    if mode == "streaming" and (dead_letters or gcp):
        raise TidegateError(
            "--dead-letters and --gcp are for --mode local",
            hint="the Dataflow job reads the stream subscriptions; sweep its dead letters with "
            "`tidegate ingest --dead-letters --gcp --project P --lake gs://...`",
        )
    if mode == "streaming":
        _streaming(
            catalog,
            settings.lake_path(lake),
            production,
            dry_run,
            project or catalog.project,
            region,
            temp_location,
            job_file,
        )
        return
    address: str | None
    if gcp:
        from tidegate.pipelines.dataflow import require_credentials

        require_credentials("to pull from Pub/Sub with")
        address = None
    lake_root = settings.lake_path(lake)
    check_lake_dir(lake_root)  # a user mistake (exit 2) before a missing platform (exit 3)
    if not gcp:
        address = settings.emulator_address(catalog, emulator)
        require_emulator(address)
    summary = run_local_ingest(
        catalog,
        address,
        lake_root,
        max_batch=max_batch,
        max_wait=max_wait,
        until_idle=None if follow else (5.0 if until_idle is None else until_idle),
        follow=follow,
        production=production,
        subscriptions=[catalog.dead_letter.subscription] if dead_letters else None,
        project=project,
    )
    rate = summary.received / summary.seconds if summary.seconds else 0.0
    console.print(
        f"Done ({summary.stopped_by}): {summary.batches} batch(es), {summary.received:,} messages -> "
        f"{summary.raw_written:,} raw, {summary.duplicates_skipped:,} duplicates skipped, "
        f"{summary.quarantined:,} quarantined"
        + (f" ({summary.id_conflicts:,} id conflicts)" if summary.id_conflicts else "")
        + f", {summary.late:,} late (event, window) pairs for aggregates in {summary.seconds:.1f}s ({rate:,.0f} msg/s overall)."
    )


def _streaming(
    catalog: Catalog,
    lake: str,
    production: bool,
    dry_run: bool,
    project: str,
    region: str,
    temp_location: str | None,
    job_file: Path | None,
) -> None:
    from tidegate.pipelines.dataflow import DataflowTarget, launch

    if not dry_run:
        raise TidegateError(
            "`tidegate ingest --mode streaming` only builds the Dataflow job (--dry-run)",
            hint="launch it with `tidegate deploy dataflow --streaming --project P --region R --lake gs://B/lake --temp-location gs://S/tmp`",
        )
    if temp_location is None:
        raise TidegateError(
            "--temp-location is required for Dataflow",
            hint="e.g. --temp-location gs://my-dataflow-bucket/tmp",
        )
    target = DataflowTarget(project=project, region=region, temp_location=temp_location, lake=lake)
    print_job(launch(catalog, target, production=production, dry_run=True), job_file)
