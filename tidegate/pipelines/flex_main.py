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

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions


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
        "--production", default="true", choices=["true", "false"], help="refuse the development PII key"
    )
    p.add_argument(
        "--pii_key_secret",
        help="Secret Manager secret version holding the PII key "
        "(default: projects/<project>/secrets/tidegate-pii-key/versions/latest)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    from tidegate import settings
    from tidegate.catalog import load_catalog
    from tidegate.pipelines.dataflow import DataflowTarget, build_replay, build_streaming
    from tidegate.pipelines.local import new_run_id
    from tidegate.version import code_version, git_sha

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
    import apache_beam as beam

    pipeline = beam.Pipeline(options=options)
    if args.mode == "streaming":
        from tidegate.lake.pii import load_protector, worker_secret
        from tidegate.pipelines.local import ingest_config

        production = args.production == "true"
        secret = worker_secret(target.project, args.pii_key_secret, production)
        load_protector(production, secret)  # fail at launch, not on the first bundle
        config = ingest_config(catalog, args.lake, production, pii_key_secret=secret)
        build_streaming(pipeline, catalog, target, config)
    else:
        if not args.aggregate:
            raise SystemExit("--aggregate is required with --mode replay")
        build_replay(
            pipeline,
            catalog,
            target,
            args.aggregate,
            since=args.since,
            until=args.until,
            run_id=new_run_id().replace("run-", "replay-"),
            code_version=code_version(),
            git_sha=git_sha(),
            plan=True,
            storage=settings.storage_options(),
        )
    pipeline.run()  # Flex Templates return once the job is submitted


if __name__ == "__main__":  # pragma: no cover - run by the template launcher
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
