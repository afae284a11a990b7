"""Dataflow jobs: the streaming ingest, the batch replay and the batch verify, built the same way
for a dry run (offline, no credentials) and a launch (`tidegate deploy dataflow`, or the Flex
Template's entry point `tidegate/pipelines/flex_main.py`).

    tidegate deploy dataflow --streaming --project P --region R --lake gs://B/lake \\
        --temp-location gs://S/tmp --dry-run
    tidegate deploy dataflow --replay revenue_per_currency_1m --project P ... --dry-run
    tidegate deploy dataflow --replay order_state --project P ... --dry-run     # a state view
    tidegate deploy dataflow --verify --project P ... --dry-run

A verify job writes what it finds to the lake, `<lake>/_reports/verify/<run_id>.json`
(tidegate/pipelines/verify.py); the launch names that object before the job starts.

Options that matter on Dataflow, and why they are set (docs/deploy.md has the operations side):
- streaming: Streaming Engine (state and shuffle off the workers, cheaper autoscaling; the only
  mode for Python streaming jobs in Beam 2.77, its flag is deprecated),
  `autoscaling_algorithm=THROUGHPUT_BASED` up to `--max-workers`; ReadFromPubSub with
  `id_label=ce-id` (Dataflow drops redeliveries by CloudEvents id) and
  `timestamp_attribute=ce-time` (event-time watermark) - see tidegate/pipelines/streaming.py;
- `--update` replaces a running streaming job in place, keeping its state: step names are
  stable by construction ("ReadEvents/Read/<subscription>", "Ingest/...",
  "ComputeWindowedAggregates/<name>/..."); renaming a step needs --transform-name-mapping;
- the worker image (`--image`) is the Flex Template image (tidegate/infra/dataflow/Dockerfile): Beam's
  SDK image at the pinned version with tidegate installed from uv.lock, so workers run exactly
  the locked dependencies; without one, Beam's default image is used (no tidegate on it: only
  good for a dry run).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import google.auth
from apache_beam.options.pipeline_options import PipelineOptions
from deltalake import DeltaTable
from google.auth.exceptions import DefaultCredentialsError
from google.protobuf import json_format

from tidegate import settings
from tidegate.catalog import AggregateSpec, Catalog
from tidegate.errors import TidegateError
from tidegate.lake.pii import load_protector, worker_secret
from tidegate.lake.tables import raw_uri
from tidegate.pipelines.replay import build as build_replay_graph
from tidegate.pipelines.replay import file_groups, replay_config
from tidegate.pipelines.replay_view import build_job as build_view_replay_job
from tidegate.pipelines.runs import ingest_config, new_run_id
from tidegate.pipelines.streaming import build
from tidegate.pipelines.verify import build_job as build_verify_job
from tidegate.pipelines.verify import report_uri
from tidegate.transforms.base import IngestConfig
from tidegate.version import code_version, git_sha

_BUCKET_PATH = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/.*)?$")


@dataclass(frozen=True)
class DataflowTarget:
    project: str
    region: str
    temp_location: str
    lake: str
    service_account: str | None = None
    image: str | None = None
    job_name: str | None = None
    max_workers: int = 10
    update: bool = False
    transform_name_mapping: dict[str, str] = field(default_factory=dict)
    # private workers on a subnetwork with Private Google Access (terraform output `subnetwork`)
    subnetwork: str | None = None
    public_ips: bool = False
    kms_key: str | None = None  # CMEK for the job's state (terraform output `dataflow_kms_key`)

    def check(self) -> None:
        if not _BUCKET_PATH.match(self.temp_location):
            # an invalid one makes Beam go looking for a default bucket on GCS, even in a dry run
            raise TidegateError(
                f"--temp-location {self.temp_location!r} is not a gs://bucket/path location",
                hint="e.g. gs://my-project-dataflow/tmp (bucket names: 3-63 chars, lowercase)",
            )
        if not _BUCKET_PATH.match(self.lake):
            raise TidegateError(
                f"--lake {self.lake!r} must be a gs://bucket/path URI for Dataflow",
                hint="e.g. --lake gs://my-lake-bucket/lake (the `lake` output of tidegate/infra/terraform)",
            )


def job_name(kind: str, target: DataflowTarget, suffix: str = "") -> str:
    name = target.job_name or f"tidegate-{kind}{'-' + suffix if suffix else ''}"
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-")


def pipeline_args(kind: str, target: DataflowTarget, *, dry_run: bool, name: str) -> list[str]:
    args = [
        "--runner=DataflowRunner",
        f"--project={target.project}",
        f"--region={target.region}",
        f"--temp_location={target.temp_location}",
        f"--job_name={name}",
        "--experiments=use_runner_v2",
        # the worker image carries the locked dependencies; no `pip freeze` of this machine
        "--experiments=disable_logging_submission_environment",
    ]
    args.append(f"--sdk_container_image={target.image}" if target.image else "--sdk_location=container")
    if target.service_account:
        args.append(f"--service_account_email={target.service_account}")
    if target.subnetwork:
        args.append(f"--subnetwork={target.subnetwork}")
    if not target.public_ips:
        args.append("--no_use_public_ips")  # workers reach Google APIs by Private Google Access
    if target.kms_key:
        args.append(f"--dataflow_kms_key={target.kms_key}")
    if kind == "streaming":
        args += [
            "--streaming",  # on Streaming Engine: the only mode for Python streaming jobs in Beam 2.77
            "--autoscaling_algorithm=THROUGHPUT_BASED",
            f"--max_num_workers={target.max_workers}",
        ]
        if target.update:
            args.append("--update")
            if target.transform_name_mapping:
                args.append(f"--transform_name_mapping={json.dumps(target.transform_name_mapping)}")
    else:
        args.append(f"--max_num_workers={target.max_workers}")
    if dry_run:
        args.append("--dry_run=True")
    return args


def _offline() -> None:
    """Never probe the GCE metadata server for credentials during an offline build."""
    os.environ.setdefault("NO_GCE_CHECK", "True")
    os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
    os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")


def require_credentials(purpose: str = "to launch a Dataflow job with") -> None:
    """Fail fast with what to do when there are no Google credentials (Beam would otherwise
    retry for minutes while building the job)."""
    try:
        google.auth.default()
    except DefaultCredentialsError:
        raise TidegateError(
            f"no Google credentials {purpose}",
            hint="run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"
            + ("; --dry-run builds the job without any" if "Dataflow" in purpose else ""),
        ) from None


def build_streaming(p: beam.Pipeline, catalog: Catalog, target: DataflowTarget, config: IngestConfig) -> None:
    build(p, catalog, config, project=target.project)


def build_replay(
    p: beam.Pipeline,
    catalog: Catalog,
    target: DataflowTarget,
    aggregate: str,
    *,
    since: str | None,
    until: str | None,
    run_id: str,
    code_version: str,
    git_sha: str,
    plan: bool,
    storage: dict[str, str] | None = None,
) -> None:
    """The replay graph. `plan=True` pins the raw version and lists its files now (the launcher
    on GCP can read the lake); a dry run has no credentials, so its graph carries one empty file
    group and version -1 (the steps, options and coders are the real ones)."""
    spec: AggregateSpec = catalog.aggregate(aggregate)
    version: int = -1
    groups: list[list[str]] = [[]]
    if plan:
        table = DeltaTable(raw_uri(target.lake, spec.source), storage_options=storage)
        version, groups = table.version(), file_groups(table, 250_000)
    config = replay_config(
        catalog,
        target.lake,
        aggregate,
        raw_version=version,
        since=since,
        until=until,
        run_id=run_id,
        code_version=code_version,
        git_sha=git_sha,
        storage=storage,
    )
    build_replay_graph(p, config, groups)


Builder = Callable[[beam.Pipeline], None]


def streaming_builder(
    catalog: Catalog, target: DataflowTarget, *, production: bool, pii_key_secret: str | None, dry_run: bool
) -> Builder:
    """The streaming ingest's graph for `target`. Workers read the PII key from Secret Manager
    (`pii_key_secret`, or in production the one tidegate/infra/terraform makes); a launch reads it
    once here, so a missing secret or grant fails now and not on the first worker bundle. A dry
    run reads nothing. A Dataflow job is always production (its lake is on GCS): `production`
    is accepted for the callers' sake, and the development key is refused whatever it says."""
    secret = worker_secret(target.project, pii_key_secret, True)
    if not dry_run:
        load_protector(True, secret, lake=target.lake)
    config = ingest_config(catalog, target.lake, not dry_run, pii_key_secret=secret)
    return lambda p: build_streaming(p, catalog, target, config)


def replay_builder(
    catalog: Catalog,
    target: DataflowTarget,
    aggregate: str,
    *,
    since: str | None,
    until: str | None,
    dry_run: bool,
) -> Builder:
    """A batch replay of `aggregate` for `target` (a launch plans it on the lake now); a state
    view's name gives the view replay (tidegate/pipelines/replay_view.py)."""
    if aggregate in {v.name for v in catalog.views}:
        return view_replay_builder(catalog, target, aggregate, since=since, until=until, dry_run=dry_run)
    catalog.aggregate(aggregate)  # an unknown name fails before anything is built
    return lambda p: build_replay(
        p,
        catalog,
        target,
        aggregate,
        since=since,
        until=until,
        run_id=new_run_id("replay"),
        code_version=code_version(),
        git_sha=git_sha(),
        plan=not dry_run,
        storage=settings.storage_options(),
    )


def view_replay_builder(
    catalog: Catalog,
    target: DataflowTarget,
    view: str,
    *,
    since: str | None = None,
    until: str | None = None,
    dry_run: bool,
) -> Builder:
    """A batch rebuild of state view `view` for `target`: every source pinned at its version now
    (a launch reads the Delta log here; a dry run reads nothing), folded bucket by bucket on the
    workers, one overwrite commit of the view table."""
    if since or until:
        raise TidegateError(
            f"{view} is a state view: it is rebuilt whole (a view has no windows)",
            hint="drop --since/--until",
        )

    def build(p: beam.Pipeline) -> None:
        storage = settings.storage_options()
        run_id = new_run_id("replay")
        build_view_replay_job(p, catalog, target.lake, view, storage, run_id=run_id, offline=dry_run)

    return build


def verify_builder(catalog: Catalog, target: DataflowTarget, *, run_id: str, dry_run: bool) -> Builder:
    """`verify` of the lake as a batch job for `target`, its report at
    `<lake>/_reports/verify/<run_id>.json`. A launch plans it on the lake now (every table pinned
    at its version, its file groups counted); a dry run reads nothing."""

    def build(p: beam.Pipeline) -> None:
        storage = settings.storage_options()
        _ = build_verify_job(p, catalog, target.lake, storage, run_id=run_id, offline=dry_run)

    return build


def launch(
    catalog: Catalog,
    target: DataflowTarget,
    *,
    replay: str | None = None,
    verify: bool = False,
    since: str | None = None,
    until: str | None = None,
    production: bool = True,
    pii_key_secret: str | None = None,
    dry_run: bool,
) -> dict[str, Any]:
    """Build the streaming ingest (neither `replay` nor `verify`), a replay of one aggregate or
    state view, or a verify of the lake and submit it, or with `dry_run` return its spec (a verify's also names
    its `report`). The one code path behind `tidegate deploy dataflow` and
    `tidegate ingest --mode streaming --dry-run`."""
    if replay is not None and verify:
        raise TidegateError(
            "say which job: --replay AGGREGATE|VIEW or --verify, not both",
            hint="launch them one after the other",
        )
    if target.update and (replay is not None or verify):
        raise TidegateError(
            f"--update replaces a running streaming job; {'a replay' if replay else 'verify'} is a new batch job",
            hint="drop --update",
        )
    target.check()
    if not dry_run:
        require_credentials()
    if verify:
        run_id = new_run_id("verify")
        builder = verify_builder(catalog, target, run_id=run_id, dry_run=dry_run)
        job = run("batch", target, builder, dry_run=dry_run, name=job_name("verify", target))
        return {**job, "report": report_uri(target.lake, run_id)}
    if replay is None:
        builder = streaming_builder(
            catalog, target, production=production, pii_key_secret=pii_key_secret, dry_run=dry_run
        )
        return run("streaming", target, builder, dry_run=dry_run, name=job_name("ingest", target))
    builder = replay_builder(catalog, target, replay, since=since, until=until, dry_run=dry_run)
    name = job_name("replay", target, replay.replace("_", "-"))
    return run("batch", target, builder, dry_run=dry_run, name=name)


def console_url(target: DataflowTarget, job_id: str) -> str:
    return f"https://console.cloud.google.com/dataflow/jobs/{target.region}/{job_id}?project={target.project}"


def run(
    kind: str,
    target: DataflowTarget,
    builder: Any,
    *,
    dry_run: bool,
    name: str,
) -> dict[str, Any]:
    """Build the job with `builder(pipeline)`; dry run: return the job spec (nothing leaves this
    machine); otherwise submit it and return its id and console URL. `launch` has checked the
    target and the credentials."""
    if dry_run:
        _offline()
    options = PipelineOptions(pipeline_args(kind, target, dry_run=dry_run, name=name))
    pipeline = beam.Pipeline(options=options)
    builder(pipeline)
    result = pipeline.run()
    if dry_run:
        job = result.job  # type: ignore[attr-defined]
        graph = json.loads(json_format.MessageToJson(job.proto_pipeline))
        return {
            "name": job.proto.name,
            "type": getattr(job.proto.type, "name", str(job.proto.type)),
            "options": dict(options.get_all_options(drop_default=True).items()),
            "steps": sorted(t["uniqueName"] for t in graph["components"]["transforms"].values()),
            "pipeline": graph,
        }
    job_id = result.job_id()  # type: ignore[attr-defined]
    return {
        "name": name,
        "job_id": job_id,
        "console_url": console_url(target, job_id),
        "update": target.update,
    }
