"""`tidegate replay <aggregate>`: rebuild an aggregate table from the raw history as a bounded
Beam pipeline (the same windowing and combine logic as the projection; `tidegate.transforms.aggregate`).

    tidegate replay revenue_per_currency_1m
    tidegate replay sessions_per_user --since 2026-11-26T00:00:00Z --until 2026-11-27T00:00:00Z

The raw table is pinned at its current version V for the whole run. Its files are grouped into
work items of about `group_rows` rows; each is read, split into on-time and late pairs by the
watermark recorded on every raw row, and pre-aggregated columnarly; partial rows are merged per
shard; one writer replaces the windows that start in [since, until) (all windows without a
range) in a single Delta commit and, on a full replay, records V as the app transaction (the
local projection then resumes after V). Late pairs are (re)recorded in the late ledger,
insert-only.

Ranges: fixed and sliding windows read raw rows in [since, until + size) and keep the windows
that start in [since, until); sessions read the whole history (a session can start before
`since` and run into the range: cutting it would invent a new one) and keep the sessions that
start in the range.

Locally the pipeline runs on the in-process FnApiRunner (pinned: no Prism download); the same
pipeline is what Dataflow batch would run with the lake on GCS (deployment issue). One writer
per lake: a local replay takes the same lock as `tidegate ingest`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from tidegate.catalog import AggregateSpec, Catalog
from tidegate.errors import TidegateError
from tidegate.expectations.coercion import parse_rfc3339
from tidegate.lake.lock import lake_lock
from tidegate.lake.openlineage import LineageEmitter, OutputTable, dataset_name
from tidegate.lake.tables import aggregate_uri, late_uri, raw_uri
from tidegate.transforms.aggregate import ReplayAggregate, ReplayConfig, WriteReplayed


@dataclass
class ReplayResult:
    aggregate: str
    raw_version: int
    events_read: int
    files: int
    windows: int
    late_pairs: int
    table_version: int
    seconds: float


def _parse(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None

    try:
        return parse_rfc3339(value)
    except ValueError:
        raise TidegateError(
            f"{option} {value!r} is not an RFC 3339 time", hint="e.g. 2026-11-26T10:00:00Z"
        ) from None


def file_groups(table: DeltaTable, group_rows: int) -> list[list[str]]:
    """The table's data files as dataset fragment paths, in groups of about `group_rows` rows."""
    actions = pa.table(table.get_add_actions(flatten=True))
    counts = {  # data file names are unique (uuid): match fragments to log entries by name
        path.rsplit("/", 1)[-1]: n
        for path, n in zip(
            actions.column("path").to_pylist(), actions.column("num_records").to_pylist(), strict=True
        )
    }
    dataset = table.to_pyarrow_dataset()
    assert isinstance(dataset, ds.FileSystemDataset)
    groups: list[list[str]] = []
    current: list[str] = []
    rows = 0
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        current.append(fragment.path)
        rows += int(counts.get(fragment.path.rsplit("/", 1)[-1]) or 0)
        if rows >= group_rows:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return groups


def read_bounds(
    spec: AggregateSpec, lo: datetime | None, hi: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Which event times a ranged replay must read to rebuild the windows starting in [lo, hi)."""
    if spec.window.type == "session":
        return None, None
    size = timedelta(seconds=spec.window.seconds("size"))
    return lo, (hi + size if hi is not None else None)


def build(p: beam.Pipeline, config: ReplayConfig, groups: list[list[str]]) -> None:
    read = p | "ReadFileGroups" >> beam.Create(groups, reshuffle=False)
    if len(groups) > 1:  # spread the groups over Dataflow's workers (Create alone keeps them on one)
        read = read | "Spread" >> beam.Reshuffle()
    replayed = read | "ReplayAggregate" >> ReplayAggregate(config)
    _ = replayed | "WriteReplayed" >> WriteReplayed(config)


def _counter(result: Any, name: str) -> int:

    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return int(sum(c.committed or c.attempted or 0 for c in found))


def replay_config(
    catalog: Catalog,
    lake: str,
    name: str,
    *,
    raw_version: int,
    since: str | None,
    until: str | None,
    run_id: str,
    code_version: str,
    git_sha: str,
    storage: dict[str, str] | None = None,
) -> ReplayConfig:
    """What every replay worker needs, for the local runner and Dataflow alike."""
    spec = catalog.aggregate(name)
    lo, hi = _parse(since, "--since"), _parse(until, "--until")
    if lo is not None and hi is not None and lo >= hi:
        raise TidegateError(f"--since {since} is not before --until {until}", hint="swap them")
    read_lo, read_hi = read_bounds(spec, lo, hi)
    return ReplayConfig(
        lake=lake,
        catalog_path=str(catalog.path),
        raw_uri=raw_uri(lake, spec.source),
        raw_version=raw_version,
        spec_json=spec.model_dump_json(),
        run_id=run_id,
        code_version=code_version,
        git_sha=git_sha,
        storage_options=tuple(sorted((storage or {}).items())),
        read_since=read_lo.isoformat() if read_lo else None,
        read_until=read_hi.isoformat() if read_hi else None,
        since=lo.isoformat() if lo else None,
        until=hi.isoformat() if hi else None,
    )


def replay(
    catalog: Catalog,
    lake: str,
    name: str,
    *,
    since: str | None = None,
    until: str | None = None,
    run_id: str,
    code_version: str,
    git_sha: str,
    storage: dict[str, str] | None = None,
    group_rows: int = 250_000,
    locked: bool = False,
) -> ReplayResult:
    """Rebuild `name` (or its windows starting in [since, until)) from raw history, under the
    lake lock; `locked`: the caller holds it already (an erasure or a re-tokenization replays
    the windows it touched before it lets ingestion in again)."""
    spec = catalog.aggregate(name)
    replay_config(  # argument mistakes first, before touching the lake
        catalog,
        lake,
        name,
        raw_version=-1,
        since=since,
        until=until,
        run_id=run_id,
        code_version="",
        git_sha="",
    )
    t0 = time.perf_counter()
    try:
        DeltaTable(raw_uri(lake, spec.source), storage_options=storage)
    except TableNotFoundError:
        raise TidegateError(
            f"no raw history for {spec.source} in {lake}: nothing to replay {name} from",
            hint="ingest some events first (`tidegate ingest`), or check --lake",
        ) from None
    with contextlib.nullcontext() if locked else lake_lock(lake):
        raw = DeltaTable(raw_uri(lake, spec.source), storage_options=storage)  # pinned from here on
        version = raw.version()
        groups = file_groups(raw, group_rows)
        config = replay_config(
            catalog,
            lake,
            name,
            raw_version=version,
            since=since,
            until=until,
            run_id=run_id,
            code_version=code_version,
            git_sha=git_sha,
            storage=storage,
        )

        lineage = LineageEmitter(lake, catalog=catalog)
        job = f"replay.{name}"
        inputs = [dataset_name(raw_uri(lake, spec.source))]
        lineage.emit("START", job, run_id, inputs=inputs, tidegate_run_id=run_id)
        try:
            options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
            p = beam.Pipeline(runner=FnApiRunner(), options=options)
            build(p, config, groups)
            result = p.run()
            result.wait_until_finish()
        except BaseException as exc:
            lineage.emit(
                "FAIL",
                job,
                run_id,
                inputs=inputs,
                error=f"{exc.__class__.__name__}: {exc}",
                tidegate_run_id=run_id,
            )
            raise
        table = DeltaTable(aggregate_uri(lake, name), storage_options=storage)
        windows = _counter(result, "replay_windows_written")
        outputs = [OutputTable(aggregate_uri(lake, name), table.version(), windows)]
        late = _counter(result, "replay_late_pairs")
        if late:
            outputs.append(
                OutputTable(
                    late_uri(lake), DeltaTable(late_uri(lake), storage_options=storage).version(), late
                )
            )
        lineage.emit("COMPLETE", job, run_id, inputs=inputs, outputs=outputs, tidegate_run_id=run_id)
    return ReplayResult(
        aggregate=name,
        raw_version=version,
        events_read=_counter(result, "replay_events_read"),
        files=sum(len(g) for g in groups),
        windows=windows,
        late_pairs=late,
        table_version=int(table.version()),
        seconds=time.perf_counter() - t0,
    )


def replayer(
    catalog: Catalog, lake: str, *, run_id: str, storage: dict[str, str] | None = None
) -> Callable[..., ReplayResult]:
    """`replay` for a procedure that holds the lake lock itself (an erasure, a re-tokenization):
    `replayer(...)(name, since=None, until=None)` rebuilds `name` (the windows starting in
    [since, until)) under that procedure's run id."""
    from tidegate.version import code_version, git_sha

    def run(name: str, since: datetime | None = None, until: datetime | None = None) -> ReplayResult:
        return replay(
            catalog,
            lake,
            name,
            since=since.isoformat() if since else None,
            until=until.isoformat() if until else None,
            run_id=run_id,
            code_version=code_version(),
            git_sha=git_sha(),
            storage=storage,
            locked=True,
        )

    return run
