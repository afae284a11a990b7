"""`tidegate deploy dataflow`: launch (or dry-run) the streaming ingest, a replay or a verify on Dataflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, console, deploy_app
from tidegate.cli.render import print_job
from tidegate.errors import TidegateError


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
            "--replay",
            help="A batch job rebuilding this aggregate, or this state view, from raw history.",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="A batch job checking the lake (`tidegate verify`'s checks of raw history, aggregates, "
            "late ledger and views); its report lands in <lake>/_reports/verify/<run id>.json.",
        ),
    ] = False,
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
            help="Job name (default tidegate-ingest / tidegate-replay-<aggregate or view> / tidegate-verify).",
            show_default=False,
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
    subnetwork: Annotated[
        str | None,
        typer.Option(
            help="Workers' subnetwork, e.g. regions/R/subnetworks/tidegate-workers (terraform output `subnetwork`).",
            show_default=False,
        ),
    ] = None,
    public_ips: Annotated[
        bool,
        typer.Option(
            "--public-ips/--no-public-ips",
            help="Give workers external IPs (default: none; they use Private Google Access on --subnetwork).",
        ),
    ] = False,
    dataflow_kms_key: Annotated[
        str | None,
        typer.Option(
            help="Customer-managed key for the job's state (terraform output `dataflow_kms_key`, when set).",
            show_default=False,
        ),
    ] = None,
    production: Annotated[
        bool,
        typer.Option(
            "--production",
            help="Always on for Dataflow (its lake is on GCS): the development PII key is refused.",
        ),
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
    """Launch (or with --dry-run, build offline and print) the streaming ingest, a batch replay or a batch verify on Dataflow."""
    from tidegate.lake.catalog_check import check_catalog
    from tidegate.pipelines.dataflow import DataflowTarget, launch

    catalog = load_catalog(catalog_path)
    check_catalog(catalog)
    if [streaming, replay is not None, verify].count(True) != 1:
        raise TidegateError(
            "say which job: --streaming (the ingest), --replay AGGREGATE|VIEW (a batch rebuild) "
            "or --verify (a batch check of the lake), one of them",
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
        subnetwork=subnetwork,
        public_ips=public_ips,
        kms_key=dataflow_kms_key or None,
    )
    job = launch(
        catalog,
        target,
        replay=replay,
        verify=verify,
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
        if "report" in job:
            console.print(f"  its report, once the job is done: {job['report']}")
        return
    print_job(job, job_file)
    if "report" in job:
        console.print(f"report: {job['report']} (this build's run id; each launch names its own)")
