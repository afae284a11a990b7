"""`verify` of raw history as a bounded Beam pipeline: the exactly-once check of every raw table
and the parity of every aggregate, one element per group of raw files, for lakes beyond one
machine. The work is the pure functions `tidegate verify` runs in one process
(tidegate.lake.history, tidegate.lake.verify); Beam only distributes it.

    uv run python -m tidegate.pipelines.verify --lake .tidegate/lake

    raw/<type> file groups -> HashKeys -> GroupByKey(bucket) -> RepeatedHashes ─┐
                           -> NameDuplicates(side input: repeated hashes) ◄─────┘ -> one row per key held twice
    raw/<source> file groups -> PreAggregate -> CombineGlobally(merge) -> CompareWithTable -> problems

Each worker opens the raw table at the pinned version and plans the same file groups (sorted by
path, from the Delta log), so an element is a group index. Keys are shuffled as 64-bit hashes
(8 bytes a row), by hash bucket; only rows whose hash repeats are read again to be named.
Partial aggregate rows merge exactly in any grouping (tidegate.lake.aggregates), so the
combine is associative and a runner may merge them in any tree.

Locally it runs on the in-process FnApiRunner (pinned, as replay is). On Dataflow the same
graph runs with the lake on gs://; a launcher (`tidegate deploy dataflow`, the flex template's
`--mode`) does not build it yet (docs/architecture.md, issue 18 section).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import polars as pl
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from tidegate.catalog import AggregateSpec, Catalog, load_catalog
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.delta import try_open
from tidegate.lake.history import GROUP_ROWS, FileGroups, key_hashes, readable_version
from tidegate.lake.tables import aggregate_uri, raw_uri
from tidegate.lake.verify import pairs_per_event, window_diff

BUCKETS = 64
KEYS = ["event_source", "event_id"]


@dataclass(frozen=True)
class Pinned:
    """A raw table at one version, planned in groups of `group_rows` rows (small, picklable)."""

    uri: str
    version: int
    group_rows: int = GROUP_ROWS
    storage_options: tuple[tuple[str, str], ...] = ()

    def groups(self) -> FileGroups:
        table = try_open(self.uri, dict(self.storage_options) or None, version=self.version)
        assert table is not None, self.uri
        return FileGroups.of(table, self.group_rows)


class _GroupsFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, pinned: Pinned) -> None:
        self.pinned = pinned

    def setup(self) -> None:
        self.groups = self.pinned.groups()


class HashKeysFn(_GroupsFn):
    """A file group -> (bucket, the 64-bit hashes of its rows' keys in that bucket)."""

    def process(self, i: int) -> Iterator[tuple[int, bytes]]:
        hashes = key_hashes(self.groups.read(i, KEYS), KEYS).to_numpy()
        which = hashes % np.uint64(BUCKETS)
        for b in np.unique(which):
            yield int(b), hashes[which == b].tobytes()


def repeated_hashes(item: tuple[int, Iterable[bytes]]) -> Iterator[int]:
    hashes = np.sort(np.frombuffer(b"".join(item[1]), dtype=np.uint64))
    yield from (int(h) for h in np.unique(hashes[1:][hashes[1:] == hashes[:-1]]))


class NameDuplicatesFn(_GroupsFn):
    """A file group's rows whose key hash repeats somewhere (rare), as (key, 1)."""

    def process(self, i: int, repeated: list[int]) -> Iterator[tuple[tuple[str, str], int]]:
        if not repeated:
            return
        frame = self.groups.read(i, KEYS)
        suspects = pl.Series(repeated, dtype=pl.UInt64)
        for row in frame.filter(key_hashes(frame, KEYS).is_in(suspects.implode())).iter_rows():
            yield (row[0], row[1]), 1


class DuplicateKeys(beam.PTransform):  # type: ignore[misc]
    """File group indices of one raw table -> (source, id, times) for every key held twice."""

    def __init__(self, pinned: Pinned) -> None:
        super().__init__()
        self.pinned = pinned

    def expand(self, groups: PCollection) -> PCollection:
        repeated = (
            groups
            | "HashKeys" >> beam.ParDo(HashKeysFn(self.pinned))
            | "GroupBuckets" >> beam.GroupByKey()
            | "RepeatedHashes" >> beam.FlatMap(repeated_hashes)
        )
        return (
            groups
            | "NameDuplicates" >> beam.ParDo(NameDuplicatesFn(self.pinned), beam.pvalue.AsList(repeated))
            | "CountPerKey" >> beam.CombinePerKey(sum)
            | "HeldTwice" >> beam.Filter(lambda kv: kv[1] > 1)
            | "AsRow" >> beam.Map(lambda kv: (kv[0][0], kv[0][1], kv[1]))
        )


class PreAggregateFn(_GroupsFn):
    """A file group -> (partial rows, late (event_id, window_start) pairs), columnar."""

    def __init__(self, pinned: Pinned, spec_json: str) -> None:
        super().__init__(pinned)
        self.spec_json = spec_json

    def setup(self) -> None:
        super().setup()
        self.spec = AggregateSpec.model_validate_json(self.spec_json)

    def process(self, i: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        rows_per_chunk = max(10_000, 250_000 // pairs_per_event(self.spec))
        for rows in self.groups.chunks(i, agg.source_columns(self.spec), rows_per_chunk):
            parts = agg.split(agg.frame(rows.to_arrow()), self.spec)
            yield agg.partials(parts.on_time, self.spec), parts.late.select("event_id", "window_start")


class MergePartials(beam.CombineFn):  # type: ignore[misc]
    """Partial rows and late pairs of any number of groups -> merged (exact in any order)."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json

    def _spec(self) -> AggregateSpec:
        return AggregateSpec.model_validate_json(self.spec_json)

    def create_accumulator(self) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
        return []

    def add_input(self, acc: list[Any], item: tuple[pl.DataFrame, pl.DataFrame]) -> list[Any]:
        acc.append(item)
        if len(acc) > 16:
            acc = [self._merge(acc)]
        return acc

    def merge_accumulators(self, accs: Iterable[list[Any]]) -> list[Any]:
        return [self._merge([x for acc in accs for x in acc])] if accs else []

    def _merge(self, items: list[tuple[pl.DataFrame, pl.DataFrame]]) -> tuple[pl.DataFrame, pl.DataFrame]:
        spec = self._spec()
        partials = [p for p, _ in items if p.height]
        merged = agg.merge(pl.concat(partials, how="vertical_relaxed"), spec) if partials else items[0][0]
        return merged, pl.concat([late for _, late in items], how="vertical_relaxed")

    def extract_output(self, acc: list[Any]) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        return self._merge(acc) if acc else None


@dataclass(frozen=True)
class ParityConfig:
    lake: str
    spec_json: str
    storage_options: tuple[tuple[str, str], ...] = ()


def compare(config: ParityConfig, merged: tuple[pl.DataFrame, pl.DataFrame] | None) -> list[str]:
    """Problems between the aggregate table and the merged recompute (empty: none)."""
    spec = AggregateSpec.model_validate_json(config.spec_json)
    table = try_open(aggregate_uri(config.lake, spec.name), dict(config.storage_options) or None)
    if table is None:
        return [f"aggregates/{spec.name} does not exist"]
    got = pl.from_arrow(table.to_pyarrow_table(columns=agg.value_columns(spec)))
    assert isinstance(got, pl.DataFrame)
    if merged is None:
        return [f"{spec.name}: {got.height} windows in the table, no raw rows"] if got.height else []
    return window_diff(agg.finalize(merged[0], spec), got, spec)


def build(
    p: beam.Pipeline, catalog: Catalog, lake: str, storage: dict[str, str] | None = None
) -> PCollection:
    """The verify graph of every raw table and aggregate of `catalog` that exists in `lake`,
    each table pinned at its version now: a PCollection of problems (text lines)."""
    options = tuple(sorted((storage or {}).items()))
    outputs = [p | "NoProblem" >> beam.Create([])]
    for t in catalog.event_types:
        table = try_open(raw_uri(lake, t), storage)
        if table is None:
            continue
        pinned = Pinned(raw_uri(lake, t), table.version(), storage_options=options)
        dup = (
            p
            | f"Groups/raw/{t}" >> beam.Create(range(len(pinned.groups())), reshuffle=False)
            | f"DuplicateKeys/raw/{t}" >> DuplicateKeys(pinned)
            | f"Say/raw/{t}"
            >> beam.Map(lambda r, t=t: f"raw/{t}: event_source={r[0]}, event_id={r[1]} is there {r[2]} times")
        )
        outputs.append(dup)
    for spec in catalog.aggregates:
        target = try_open(aggregate_uri(lake, spec.name), storage)
        version = target.transaction_version(app_id(spec)) if target is not None else None
        if version is None:
            continue
        uri = raw_uri(lake, spec.source)
        pinned = Pinned(uri, readable_version(uri, version, storage), storage_options=options)
        config = ParityConfig(lake, spec.model_dump_json(), options)
        parity = (
            p
            | f"Groups/{spec.name}" >> beam.Create(range(len(pinned.groups())), reshuffle=False)
            | f"PreAggregate/{spec.name}" >> beam.ParDo(PreAggregateFn(pinned, config.spec_json))
            | f"MergePartials/{spec.name}" >> beam.CombineGlobally(MergePartials(config.spec_json))
            | f"CompareWithTable/{spec.name}" >> beam.FlatMap(lambda m, c=config: compare(c, m))
        )
        outputs.append(parity)
    return tuple(outputs) | "Problems" >> beam.Flatten()


def run_local(catalog: Catalog, lake: str, storage: dict[str, str] | None = None) -> list[str]:
    """Run the graph on the in-process runner; the problems found (empty: the lake verifies)."""
    options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    with tempfile.TemporaryDirectory(prefix="tidegate-verify-") as tmp:
        out = Path(tmp) / "problems.txt"
        with beam.Pipeline(runner=FnApiRunner(), options=options) as p:
            _ = build(p, catalog, lake, storage) | "WriteProblems" >> beam.io.WriteToText(
                str(out), shard_name_template=""
            )
        return sorted(out.read_text().splitlines()) if out.exists() else []


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lake", required=True)
    args = parser.parse_args()
    for line in run_local(load_catalog(), args.lake) or ["verified: no problem"]:
        print(line)
