"""The `tidegate` command line.

    tidegate up                      # start + provision the local Pub/Sub emulator
    tidegate produce --count 10000 --invalid-rate 0.02 --seed 7
    tidegate contracts check         # compatibility of every contract version
    tidegate demo                    # the whole story on a private emulator
    tidegate down

Every command has `--help`. Mistakes print what to do and exit non-zero; a traceback is
shown only with TIDEGATE_DEBUG=1.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tidegate import __version__
from tidegate.catalog import Catalog, load_catalog
from tidegate.errors import PlatformError, TidegateError

if TYPE_CHECKING:
    from tidegate.infra.pubsub import Change
    from tidegate.pipelines.local import BatchOutcome, RunSummary
    from tidegate.producer import ProduceConfig, PublishReport

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tidegate",
    help="Land CloudEvents from Pub/Sub in Delta Lake: exactly once, quarantined, with lineage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
contracts_app = typer.Typer(help="Event contracts: list, show and check compatibility.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
bench_app = typer.Typer(
    help="Benchmarks on this machine (figures for notes and docs, never timed tests).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
deploy_app = typer.Typer(help="Deploy to GCP (docs/deploy.md).", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Stream catalog file (default: $TIDEGATE_CATALOG or tidegate/infra/catalog.yaml).",
        show_default=False,
    ),
]
EmulatorOpt = Annotated[
    str | None,
    typer.Option(
        "--emulator",
        help="Emulator HOST:PORT (default: $PUBSUB_EMULATOR_HOST or the catalog's).",
        show_default=False,
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tidegate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """tidegate: CloudEvents from Pub/Sub into Delta Lake through Apache Beam."""


# --------------------------------------------------------------------------------------
# up / down
# --------------------------------------------------------------------------------------


def _changes_table(changes: list[Change]) -> Table:
    table = Table(title="Pub/Sub resources", show_lines=False)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("action")
    table.add_column("detail")
    colors = {"created": "green", "updated": "yellow", "unchanged": "dim", "conflict": "red"}
    for c in changes:
        table.add_row(c.kind, c.name, f"[{colors.get(c.action, '')}]{c.action}[/]", c.detail)
    return table


@app.command()
def up(catalog_path: CatalogOpt = None, emulator: EmulatorOpt = None) -> None:
    """Start the Pub/Sub emulator in the background (or reuse a running one) and provision the catalog's topics and subscriptions. Safe to run again: it says what changed."""
    from tidegate import settings
    from tidegate.infra import emulator as emu
    from tidegate.infra.pubsub import provision

    catalog = load_catalog(catalog_path)
    address = settings.emulator_address(catalog, emulator)
    host, port = settings.split_address(address)
    if emu.is_up(host, port):
        console.print(f"Pub/Sub emulator already running at {address}: reusing it.")
    else:
        with console.status(f"Starting the Pub/Sub emulator on {address} ..."):
            proc = emu.start(host, port, settings.emulator_log_file())
        emu.write_state(settings.emulator_state_file(), proc)
        console.print(
            f"Started the Pub/Sub emulator at {address} (pid {proc.pid}, log {proc.log}).\n"
            f"Point other tools at it with: export PUBSUB_EMULATOR_HOST={address}"
        )
    changes = provision(catalog, address)
    console.print(_changes_table(changes))
    changed = [c for c in changes if c.action != "unchanged"]
    conflicts = [c for c in changes if c.action == "conflict"]
    if conflicts:
        raise TidegateError(f"{len(conflicts)} resource(s) conflict with the catalog (see above)")
    if not changed:
        console.print(f"Nothing to change: all {len(changes)} resources already match the catalog.")
    else:
        console.print(f"{len(changed)} change(s) applied, {len(changes) - len(changed)} unchanged.")


@app.command()
def down() -> None:
    """Stop the Pub/Sub emulator that `tidegate up` started (and only that one)."""
    from tidegate import settings
    from tidegate.infra import emulator as emu

    state_file = settings.emulator_state_file()
    state = emu.read_state(state_file)
    if state is None:
        console.print("No emulator started by tidegate is running here (no pid file).")
        return
    if not emu.pid_alive(state.pid) or not emu.looks_like_emulator(state.pid):
        state_file.unlink(missing_ok=True)
        console.print(f"The emulator tidegate started (pid {state.pid}) is not running any more; cleaned up.")
        return
    emu.stop_pid(state.pid)
    state_file.unlink(missing_ok=True)
    console.print(f"Stopped the Pub/Sub emulator at {state.address} (pid {state.pid}).")


# --------------------------------------------------------------------------------------
# produce
# --------------------------------------------------------------------------------------


def _rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"must be between 0 and 1 (a fraction), got {value}", param_hint=name)
    return value


def _duration(text: str, name: str) -> timedelta:
    from tidegate.catalog import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    from tidegate.expectations.contracts import parse_rfc3339

    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start-time") from None


def _require_emulator(address: str) -> None:
    from tidegate import settings
    from tidegate.infra import emulator as emu

    host, port = settings.split_address(address)
    if not emu.is_up(host, port):
        raise PlatformError(
            f"no Pub/Sub emulator answers at {address}",
            hint="start one with `tidegate up` (or pass --emulator HOST:PORT)",
        )


def _publish_with_progress(
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


def _summary_table(report: PublishReport) -> Table:
    from tidegate.producer import EXPECTED_RULE

    table = Table(
        title=f"Published {report.total:,} messages in {report.seconds:.2f}s ({report.rate:,.0f} msg/s)"
    )
    table.add_column("kind")
    table.add_column("messages", justify="right")
    table.add_column("expected landing")
    for kind, n in sorted(report.sent.items(), key=lambda kv: (-kv[1], kv[0])):
        stage_rule = EXPECTED_RULE.get(kind)
        landing = f"quarantine ({stage_rule[0]}: {stage_rule[1]})" if stage_rule else "raw"
        if kind == "duplicate":
            landing = "raw (once: same ce-id as an earlier event)"
        table.add_row(kind, f"{n:,}", landing)
    return table


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
        start_time=_parse_time(start_time),
        rate=rate,
        duplicate_rate=_rate("--duplicate-rate", duplicate_rate),
        invalid_rate=_rate("--invalid-rate", invalid_rate),
        out_of_order_rate=_rate("--out-of-order-rate", out_of_order_rate),
        late_rate=_rate("--late-rate", late_rate),
        out_of_order_max=_duration(out_of_order_max, "--out-of-order-max"),
        late_by=_duration(late_by, "--late-by"),
        structured_rate=_rate("--structured-rate", structured_rate),
    )
    if config.out_of_order_rate + config.late_rate > 1.0:
        raise typer.BadParameter("--out-of-order-rate + --late-rate must not exceed 1")
    address = settings.emulator_address(catalog, emulator)
    _require_emulator(address)
    report = _publish_with_progress(catalog, address, config, manifest)
    console.print(_summary_table(report))
    by_type = ", ".join(f"{t}: {n:,}" for t, n in sorted(report.by_type.items()))
    console.print(f"by type: {by_type}")
    if manifest:
        console.print(f"manifest: {manifest}")
    if report.failed or report.errors:
        raise TidegateError(
            f"{report.failed} publish(es) failed: " + "; ".join(report.errors),
            hint="is the emulator still running? `tidegate up`",
        )


# --------------------------------------------------------------------------------------
# ingest / verify
# --------------------------------------------------------------------------------------

LakeOpt = Annotated[
    str | None,
    typer.Option(
        "--lake",
        help="Lake root, a path or URI (default: $TIDEGATE_LAKE or .tidegate/lake).",
        show_default=False,
    ),
]


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
    from tidegate.lake.pii import is_production, load_protector
    from tidegate.pipelines.local import Heartbeat, LocalIngest, LocalOptions
    from tidegate.pipelines.runs import ingest_config

    production = is_production(production)
    _protector, warning = load_protector(production)
    if warning and not quiet:
        err_console.print(f"[yellow]warning:[/] {warning}")
    config = ingest_config(catalog, lake, production)

    def show(b: BatchOutcome) -> None:
        if not quiet:
            console.print(
                f"  batch {b.batch_id.rsplit('-', 1)[-1]}: {b.received:,} received -> {b.raw_written:,} raw, "
                f"{b.duplicates_skipped:,} duplicates skipped, {b.quarantined:,} quarantined"
                + (f", {b.late:,} late" if b.late else "")
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
    ingest = LocalIngest(
        catalog,
        address,
        config,
        LocalOptions(max_batch=max_batch, max_wait=max_wait, until_idle=until_idle, follow=follow),
        project=project,
        on_batch=show,
        subscriptions=subscriptions,
        on_heartbeat=None if quiet else beat,
    )
    return ingest.run()


@app.command()
def ingest(
    until_idle: Annotated[
        float | None,
        typer.Option(
            "--until-idle",
            min=0.0,
            help="Stop once every subscription has been empty this many seconds [default: 5].",
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
    """Land the catalog's subscriptions in the lake: valid events once in raw/<type>, the rest in quarantine, a ledger row per batch. --mode local runs micro-batches here; --mode streaming --dry-run builds the Dataflow job offline."""
    from tidegate import settings

    catalog = load_catalog(catalog_path)
    if mode not in ("local", "streaming"):
        raise typer.BadParameter("must be 'local' or 'streaming'", param_hint="--mode")
    if follow and until_idle is not None:
        raise TidegateError(
            "--follow and --until-idle contradict each other",
            hint="--follow runs until Ctrl-C; --until-idle N stops after N idle seconds: give one of them",
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
    else:
        address = settings.emulator_address(catalog, emulator)
        _require_emulator(address)
    lake_root = settings.lake_path(lake)
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
        f"{summary.quarantined:,} quarantined, {summary.late:,} late for aggregates in {summary.seconds:.1f}s ({rate:,.0f} msg/s overall)."
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
    _print_job(launch(catalog, target, production=production, dry_run=True), job_file)


@deploy_app.command("dataflow")
def deploy_dataflow(
    project: Annotated[str, typer.Option(help="GCP project id.")],
    region: Annotated[str, typer.Option(help="Dataflow region, e.g. europe-west1.")],
    lake: Annotated[str, typer.Option(help="The lake on GCS: gs://bucket/lake (terraform output `lake`).")],
    temp_location: Annotated[
        str,
        typer.Option(
            help="gs://bucket/tmp for Dataflow's temp and staging files (terraform output `temp_location`)."
        ),
    ],
    streaming: Annotated[
        bool, typer.Option("--streaming", help="The streaming ingest job (Pub/Sub -> lake, aggregates).")
    ] = False,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay", help="A batch job rebuilding this aggregate from raw history.", show_default=False
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="--replay: windows starting at/after (RFC 3339).", show_default=False)
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="--replay: windows starting before (RFC 3339).", show_default=False)
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Worker image: the Flex Template image (tidegate/infra/dataflow/Dockerfile).",
            show_default=False,
        ),
    ] = None,
    service_account: Annotated[
        str | None,
        typer.Option(
            help="Worker service account (terraform output `pipeline_service_account`).", show_default=False
        ),
    ] = None,
    job_name: Annotated[
        str | None,
        typer.Option(
            help="Job name (default tidegate-ingest / tidegate-replay-<aggregate>).", show_default=False
        ),
    ] = None,
    max_workers: Annotated[int, typer.Option(min=1, help="Autoscaling ceiling.")] = 10,
    update: Annotated[
        bool,
        typer.Option(
            "--update", help="--streaming: replace the running job of the same name in place (keeps state)."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Build the job offline and print its spec; submit nothing, no credentials needed.",
        ),
    ] = False,
    job_file: Annotated[
        Path | None, typer.Option(help="--dry-run: write the full job spec (JSON) here.", show_default=False)
    ] = None,
    production: Annotated[
        bool, typer.Option("--production", help="Refuse to run without a real PII key.")
    ] = True,
    pii_key_secret: Annotated[
        str | None,
        typer.Option(
            help="--streaming: Secret Manager secret version the workers read the PII key from "
            "(default: projects/<project>/secrets/tidegate-pii-key/versions/latest, made by tidegate/infra/terraform).",
            show_default=False,
        ),
    ] = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Launch (or with --dry-run, build offline and print) the streaming ingest or a batch replay on Dataflow."""
    from tidegate.pipelines.dataflow import DataflowTarget, launch

    catalog = load_catalog(catalog_path)
    if streaming == (replay is not None):
        raise TidegateError(
            "say which job: --streaming (the ingest) or --replay AGGREGATE (a batch rebuild)",
            hint="e.g. tidegate deploy dataflow --streaming --project P --region R --lake gs://B/lake --temp-location gs://S/tmp --dry-run",
        )
    target = DataflowTarget(
        project=project,
        region=region,
        temp_location=temp_location,
        lake=lake,
        service_account=service_account,
        image=image,
        job_name=job_name,
        max_workers=max_workers,
        update=update,
    )
    job = launch(
        catalog,
        target,
        replay=replay,
        since=since,
        until=until,
        production=production,
        pii_key_secret=pii_key_secret,
        dry_run=dry_run,
    )
    if not dry_run:
        verb = "updated" if update else "launched"
        console.print(
            f"[green]✓[/] {verb} Dataflow job {job['name']} ({job['job_id']})\n  {job['console_url']}"
        )
        return
    _print_job(job, job_file)


def _print_job(job: dict[str, Any], job_file: Path | None) -> None:
    """A dry-run Dataflow job: its top-level steps and options; the whole spec to `job_file`."""
    if job_file is not None:
        job_file.write_text(json.dumps(job, indent=2, default=str))
    console.print(f"Dataflow job {job['name']} ({job['type']}), built offline, not submitted:")
    for step in job["steps"]:
        if step.count("/") <= 2 and not step.startswith("ref_"):
            console.print(f"  {step}")
    console.print("options: " + escape(json.dumps(job["options"], default=str)))
    if job_file is not None:
        console.print(f"full spec (portable pipeline graph): {job_file}")


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
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
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
    """The lake at a glance: every table's version, rows, last commit and age; subscription backlog; ledger balance, quarantine, late and data-quality rates; latest publish->commit latency."""
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
    report = lake_status(the_lake)
    report["backlog"] = lake_backlog(
        the_lake,
        backlog,
        address=settings.emulator_address(catalog, emulator),
        project=project or catalog.project,
        emulator_explicit=bool(emulator or os.environ.get("PUBSUB_EMULATOR_HOST")),
        limit=backlog_limit,
    ).as_dict()
    if as_json:
        console.print_json(json.dumps(report, default=str))
        return
    if not report["tables"]:
        _print_backlog(report["backlog"])
        raise TidegateError(
            f"no tables under {report['lake']}", hint="run `tidegate ingest` (or `tidegate demo`) first"
        )
    t = Table(title=f"tidegate status: {report['lake']}")
    for col, justify in (
        ("table", "left"),
        ("version", "right"),
        ("rows", "right"),
        ("files", "right"),
        ("last commit", "left"),
        ("age", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in report["tables"]:
        t.add_row(
            row["table"],
            str(row["version"]),
            f"{row['rows']:,}",
            str(row["files"]),
            row["last_commit"][:19],
            f"{row['age_seconds']:,.0f}s",
        )
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
            f"  data quality: {dq['pass_rate']:.2%} of {dq['expectation_runs']:,} expectation runs passed"
        )
    for name, late in report["late"].items():
        console.print(
            f"  late for {name}: {late['late_pairs']:,} pairs ({late['late_rate']:.2%} of its source events)"
        )


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
    import polars as pl

    from tidegate import settings
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.expectations.data_docs import build_data_docs
    from tidegate.lake.read import Lake

    catalog = load_catalog(catalog_path)
    reader = Lake(settings.lake_path(lake), settings.storage_options(), catalog)
    quality = reader.quality()
    if run is not None:
        quality = quality.filter(pl.col("run_id") == run)
    batches = quality.group_by("batch_id").agg(pl.col("validated_at").max()).sort("validated_at").tail(last)
    rows = quality.join(batches.select("batch_id"), on="batch_id", how="semi").collect().to_dicts()
    if not rows:
        raise TidegateError(
            "no data-quality results to show" + (f" for run {run}" if run else ""),
            hint="ingest something first",
        )
    target = out or settings.home() / "data-docs"
    with console.status(f"Building Data Docs for {len({r['batch_id'] for r in rows})} batch(es) ..."):
        index = build_data_docs(rows, ContractRegistry.from_catalog(catalog), target)
    console.print(f"[green]✓[/] Data Docs: {index}")


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

    reader = Lake(settings.lake_path(lake), settings.storage_options(), load_catalog(catalog_path))
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
) -> None:
    """Check the lake: one row per event id, one quarantine row per message, balanced ledger; with --manifest, that every message sent landed where it must, exactly once."""
    from tidegate import settings
    from tidegate.lake.verify import verify as run_verify

    catalog = load_catalog(catalog_path)
    if manifest is not None and not manifest.is_file():
        raise TidegateError(
            f"manifest {manifest} does not exist", hint="write one with `tidegate produce --manifest FILE`"
        )
    report = run_verify(
        settings.lake_path(lake),
        catalog.event_types,
        manifest,
        storage_options=settings.storage_options(),
        aggregates=catalog.aggregates,
    )
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
    limit: Annotated[int, typer.Option(help="Commits to show, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lake: LakeOpt = None,
    catalog_path: CatalogOpt = None,
) -> None:
    """Where a table's versions, or one row, came from: run, batch, messages, code version and git sha, contracts and GX suite."""
    from tidegate import settings
    from tidegate.lake.lineage import commits, resolve_table, row_lineage

    catalog = load_catalog(catalog_path)
    uri = resolve_table(
        settings.lake_path(lake), table, catalog.event_types, [a.name for a in catalog.aggregates]
    )
    if row is not None:
        info = row_lineage(uri, row, settings.storage_options())
        if as_json:
            console.print_json(json.dumps(info, default=str))
            return
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
    history = commits(uri, settings.storage_options())[:limit]
    if as_json:
        console.print_json(json.dumps(history, default=str))
        return
    t = Table(title=f"{table}: commits, newest first")
    for col in ("version", "when", "operation", "rows", "run", "batch", "messages", "git sha", "contracts"):
        t.add_column(col)
    for h in history:
        contracts = ", ".join(
            f"{k}:{v[:8]}" for k, v in json.loads(h.get("tidegate_contracts", "{}")).items()
        )
        t.add_row(
            str(h["version"]),
            str(h.get("timestamp", "")),
            str(h.get("operation", "")),
            str(h.get("rows_added", "")),
            str(h.get("tidegate_run_id", "")),
            str(h.get("tidegate_batch_id", "")).rsplit("-", 1)[-1],
            str(h.get("tidegate_message_count", "")),
            str(h.get("tidegate_git_sha", ""))[:12],
            contracts,
        )
    console.print(t)


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
    from tidegate.pipelines.runs import new_run_id
    from tidegate.version import code_version, git_sha

    catalog = load_catalog(catalog_path)
    catalog.aggregate(aggregate)  # a clear error for an unknown name, before Beam is imported
    from tidegate.pipelines.replay import replay as run_replay

    lake_path = settings.lake_path(lake)
    with console.status(f"Replaying {aggregate} from raw history ..."):
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
    report = run_maintain(LakeTables(root, catalog), retain_hours, settings.storage_options())
    if not report:
        raise TidegateError(f"no tables under {root}", hint="run `tidegate ingest` first")
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


# --------------------------------------------------------------------------------------
# contracts
# --------------------------------------------------------------------------------------


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
        t = registry.types[s.event_type]
        table.add_row(
            s.event_type,
            ", ".join(f"v{v}" for v in sorted(t.versions)),
            s.compatibility.value,
            s.topic,
            ", ".join(sorted(t.latest.pii_fields)) or "-",
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
            "yes" if f.name in contract.pii_fields else "",
            contract.schema["fields"][contract.field_names.index(f.name)].get("doc", ""),
        )
    console.print(table)
    console.print(f"fingerprint (SHA-256 of Avro canonical form): {contract.fingerprint}")


@contracts_app.command("check")
def contracts_check(catalog_path: CatalogOpt = None) -> None:
    """Check every contract version against its predecessors per the catalog's compatibility mode; exit 1 naming type, versions, field and rule if one breaks."""
    from tidegate.expectations.compat import check_registry
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.expectations.suites import load_suite

    catalog = load_catalog(catalog_path)
    registry = ContractRegistry.from_catalog(catalog)
    for t in registry.types.values():
        if t.suite_path is None:
            raise TidegateError(
                f"{t.event_type} has no suite.json next to its contracts",
                hint='value rules live in a GX suite; an empty one is {"name": ..., "expectations": []}',
            )
        load_suite(t.suite_path)
    from tidegate.lake.aggregates import check_aggregates

    check_aggregates(catalog, registry)  # keys and metric fields exist in their source tables
    report = check_registry(registry, {s.event_type: s.compatibility for s in catalog.streams})
    broken = 0
    for s in catalog.streams:
        problems = report[s.event_type]
        versions = registry.versions(s.event_type)
        if problems:
            broken += len(problems)
            err_console.print(f"[red]✗[/] {s.event_type} ({s.compatibility.value}, versions {versions}):")
            for p in problems:
                err_console.print(f"    {p}")
        else:
            console.print(
                f"[green]✓[/] {s.event_type}: {len(versions)} version(s) compatible under {s.compatibility.value}"
            )
    if broken:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------


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
    with console.status("Starting a private Pub/Sub emulator ..."):
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
        report = _publish_with_progress(catalog, proc.address, config, manifest)
        console.print("3. Published a messy mix:")
        console.print(_summary_table(report))
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
    result = run_verify(str(lake), catalog.event_types, manifest, aggregates=catalog.aggregates)
    for name, passed, detail in result.checks:
        console.print(f"   {'[green]✓[/]' if passed else '[red]✗[/]'} {name}: {detail}")
    if not result.ok:
        for p in result.problems[:20]:
            err_console.print(f"    {escape(p)}")
        raise TidegateError("the lake does not match what was sent (see above)")
    _print_landing(str(lake), catalog)
    console.print(
        f"\n{summary.received:,} messages ingested in {summary.seconds:.1f}s. Lake: {lake}\n"
        f"Read it:        uv run python -c \"import polars as pl; print(pl.read_delta('{lake}/raw/shop.order.placed'))\"\n"
        f"Aggregates:     uv run python -c \"import polars as pl; print(pl.read_delta('{lake}/aggregates/revenue_per_currency_1m'))\"\n"
        f"Check it again: uv run tidegate verify --lake {lake} --manifest {manifest}"
    )


def _print_landing(lake: str, catalog: Catalog) -> None:
    import polars as pl
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from tidegate.lake.tables import quarantine_uri, raw_uri

    table = Table(title="6. What landed where")
    table.add_column("table")
    table.add_column("stage")
    table.add_column("rule")
    table.add_column("rows", justify="right")
    for t in catalog.event_types:
        try:
            n = DeltaTable(raw_uri(lake, t)).to_pyarrow_table(columns=["event_id"]).num_rows
        except TableNotFoundError:
            n = 0
        table.add_row(f"raw/{t}", "", "", f"{n:,}")
    try:
        q = pl.read_delta(quarantine_uri(lake), columns=["stage", "rule"]).group_by("stage", "rule").len()
    except TableNotFoundError:
        q = None
    if q is not None:
        for r in q.sort("stage", "rule").iter_rows(named=True):
            table.add_row("quarantine", r["stage"], r["rule"], f"{r['len']:,}")
    from tidegate.lake.tables import aggregate_uri, late_uri

    try:
        late = pl.from_arrow(DeltaTable(late_uri(lake)).to_pyarrow_table(columns=["aggregate"]))
        assert isinstance(late, pl.DataFrame)
        late_by = dict(late.group_by("aggregate").len().iter_rows())
    except TableNotFoundError:
        late_by = {}
    for a in catalog.aggregates:
        try:
            n = DeltaTable(aggregate_uri(lake, a.name)).to_pyarrow_table(columns=["window_start"]).num_rows
        except TableNotFoundError:
            n = 0
        table.add_row(f"aggregates/{a.name}", "windows", f"{a.window.type}", f"{n:,}")
        if late_by.get(a.name):
            table.add_row("aggregates/_late", a.name, "too late for the window", f"{late_by[a.name]:,}")
    console.print(table)


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------


def _print_figures(title: str, figures: dict[str, Any], as_json: bool) -> None:
    """Benchmark figures as JSON, or as a two-column table."""
    if as_json:
        console.print_json(json.dumps(figures))
        return
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)


@bench_app.command("produce")
def bench_produce(
    events: Annotated[int, typer.Option("--events", "-n", min=1000, help="Messages to publish.")] = 200_000,
    invalid_rate: Annotated[float, typer.Option(help="Share of faulty messages in the mix.")] = 0.02,
    duplicate_rate: Annotated[float, typer.Option(help="Share of duplicates in the mix.")] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Producer throughput: generation alone, then publishing to a private emulator."""
    import resource

    from tidegate import settings
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.infra import emulator as emu
    from tidegate.infra.pubsub import provision
    from tidegate.producer import ProduceConfig, generate, publish

    catalog = load_catalog(catalog_path)
    registry = ContractRegistry.from_catalog(catalog)
    config = ProduceConfig(
        types=tuple(catalog.event_types),
        count=events,
        seed=1,
        invalid_rate=_rate("--invalid-rate", invalid_rate),
        duplicate_rate=_rate("--duplicate-rate", duplicate_rate),
    )
    t0 = time.perf_counter()
    generated = sum(1 for _ in generate(config, catalog, registry))
    gen_rate = generated / (time.perf_counter() - t0)
    with emu.private_emulator(settings.home() / "bench" / "logs") as proc:
        provision(catalog, proc.address)
        report = publish(generate(config, catalog, registry), catalog.project, proc.address, events)
    if report.failed:
        raise TidegateError(f"{report.failed} publishes failed: {'; '.join(report.errors)}")
    figures = {
        "events": events,
        "generate_per_s": round(gen_rate),
        "publish_per_s": round(report.rate),
        "publish_seconds": round(report.seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "mix": dict(sorted(report.sent.items())),
    }
    if as_json:
        console.print_json(json.dumps(figures))
        return
    table = Table(title=f"tidegate bench produce --events {events}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("generate only (no I/O)", f"{gen_rate:,.0f} msg/s")
    table.add_row("publish to emulator (generate + send + wait for acks)", f"{report.rate:,.0f} msg/s")
    table.add_row("wall time publishing", f"{report.seconds:.2f} s")
    table.add_row("peak RSS of this process", f"{figures['peak_rss_mib']} MiB")
    console.print(table)


@bench_app.command("ingest")
def bench_ingest_cmd(
    events: Annotated[
        int,
        typer.Option("--events", "-n", min=1000, help="Backlog to ingest (and to measure the ceiling with)."),
    ] = 200_000,
    rate: Annotated[
        float, typer.Option(help="Offered events/s for the latency run in --follow mode.")
    ] = 2000.0,
    latency_seconds: Annotated[float, typer.Option(help="Length of the latency run (0 skips it).")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Micro-batch size limit.")] = 20_000,
    max_wait: Annotated[float, typer.Option(help="Micro-batch time limit, seconds.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Ingest on this machine: the plain parallel drain ceiling, end-to-end throughput of a realistic backlog, publish->Delta latency p50/p99 and per-stage batch cost in --follow mode, SIGKILL recovery, cold start, files, peak RSS."""
    from tidegate.bench_ingest import bench_ingest

    catalog = load_catalog(catalog_path)
    figures = bench_ingest(
        catalog,
        events,
        rate,
        latency_seconds,
        max_batch,
        max_wait,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench ingest --events {events} --rate {rate:g}", figures, as_json)


@bench_app.command("soak")
def bench_soak_cmd(
    minutes: Annotated[float, typer.Option(min=1.0, help="How long to follow, minutes.")] = 10.0,
    rate: Annotated[float, typer.Option(min=1.0, help="Offered events/s.")] = 1500.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Sustained load: `ingest --follow` for M minutes at R events/s; publish->commit p50/p99, longest raw commit and RSS per minute, files per table at the end."""
    from tidegate.bench_ingest import bench_soak

    catalog = load_catalog(catalog_path)
    figures = bench_soak(
        catalog,
        minutes,
        rate,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench soak --minutes {minutes:g} --rate {rate:g}", figures, as_json)


@bench_app.command("replay")
def bench_replay_cmd(
    events: Annotated[
        int, typer.Option("--events", "-n", min=1000, help="Raw events per source type.")
    ] = 1_000_000,
    group_rows: Annotated[int, typer.Option(help="Raw rows per replay work item.")] = 250_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Replay speed: rebuild every aggregate from N raw events per source type (tables built once and cached)."""
    from tidegate.bench import bench_replay

    catalog = load_catalog(catalog_path)
    figures = bench_replay(
        catalog,
        events,
        group_rows,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench replay --events {events}", figures, as_json)


@bench_app.command("backlog")
def bench_backlog_cmd(
    messages: Annotated[int, typer.Option("--messages", "-n", min=100, help="Backlog to publish.")] = 60_000,
    limit: Annotated[
        int, typer.Option(help="Count limit per subscription (as status --backlog-limit).")
    ] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """How long `tidegate status` takes to count an emulator backlog (snapshot, pull without acking, seek back), twice: the second count finds the same messages."""
    from tidegate.bench import bench_backlog

    figures = bench_backlog(
        load_catalog(catalog_path),
        messages,
        limit,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench backlog --messages {messages} --limit {limit}", figures, as_json)


def main() -> None:
    """Console-script entry point: user errors become messages, not tracebacks."""
    # Imports of Beam, GX and pandas build millions of long-lived objects: with the default
    # thresholds the collector runs full passes over them again and again (~1 s of a cold
    # start). Collect young objects less often; the ingest driver freezes what warm-up built.
    gc.set_threshold(50_000, 20, 100)
    debug = bool(os.environ.get("TIDEGATE_DEBUG"))
    try:
        app(standalone_mode=True)
    except TidegateError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc.message}")
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[red]unexpected error:[/] {exc.__class__.__name__}: {exc}\n"
            "This is a bug in tidegate or an unhandled environment problem; "
            "rerun with TIDEGATE_DEBUG=1 for the traceback and report it."
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
