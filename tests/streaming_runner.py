"""Beam's local streaming runner against the emulator: a test-only smoke run of the streaming graph
(it is no way to run tidegate: that runner acks before processing and ignores id_label, so
production local ingestion is the micro-batch mode, tidegate.pipelines.local)."""

from __future__ import annotations

import os
import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

from tidegate.catalog import Catalog
from tidegate.pipelines.streaming import build
from tidegate.transforms.base import IngestConfig


def run_local_streaming(
    catalog: Catalog,
    config: IngestConfig,
    *,
    address: str,
    project: str,
    seconds: float,
    chunk_size: int = 100,
    until: Any = None,
) -> None:
    """Smoke run on Beam's local streaming runner against the emulator, for at most `seconds`
    (or until `until()` is true, checked every second).

    Only for checking the streaming graph end to end: that runner acks before processing
    (a crash loses data) and does not implement `id_label`, so production local ingestion is
    the micro-batch mode (pipelines.local).
    """
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = address  # Beam's Pub/Sub client reads only this
    options = PipelineOptions(["--streaming"])
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build(
        pipeline,
        catalog,
        config,
        project=project,
        chunk_size=chunk_size,
        chunk_seconds=1.0,
        shards=1,
        id_label=None,
        timestamp_attribute=None,
        compact_every=0,  # PeriodicImpulse is a splittable DoFn, which this runner cannot run
    )
    try:
        result = pipeline.run()  # the direct runner executes in background threads
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until is not None and until()):
            time.sleep(1.0)
        result.cancel()
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
