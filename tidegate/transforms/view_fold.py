"""Beam pieces for reading pinned Delta tables by file group and folding a state view bucket by
bucket: shared by `verify`'s view parity (tidegate.pipelines.verify) and the Beam view replay
(tidegate.pipelines.replay_view). Thin adapters over tidegate.lake.history (file groups) and
tidegate.lake.views (`fold`, the one fold of a view).

    Groups(count) -> BucketRowsFn(raw/<type>) ─┐
    Groups(count) -> BucketRowsFn(raw/<type>) ─┴> CoGroupByKey(bucket) -> fold_bucket per bucket

A key's events sit in any file of any source, so rows meet by a hash of the view key: a worker
holds one bucket (about views.BUCKET_ROWS raw rows), never a whole table.

The view replay (`FoldView` -> `CommitView`) stages each bucket's folded rows as one Parquet
file in the view table's folder, uncommitted (tidegate.lake.committer.stage_rows, as the raw
committer's workers do), and one final step commits them all in ONE Delta overwrite carrying
the commit properties of the one-process rebuild (`views.commit_properties`: run id, and the
raw version of each source as the view's app transactions). That step holds one small
descriptor per bucket, never a row. A retried commit whose first attempt landed changes
nothing; staged files of a retried bucket that no commit adds are not in the table (readers
never see them; `tidegate maintain`'s vacuum deletes them).

    uv run pytest tests/test_view_replay_beam.py
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
import polars as pl
import pyarrow as pa
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PBegin, PCollection
from apache_beam.transforms import combiners
from deltalake import DeltaTable

from tidegate.catalog import ViewSpec
from tidegate.lake import views
from tidegate.lake.committer import stage_rows
from tidegate.lake.delta import try_open
from tidegate.lake.history import GROUP_ROWS, FileGroups

SEED = 0x7D1D  # the bucket hash's seed: both sides of a comparison must use the same one

Storage = tuple[tuple[str, str], ...]  # storage options, hashable and picklable
Source = tuple[str, "Pinned", int]  # (event type, raw table pinned, its file groups)


@dataclass(frozen=True)
class Pinned:
    """A table at one version, planned in groups of `group_rows` rows (small, picklable)."""

    uri: str
    version: int
    group_rows: int = GROUP_ROWS
    storage_options: Storage = ()

    def table(self) -> DeltaTable:
        table = try_open(self.uri, dict(self.storage_options) or None, version=self.version)
        assert table is not None, self.uri
        return table

    def groups(self) -> FileGroups:
        return FileGroups.of(self.table(), self.group_rows)


def by_bucket(frame: pl.DataFrame, keys: Sequence[str], buckets: int) -> Iterator[tuple[int, pl.DataFrame]]:
    """`frame`'s rows by a hash of `keys` modulo `buckets`. The keys are hashed as text, so two
    sides of a comparison whose key columns differ in type (int32 and int64, string and
    large_string) put a key in the same bucket."""
    if frame.is_empty():
        return
    bucket = pl.struct([pl.col(k).cast(pl.String) for k in keys]).hash(seed=SEED) % buckets
    for part in frame.with_columns(bucket.alias("_bucket")).partition_by("_bucket"):
        yield int(part.get_column("_bucket")[0]), part.drop("_bucket")


def concat(frames: Iterable[pl.DataFrame]) -> pl.DataFrame | None:
    """The frames as one (None: there are none, or all are empty)."""
    present = [f for f in frames if f.height]
    return pl.concat(present, how="diagonal_relaxed") if present else None


class GroupsFn(beam.DoFn):  # type: ignore[misc]
    """A DoFn whose elements are file group indices of one pinned table (planned in `setup`)."""

    def __init__(self, pinned: Pinned) -> None:
        self.pinned = pinned

    def setup(self) -> None:
        self.groups = self.pinned.groups()


class Groups(beam.PTransform):  # type: ignore[misc]
    """The file group indices 0..count-1, spread over the workers: a Create's elements all come
    out of the one bundle that made them, so without the Reshuffle one Dataflow worker would
    read every group (one group needs no spreading: a small lake's run skips the stage)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def expand(self, p: PBegin) -> PCollection:
        indices = p | "Indices" >> beam.Create(range(self.count), reshuffle=False)
        return indices | "Spread" >> beam.Reshuffle() if self.count > 1 else indices


class BucketRowsFn(GroupsFn):
    """A file group -> its rows (`columns`, None: all) by a hash of the view key."""

    def __init__(self, pinned: Pinned, key: str, columns: list[str] | None, buckets: int) -> None:
        super().__init__(pinned)
        self.key = key
        self.columns = columns
        self.buckets = buckets

    def process(self, i: int) -> Iterator[tuple[int, pl.DataFrame]]:
        columns = self.columns or list(self.groups.dataset.schema.names)
        for chunk in self.groups.chunks(i, columns, views.SPILL_ROWS):
            yield from by_bucket(chunk, [self.key], self.buckets)


def raw_side(source: str) -> str:
    """The CoGroupByKey tag of a source's raw rows."""
    return f"raw/{source}"


def bucket_raw_rows(
    p: PBegin, view: ViewSpec, sources: Sequence[Source], buckets: int
) -> dict[str, PCollection]:
    """Each source's raw rows (only the view's columns) by key bucket, keyed by `raw_side`. The
    steps are applied in the caller's composite ("Groups/raw/<type>", "BucketRows/raw/<type>"),
    so its step names do not depend on this helper."""
    sides: dict[str, PCollection] = {}
    for t, pinned, groups in sources:
        columns = views.source_columns(view, t)
        sides[raw_side(t)] = (
            p
            | f"Groups/raw/{t}" >> Groups(groups)
            | f"BucketRows/raw/{t}" >> beam.ParDo(BucketRowsFn(pinned, view.key, columns, buckets))
        )
    return sides


def fold_bucket(
    view: ViewSpec, sources: Iterable[str], sides: dict[str, Iterable[pl.DataFrame]]
) -> pl.DataFrame:
    """One key bucket's view rows: `views.fold` of its raw rows (the one-process replay's fold)."""
    raw = {t: frame for t in sources if (frame := concat(sides.get(raw_side(t), []))) is not None}
    return views.fold(raw, view)


# -- the view replay: fold, stage, one commit ---------------------------------------------------


@dataclass(frozen=True)
class ViewReplayConfig:
    """What the view replay's workers and its committer need (small, picklable)."""

    lake: str
    view_json: str
    schema_ipc: bytes  # the view table's Arrow schema (`views.view_schema`), serialized
    versions: tuple[tuple[str, int], ...]  # raw version per source read (-1: no table): the markers
    run_id: str
    storage_options: Storage = ()

    @property
    def view(self) -> ViewSpec:
        return ViewSpec.model_validate_json(self.view_json)

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(self.schema_ipc))

    @property
    def storage(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    @property
    def uri(self) -> str:
        return views.view_uri(self.lake, self.view.name)


@dataclass(frozen=True)
class StagedViewFile:
    """One bucket's folded rows, staged in the view table's folder and not committed yet."""

    path: str  # relative to the table root
    size: int
    stats: str  # Delta statistics JSON
    rows: int
    keys: int


class FoldAndStageFn(beam.DoFn):  # type: ignore[misc]
    """One key bucket -> its view rows (`views.fold`), staged as a Parquet file in the table."""

    def __init__(self, config: ViewReplayConfig, sources: tuple[str, ...]) -> None:
        self.config = config
        self.sources = sources
        self.rows = Metrics.counter("view_replay", "view_rows_written")
        self.keys = Metrics.counter("view_replay", "view_keys_written")

    def setup(self) -> None:
        self.view = self.config.view
        self.schema = self.config.schema

    def process(self, item: tuple[int, dict[str, Iterable[pl.DataFrame]]]) -> Iterator[StagedViewFile]:
        rows = fold_bucket(self.view, self.sources, item[1])
        if rows.is_empty():
            return
        staged = stage_rows(
            self.config.uri,
            views.arrow_rows(rows, self.schema),
            keys=[self.view.key],
            storage_options=self.config.storage,
        )
        keys = rows.get_column(self.view.key).n_unique()
        self.rows.inc(rows.height)
        self.keys.inc(keys)
        for i, f in enumerate(staged):  # one file: a view table is not partitioned
            yield StagedViewFile(f.path, f.size, f.stats, f.rows, keys if i == 0 else 0)


class FoldView(beam.PTransform):  # type: ignore[misc]
    """The view's raw sources (pinned, by file group) -> one staged file per key bucket."""

    def __init__(self, config: ViewReplayConfig, sources: Sequence[Source], buckets: int) -> None:
        super().__init__()
        self.config = config
        self.sources = tuple(sources)
        self.buckets = buckets

    def expand(self, p: PBegin) -> PCollection:
        if not self.sources:  # no raw rows at all: the view is empty (the commit still lands)
            return p | "NoRawRows" >> beam.Create([])
        sides = bucket_raw_rows(p, self.config.view, self.sources, self.buckets)
        fn = FoldAndStageFn(self.config, tuple(t for t, _, _ in self.sources))
        return sides | "GroupBuckets" >> beam.CoGroupByKey() | "FoldAndStage" >> beam.ParDo(fn)


def commit_staged_view(config: ViewReplayConfig, files: Iterable[StagedViewFile]) -> int:
    """The staged files of every bucket -> the view table's new version (`views.commit_staged`:
    one overwrite commit, idempotent on retry)."""
    return views.commit_staged(
        config.uri,
        config.view,
        config.schema,
        [(f.path, f.size, f.stats) for f in files],
        dict(config.versions),
        config.run_id,
        config.storage,
    )


class CommitView(beam.PTransform):  # type: ignore[misc]
    """Staged files of every bucket -> the view table's new version, one overwrite commit. Only
    the descriptors meet in one place (one per bucket), never the rows."""

    def __init__(self, config: ViewReplayConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, staged: PCollection) -> PCollection:
        return (
            staged
            | "CollectFiles" >> combiners.ToList()
            | "Commit" >> beam.Map(lambda files, config=self.config: commit_staged_view(config, files))
        )
