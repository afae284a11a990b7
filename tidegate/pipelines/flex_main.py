"""Entry point of the Dataflow Flex Template (tidegate/infra/dataflow): the launcher runs this file with
the template's parameters plus Dataflow's own pipeline options.

    python -m tidegate.pipelines.flex_main --mode streaming --lake gs://B/lake [beam options]
    python -m tidegate.pipelines.flex_main --mode replay --aggregate sessions_per_user --lake gs://B/lake
    python -m tidegate.pipelines.flex_main --mode replay --aggregate order_state --lake gs://B/lake
    python -m tidegate.pipelines.flex_main --mode maintain --lake gs://B/lake [--retain_hours 168]
    python -m tidegate.pipelines.flex_main --mode verify --lake gs://B/lake [--catalog PATH]

streaming, replay and verify build exactly what `tidegate deploy dataflow` builds
(tidegate/pipelines/dataflow.py); verify's report lands in `<lake>/_reports/verify/<run_id>.json`,
and the launcher's log names it. maintain is what `tidegate maintain` does (apply the catalog's
retention, then compact and vacuum every table), run by a one-step batch job on one worker; the
daily Cloud Scheduler job of tidegate/infra/terraform launches it (docs/deploy.md, "Maintenance on
GCP"). The template parameters are listed in tidegate/infra/dataflow/metadata.json (a test keeps
the two in step).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from tidegate import settings
from tidegate.catalog import load_catalog
from tidegate.errors import TidegateError
from tidegate.lake.governance import expire
from tidegate.lake.lock import lake_lock
from tidegate.lake.maintenance import maintain
from tidegate.lake.read import Lake
from tidegate.lake.tables import LakeTables
from tidegate.pipelines.dataflow import (
    Builder,
    DataflowTarget,
    replay_builder,
    streaming_builder,
    verify_builder,
)
from tidegate.pipelines.runs import new_run_id
from tidegate.pipelines.verify import report_uri

log = logging.getLogger(__name__)

# Who the scheduled maintenance is, in the _audit rows of what its retention deletes
# (`tidegate audit`); `tidegate maintain` from a workstation records user@host instead.
MAINTAIN_ACTOR = "cloud-scheduler"
# The removed-file window `tidegate maintain` keeps by default: vacuum leaves files younger than this.
DEFAULT_RETAIN_HOURS = 168


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tidegate-flex", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--mode",
        choices=["streaming", "replay", "maintain", "verify"],
        required=True,
        help="streaming ingest, batch replay, maintenance (retention, compaction, vacuum), or verify "
        "(the lake's checks, a report in <lake>/_reports/verify/)",
    )
    p.add_argument("--lake", required=True, help="the lake on GCS, gs://bucket/lake")
    p.add_argument(
        "--aggregate",
        help="replay: the aggregate or state view to rebuild (a view's name runs the view replay)",
    )
    p.add_argument("--since", help="replay: windows starting at/after this RFC 3339 time")
    p.add_argument("--until", help="replay: windows starting before this RFC 3339 time")
    p.add_argument(
        "--retain_hours",
        type=int,
        default=DEFAULT_RETAIN_HOURS,
        help="maintain: vacuum keeps files younger than this many hours (the removed-file window; time travel by version is the 10-minute log)",
    )
    p.add_argument("--catalog", help="stream catalog path inside the image (default: the packaged one)")
    p.add_argument(
        "--production",
        default="true",
        choices=["true"],
        help="always true: a Dataflow job's lake is on GCS, where the development PII key is refused",
    )
    p.add_argument(
        "--pii_key_secret",
        help="Secret Manager secret version holding the PII key "
        "(default: projects/<project>/secrets/tidegate-pii-key/versions/latest)",
    )
    return p


def maintain_lake(
    lake: str,
    catalog_path: str | None = None,
    retain_hours: int = DEFAULT_RETAIN_HOURS,
    actor: str = MAINTAIN_ACTOR,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`tidegate maintain` for the scheduled job: delete the rows past the catalog's retention
    (each deletion an `_audit` row by `actor`), then compact every table and vacuum the files
    older than `retain_hours`. No PII key is needed. Returns (and logs, as JSON) what it did."""
    catalog = load_catalog(catalog_path)
    storage = settings.storage_options()
    if not Lake(lake, storage, catalog).has_tables():  # a mistyped lake must fail, not "succeed"
        raise TidegateError(
            f"no tidegate tables under {lake}", hint="check the lake parameter (terraform output `lake`)"
        )
    tables = LakeTables(lake, catalog)
    run_id = new_run_id("maintain")
    # A local lake is locked like `tidegate maintain` locks it; on gs:// this is a no-op, and Delta's
    # conditional commits arbitrate with the streaming job (tidegate/lake/lock.py).
    with lake_lock(lake):
        expired = expire(tables, run_id=run_id, actor=actor, now=now, storage=storage)
        report = maintain(tables, retain_hours, storage)
    summary = {
        "lake": lake,
        "run_id": run_id,
        "actor": actor,
        "retain_hours": retain_hours,
        "expired": [
            {"table": e["table"], "rows": e["rows"], "reason": e["reason"], "cutoff": e["cutoff"]}
            for e in expired
        ],
        "tables": report,
    }
    log.info("tidegate maintain %s", json.dumps(summary, default=str))
    return summary


def maintain_builder(lake: str, catalog_path: str | None, retain_hours: int) -> Builder:
    """The maintenance as a batch job: one element, one step, run on a Dataflow worker. A Flex
    Template launch must submit a job (the launcher runs with --template_location and Dataflow reads
    the job it writes), and a job gives the run a status, worker logs and no launcher time limit.
    The work function is taken from the installed module, not from `__main__` (the launcher runs
    this file as a script), so the worker unpickles it by reference from the same image."""
    from tidegate.pipelines.flex_main import maintain_lake as work  # by reference: see above

    def build(p: beam.Pipeline) -> None:
        _ = (
            p
            | "Lake" >> beam.Create([lake])
            | "ExpireCompactVacuum"
            >> beam.Map(work, catalog_path=catalog_path, retain_hours=retain_hours, actor=MAINTAIN_ACTOR)
        )

    return build


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parser().parse_known_args(argv)
    options = PipelineOptions(beam_args, save_main_session=False)
    gcp = options.view_as(GoogleCloudOptions)
    catalog = load_catalog(args.catalog)
    target = DataflowTarget(
        project=gcp.project or catalog.project,
        region=gcp.region or "",
        temp_location=gcp.temp_location or "",
        lake=args.lake,
    )
    if args.mode == "maintain":
        target.check()  # a gs:// lake (and temp location), as `tidegate deploy dataflow` requires
        if args.retain_hours < 0:
            raise SystemExit("--retain_hours must be 0 or more")
        builder = maintain_builder(args.lake, args.catalog, args.retain_hours)
    elif args.mode == "verify":
        target.check()  # workers read the lake: it must be on GCS
        run_id = new_run_id("verify")
        builder = verify_builder(catalog, target, run_id=run_id, dry_run=False)
        log.info("tidegate verify: the report will be %s", report_uri(args.lake, run_id))
    elif args.mode == "streaming":
        builder = streaming_builder(
            catalog,
            target,
            production=args.production == "true",
            pii_key_secret=args.pii_key_secret,
            dry_run=False,
        )
    else:
        if not args.aggregate:
            raise SystemExit("--aggregate (an aggregate or a state view) is required with --mode replay")
        builder = replay_builder(
            catalog, target, args.aggregate, since=args.since, until=args.until, dry_run=False
        )
    pipeline = beam.Pipeline(options=options)
    builder(pipeline)
    pipeline.run()  # Flex Templates return once the job is submitted


if __name__ == "__main__":  # pragma: no cover - run by the template launcher
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
