"""`replay <view>` as a bounded Beam batch job: rebuild a state view (tidegate.lake.views) from
raw history on many workers, for lakes beyond one machine. The one-process `tidegate replay
<view>` (`views.rebuild`) folds key ranges spilled to local disk; this job folds key buckets
shuffled by the runner, with the same pure `views.fold`, and writes the same table: the same
rows, columns and types, in ONE overwrite commit with the same commit properties (run id, and
the raw version of each source as the view's app transactions, which `ViewMaintainer` and
`tidegate verify` read).

    uv run python -m tidegate.pipelines.replay_view order_state --lake .tidegate/lake
    tidegate deploy dataflow --replay order_state --project P --region R --lake gs://B/lake \\
        --temp-location gs://S/tmp [--dry-run]

    raw/<source> groups -> BucketRows (by a hash of the view key) ─┐
    raw/<source> groups -> BucketRows ─────────────────────────────┴> GroupBuckets -> FoldAndStage
        -> one staged Parquet file per bucket -> CollectFiles -> Commit (one Delta overwrite)

`plan` runs where the job is built (this machine, or the Flex Template launcher): it pins each
source's raw table at its version now (those versions become the view's markers) and counts its
file groups; a bucket folds about `views.BUCKET_ROWS` raw rows, as a key range of the one-process
rebuild does. The composites are in tidegate.transforms.view_fold, shared with verify's view
parity. Locally the job runs on the in-process FnApiRunner under the lake lock (as replay does);
on Dataflow the lake is on gs:// and Delta's conditional commit arbitrates with other writers.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from tidegate.catalog import Catalog, ViewSpec, load_catalog
from tidegate.errors import TidegateError
from tidegate.lake import views
from tidegate.lake.delta import try_open
from tidegate.lake.history import GROUP_ROWS
from tidegate.lake.lock import lake_lock
from tidegate.lake.tables import raw_uri
from tidegate.pipelines.runs import new_run_id
from tidegate.transforms.view_fold import (
    CommitView,
    FoldView,
    Pinned,
    Source,
    Storage,
    ViewReplayConfig,
)

# A dry run's placeholder group count: two, so its spec shows the Spread steps a real lake's has.
_OFFLINE_GROUPS = 2


@dataclass(frozen=True)
class ViewReplayPlan:
    """The job: every source pinned, how many buckets, what the commit records (picklable)."""

    config: ViewReplayConfig
    sources: tuple[Source, ...]  # only the sources with rows to read
    buckets: int

    @property
    def versions(self) -> dict[str, int]:
        return dict(self.config.versions)


@dataclass
class ViewReplayResult:
    view: str
    versions: dict[str, int]  # raw version per source the view now reflects (-1: no table)
    buckets: int
    keys: int
    rows: int
    table_version: int
    seconds: float


def view_spec(catalog: Catalog, name: str) -> ViewSpec:
    for v in catalog.views:
        if v.name == name:
            return v
    raise TidegateError(f"unknown view {name!r}", hint="see `tidegate contracts list`")


def plan(
    catalog: Catalog,
    lake: str,
    name: str,
    storage: dict[str, str] | None = None,
    *,
    run_id: str,
    offline: bool = False,
    group_rows: int = GROUP_ROWS,
    bucket_rows: int = views.BUCKET_ROWS,
) -> ViewReplayPlan:
    """Pin each source of view `name` at its version now (a missing raw table: marker -1, as
    `views.rebuild` records it). `offline` (a dry run, no credentials): every source at version
    -1 in two placeholder groups, nothing read; the steps are the real ones."""
    view = view_spec(catalog, name)
    options: Storage = tuple(sorted((storage or {}).items()))
    sources: list[Source] = []
    versions: dict[str, int] = {}
    rows = 0
    for e in view.events:
        uri = raw_uri(lake, e.type)
        if offline:
            sources.append((e.type, Pinned(uri, -1, group_rows, options), _OFFLINE_GROUPS))
            versions[e.type] = -1
            continue
        table = try_open(uri, storage)
        if table is None:
            versions[e.type] = -1  # no raw table yet: the marker says "none of it"
            continue
        pinned = Pinned(uri, table.version(), group_rows, options)
        groups = pinned.groups()
        versions[e.type] = pinned.version
        rows += groups.rows
        if len(groups):
            sources.append((e.type, pinned, len(groups)))
    schema = views.view_schema(catalog, view)
    config = ViewReplayConfig(
        lake,
        view.model_dump_json(),
        schema.serialize().to_pybytes(),
        tuple(versions.items()),
        run_id,
        options,
    )
    buckets = _OFFLINE_GROUPS if offline else max(1, math.ceil(rows / bucket_rows))
    return ViewReplayPlan(config, tuple(sources), buckets)


def build(p: beam.Pipeline, job: ViewReplayPlan) -> PCollection:
    """The view replay graph of `job`: the table version its one commit made."""
    staged = p | "FoldView" >> FoldView(job.config, job.sources, job.buckets)
    version: PCollection = staged | "CommitView" >> CommitView(job.config)
    return version


def build_job(
    p: beam.Pipeline,
    catalog: Catalog,
    lake: str,
    name: str,
    storage: dict[str, str] | None,
    *,
    run_id: str,
    offline: bool = False,
    group_rows: int = GROUP_ROWS,
) -> ViewReplayPlan:
    """Plan `lake` now (offline: nothing read) and build the job: the one builder behind
    `replay_view`, `tidegate deploy dataflow --replay <view>` and the Flex Template's
    `--mode replay --aggregate <view>`."""
    job = plan(catalog, lake, name, storage, run_id=run_id, offline=offline, group_rows=group_rows)
    _ = build(p, job)
    return job


def _counter(result: object, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]  # type: ignore[attr-defined]
    return int(sum(c.committed or c.attempted or 0 for c in found))


def replay_view(
    catalog: Catalog,
    lake: str,
    name: str,
    *,
    run_id: str,
    storage: dict[str, str] | None = None,
    group_rows: int = GROUP_ROWS,
    bucket_rows: int = views.BUCKET_ROWS,
    locked: bool = False,
) -> ViewReplayResult:
    """Rebuild view `name` from raw history with the Beam job on the in-process runner, under
    the lake lock (`locked`: the caller holds it)."""
    t0 = time.perf_counter()
    with contextlib.nullcontext() if locked else lake_lock(lake):
        job = plan(
            catalog, lake, name, storage, run_id=run_id, group_rows=group_rows, bucket_rows=bucket_rows
        )
        options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        p = beam.Pipeline(runner=FnApiRunner(), options=options)
        _ = build(p, job)
        result = p.run()
        result.wait_until_finish()
    table = try_open(views.view_uri(lake, name), storage)
    assert table is not None
    return ViewReplayResult(
        view=name,
        versions=job.versions,
        buckets=job.buckets,
        keys=_counter(result, "view_keys_written"),
        rows=_counter(result, "view_rows_written"),
        table_version=int(table.version()),
        seconds=time.perf_counter() - t0,
    )


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("view")
    parser.add_argument("--lake", required=True)
    args = parser.parse_args()
    r = replay_view(load_catalog(), args.lake, args.view, run_id=new_run_id("replay"))
    print(
        f"views/{r.view}: {r.rows:,} rows ({r.keys:,} keys) in {r.buckets} buckets, table version {r.table_version}"
    )
