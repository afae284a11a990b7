"""Dataflow jobs: the streaming ingest and the batch replay, built the same way for a dry run
(offline, no credentials) and a launch (`tidegate deploy dataflow`, or the Flex Template's
entry point `tidegate/pipelines/flex_main.py`).

    tidegate deploy dataflow --streaming --project P --region R --lake gs://B/lake \\
        --temp-location gs://S/tmp --dry-run
    tidegate deploy dataflow --replay revenue_per_currency_1m --project P ... --dry-run

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
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tidegate.catalog import Catalog
from tidegate.errors import TidegateError

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
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError:
        raise TidegateError(
            f"no Google credentials {purpose}",
            hint="run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"
            + ("; --dry-run builds the job without any" if "Dataflow" in purpose else ""),
        ) from None


def build_streaming(p: beam.Pipeline, catalog: Catalog, target: DataflowTarget, config: Any) -> None:
    from tidegate.pipelines.streaming import build

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
    from deltalake import DeltaTable

    from tidegate.catalog import AggregateSpec
    from tidegate.pipelines.replay import build, file_groups, replay_config

    spec: AggregateSpec = catalog.aggregate(aggregate)
    version: int = -1
    groups: list[list[str]] = [[]]
    if plan:
        table = DeltaTable(f"{target.lake.rstrip('/')}/raw/{spec.source}", storage_options=storage)
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
    build(p, config, groups)


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
    machine); otherwise submit it and return its id and console URL."""
    target.check()
    if dry_run:
        _offline()
    else:
        require_credentials()
    options = PipelineOptions(pipeline_args(kind, target, dry_run=dry_run, name=name))
    pipeline = beam.Pipeline(options=options)
    builder(pipeline)
    result = pipeline.run()
    if dry_run:
        from google.protobuf import json_format

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
