"""Entry point of the Dataflow Flex Template (tidegate/infra/dataflow): the launcher runs this file with
the template's parameters plus Dataflow's own pipeline options.

    python -m tidegate.pipelines.flex_main --mode streaming --lake gs://B/lake [beam options]
    python -m tidegate.pipelines.flex_main --mode replay --aggregate sessions_per_user --lake gs://B/lake

It builds exactly what `tidegate deploy dataflow` builds (tidegate/pipelines/dataflow.py); the template
parameters are listed in tidegate/infra/dataflow/metadata.json (a test keeps the two in step).
"""

from __future__ import annotations

import argparse
import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from tidegate.catalog import load_catalog
from tidegate.pipelines.dataflow import DataflowTarget, replay_builder, streaming_builder


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tidegate-flex", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--mode", choices=["streaming", "replay"], required=True, help="streaming ingest or batch replay"
    )
    p.add_argument("--lake", required=True, help="the lake on GCS, gs://bucket/lake")
    p.add_argument("--aggregate", help="replay: the aggregate to rebuild")
    p.add_argument("--since", help="replay: windows starting at/after this RFC 3339 time")
    p.add_argument("--until", help="replay: windows starting before this RFC 3339 time")
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
    if args.mode == "streaming":
        builder = streaming_builder(
            catalog,
            target,
            production=args.production == "true",
            pii_key_secret=args.pii_key_secret,
            dry_run=False,
        )
    else:
        if not args.aggregate:
            raise SystemExit("--aggregate is required with --mode replay")
        builder = replay_builder(
            catalog, target, args.aggregate, since=args.since, until=args.until, dry_run=False
        )
    pipeline = beam.Pipeline(options=options)
    builder(pipeline)
    pipeline.run()  # Flex Templates return once the job is submitted


if __name__ == "__main__":  # pragma: no cover - run by the template launcher
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
