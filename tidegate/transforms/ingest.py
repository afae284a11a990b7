"""Beam composites of the ingest pipeline: thin adapters over pure functions.

    chunks -> DecodeEnvelope -> ValidateContract -> ValidateExpectations -> WriteRawHistory
                    \\                  \\                    \\
                     +------------------+--------------------+--> WriteQuarantine

The element is a **chunk** (`Chunk`: a batch id and a list of messages), never a single
message: every DoFn pays Beam's per-element overhead once per chunk, GX validates a whole
chunk per event type, and each writer commits once per bundle per table. In local mode a
micro-batch is one chunk; in streaming mode `GroupIntoBatches` makes the chunks.

Each validating composite returns `Validated(valid, invalid)`: callers never juggle tags,
and the pipeline flattens every `invalid` into `WriteQuarantine`, so nothing is dropped.
The writers (tidegate.transforms.writes) commit once per bundle per table, idempotently. Only
data problems (TerminalError: EnvelopeError, ContractViolation) become quarantine rows;
infrastructure errors propagate so the runner (or the local driver) retries and never acks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection

from tidegate.expectations.checks import (
    Rejection,
    ValidEvent,
    contract_stage,
    decode_stage,
    expectations_stage,
)
from tidegate.expectations.envelope import Envelope, RawMessage
from tidegate.faults import InjectedCrash, crash_on
from tidegate.transforms.base import (
    INVALID,
    QUALITY,
    ROWS,
    IngestConfig,
    Validated,
    _CatalogFn,
    _timed,
    suite_validator,
)
from tidegate.transforms.ingest_types import Chunk, Decoded, Rejected, Typed
from tidegate.transforms.writes import WriteQuality, WriteQuarantine, WriteRawHistory


class DecodeEnvelopeFn(_CatalogFn):
    def setup(self) -> None:
        super().setup()
        self.decoded = Metrics.counter("tidegate", "events_in")
        self.rejected = Metrics.counter("tidegate", "rejected_envelope")
        self.crash_on = crash_on()
        self.ms = Metrics.distribution("tidegate", "decode_ms")

    def process(self, chunk: Chunk) -> Iterator[Any]:
        items: list[tuple[RawMessage, Envelope]] = []
        bad: list[Rejection] = []
        with _timed(self.ms):
            for m in chunk.messages:
                if self.crash_on is not None and m.attributes.get("ce-id") == self.crash_on:
                    raise InjectedCrash(f"injected crash on ce-id {self.crash_on}")
                result = decode_stage(m, self.catalog)
                if isinstance(result, Rejection):
                    bad.append(result)
                else:
                    items.append((m, result))
        self.decoded.inc(len(chunk.messages))
        self.rejected.inc(len(bad))
        yield Decoded(chunk.batch_id, items)
        if bad:
            yield beam.pvalue.TaggedOutput(INVALID, Rejected(chunk.batch_id, bad))


class ValidateContractFn(_CatalogFn):
    def setup(self) -> None:
        super().setup()
        self.rejected = Metrics.counter("tidegate", "rejected_contract")
        self.ms = Metrics.distribution("tidegate", "contract_ms")

    def process(self, decoded: Decoded) -> Iterator[Any]:
        good: list[ValidEvent] = []
        bad: list[Rejection] = []
        with _timed(self.ms):
            for m, env in decoded.items:
                result = contract_stage(m, env, self.registry)
                (bad if isinstance(result, Rejection) else good).append(result)  # type: ignore[arg-type]
        self.rejected.inc(len(bad))
        yield Typed(decoded.batch_id, good)
        if bad:
            yield beam.pvalue.TaggedOutput(INVALID, Rejected(decoded.batch_id, bad))


class ValidateExpectationsFn(_CatalogFn):
    def setup(self) -> None:
        super().setup()
        self.validator = suite_validator(self.config.catalog_path)  # GX context: once per worker
        self.rejected = Metrics.counter("tidegate", "rejected_expectations")
        self.ms = Metrics.distribution("tidegate", "gx_ms")

    def process(self, typed: Typed) -> Iterator[Any]:
        with _timed(self.ms):
            valid, rejected, outcomes = expectations_stage(typed.events, self.validator)
        self.rejected.inc(len(rejected))
        yield Typed(typed.batch_id, valid)
        if rejected:
            yield beam.pvalue.TaggedOutput(INVALID, Rejected(typed.batch_id, rejected))
        if outcomes:
            yield beam.pvalue.TaggedOutput(QUALITY, (typed.batch_id, outcomes))


class _ValidationStage(beam.PTransform):
    """One validation stage: a ParDo with a `valid` and an `invalid` output (+ extra tags)."""

    fn: type[beam.DoFn]
    valid_type: type
    extra_tags: tuple[str, ...] = ()

    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, pcoll: PCollection) -> Validated:
        out = pcoll | beam.ParDo(self.fn(self.config)).with_outputs(INVALID, *self.extra_tags, main="valid")
        self.extra = {tag: out[tag] for tag in self.extra_tags}
        # Declared element types make Beam pick the chunk coders (cheap size sampling).
        out.valid.element_type = self.valid_type
        out[INVALID].element_type = Rejected
        return Validated(out.valid, out[INVALID])


class DecodeEnvelope(_ValidationStage):
    fn = DecodeEnvelopeFn
    valid_type = Decoded


class ValidateContract(_ValidationStage):
    fn = ValidateContractFn
    valid_type = Typed


class ValidateExpectations(_ValidationStage):
    """GX suites per event type per chunk; the per-expectation outcomes go to `extra[QUALITY]`."""

    fn = ValidateExpectationsFn
    valid_type = Typed
    extra_tags = (QUALITY,)


class Ingested(NamedTuple):
    commits: PCollection  # TableCommit per table per bundle
    rows: PCollection  # (event type, [committed raw rows as dicts]) per commit; streaming mode only


class Ingest(beam.PTransform):
    """The whole chain from chunks to commits: Ingested(commits, rows)."""

    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, chunks: PCollection) -> Ingested:  # type: ignore[override]
        envelope = chunks | "DecodeEnvelope" >> DecodeEnvelope(self.config)
        contract = envelope.valid | "ValidateContract" >> ValidateContract(self.config)
        gx = ValidateExpectations(self.config)
        expectations = contract.valid | "ValidateExpectations" >> gx
        written = expectations.valid | "WriteRawHistory" >> WriteRawHistory(self.config)
        raw = written.commits
        rejected = (
            envelope.invalid,
            contract.invalid,
            expectations.invalid,
        ) | "CollectRejections" >> beam.Flatten()
        quarantine = rejected | "WriteQuarantine" >> WriteQuarantine(self.config)
        quality = gx.extra[QUALITY] | "WriteQuality" >> WriteQuality(self.config)
        return Ingested((raw, quarantine, quality) | "Commits" >> beam.Flatten(), written[ROWS])
