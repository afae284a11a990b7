"""What every ingest composite shares: the run's config, the output tags, per-worker state
(contracts, suites, the PII protector; once per process) and the DoFn base that loads it."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from apache_beam.pvalue import PCollection
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from tidegate.catalog import load_catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.suites import SuiteValidator, suite_fingerprint
from tidegate.lake.pii import pii_policies
from tidegate.lake.tables import (
    raw_schema,
)
from tidegate.transforms import coders as _coders  # noqa: F401 - registers the chunk coders
from tidegate.transforms.dofn import TidegateDoFn

INVALID = "invalid"
QUALITY = "quality"
ROWS = "rows"


class Validated(NamedTuple):
    valid: PCollection
    invalid: PCollection


@dataclass(frozen=True)
class IngestConfig:
    """Everything a worker needs, small and picklable (never PipelineOptions)."""

    lake: str
    run_id: str
    catalog_path: str
    code_version: str
    git_sha: str
    production: bool = False
    storage_options: tuple[tuple[str, str], ...] = ()
    # streaming mode: per event type, the columns of committed raw rows to emit downstream
    # (to the windowed aggregates); empty in local mode, where aggregates project from Delta
    emit_rows: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # streaming mode: the raw and quarantine writers commit once per chunk (not per bundle), so
    # every commit belongs to exactly one chunk and the ledger can balance chunk by chunk
    commit_per_chunk: bool = False
    # Secret Manager secret version holding the PII key (workers fetch it; see tidegate/lake/pii.py)
    pii_key_secret: str | None = None
    # local mode: the writers hand their commits to COMMITS (all tables of a batch commit side by
    # side, raw, quarantine and _quality alike) instead of committing one after the other in
    # Beam's finish_bundle order; the caller drains them by batch id (tidegate/pipelines/local/batch.py)
    parallel_commits: bool = False
    # local mode: this process is the lake's only writer (it holds the lake lock), so the writers
    # dedup against an in-memory key index and append (lake.writer.append_new) instead of the
    # insert-only MERGE that concurrent streaming workers need
    single_writer: bool = False
    # streaming mode: raw history through staged files and one committer per table
    # (tidegate.lake.committer), committing every `committer_seconds` or `committer_batch` chunks
    staged_commits: bool = False
    committer_batch: int = 64
    committer_seconds: float = 1.0
    # the committer keeps the dedup horizon's keys in memory (lake.keyindex, 24 bytes a key, on
    # the worker that owns the table's key); off: it reads them from the horizon's files per round
    committer_index: bool = True

    def __post_init__(self) -> None:
        if self.parallel_commits and self.emit_rows:
            raise ValueError("parallel_commits cannot emit committed rows downstream (streaming mode)")
        if self.staged_commits and (self.single_writer or self.parallel_commits):
            raise ValueError(
                "staged_commits is the many-writers path: not with single_writer / parallel_commits"
            )

    @property
    def storage(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None


@contextlib.contextmanager
def _timed(distribution: Any) -> Iterator[None]:
    """Milliseconds of the block into a Beam distribution (per-stage cost in `_metrics`)."""
    started = time.perf_counter()
    yield
    distribution.update(int((time.perf_counter() - started) * 1000))


def _global(value: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


@functools.lru_cache(maxsize=4)
def worker_state(catalog_path: str) -> tuple[Any, Any]:
    """Catalog and contracts, loaded once per worker process (not per DoFn, run or bundle).

    The local driver runs one short Beam pipeline per micro-batch in this same process, so
    caching here (rather than in `DoFn.setup`) keeps GX contexts and contract compilation
    from being rebuilt every batch. On Dataflow it is once per worker process.
    """

    catalog = load_catalog(catalog_path)
    return catalog, ContractRegistry.from_catalog(catalog)


@functools.lru_cache(maxsize=4)
def suite_validator(catalog_path: str) -> Any:

    return SuiteValidator(worker_state(catalog_path)[1])


@functools.lru_cache(maxsize=4)
def suite_fingerprints(catalog_path: str) -> dict[str, str]:
    """Per event type, the fingerprint of the suite this process validates with (loaded once,
    like the validator itself: an edited suite file takes effect in the next run)."""

    registry = worker_state(catalog_path)[1]
    return {t: suite_fingerprint(c.suite_path) for t, c in registry.types.items() if c.suite_path}


@functools.lru_cache(maxsize=4)
def pii_policies_of(catalog_path: str) -> dict[str, Any]:
    """Every event type's lake.pii.PiiPolicy, once per worker process."""

    catalog, registry = worker_state(catalog_path)
    return pii_policies(catalog, registry)


@functools.lru_cache(maxsize=4)
def raw_schemas(catalog_path: str) -> dict[str, Any]:

    return {t: raw_schema(c) for t, c in worker_state(catalog_path)[1].types.items()}


class _CatalogFn(TidegateDoFn):
    """Loads the catalog and contracts once per worker (setup), not per element."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.catalog, self.registry = worker_state(self.config.catalog_path)
