"""The three check stages chained without Beam, for tests: what the ingest composites do to a
batch (tidegate.transforms.ingest), on plain lists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tidegate.catalog import Catalog
from tidegate.expectations.checks import (
    Rejection,
    ValidEvent,
    contract_stage,
    decode_stage,
    expectations_stage,
)
from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.envelope import RawMessage
from tidegate.expectations.suites import ExpectationOutcome, SuiteValidator


@dataclass
class CheckedBatch:
    valid: list[ValidEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)


def check_message(
    message: RawMessage, catalog: Catalog, registry: ContractRegistry
) -> ValidEvent | Rejection:
    """Envelope and contract stages for one message (GX runs per batch, see check_batch)."""
    decoded = decode_stage(message, catalog)
    if isinstance(decoded, Rejection):
        return decoded
    return contract_stage(message, decoded, registry)


def check_batch(
    messages: Iterable[RawMessage],
    catalog: Catalog,
    registry: ContractRegistry,
    validator: SuiteValidator,
) -> CheckedBatch:
    """All three stages over a batch; GX runs once per event type present."""
    out = CheckedBatch()
    passed: list[ValidEvent] = []
    for m in messages:
        result = check_message(m, catalog, registry)
        if isinstance(result, Rejection):
            out.rejected.append(result)
        else:
            passed.append(result)
    valid, rejected, outcomes = expectations_stage(passed, validator)
    out.valid += valid
    out.rejected += rejected
    out.outcomes += outcomes
    return out
