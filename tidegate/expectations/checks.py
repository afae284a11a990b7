"""Check a batch of Pub/Sub messages: envelope, then contract, then the GX suite.

This is the pure core the pipeline's validation composites adapt (no Beam here). Every
message comes out exactly once: as a `ValidEvent` (typed record, contract, envelope) or as a
`Rejection` naming the stage and *every* failed rule of that stage.

Stages, in order (a message stops at the first stage it fails):
1. `envelope`: CloudEvents decoding (oversize, non_utf8, malformed_json, json_too_deep,
   type_not_on_topic, event_time_in_future, event_too_old,
   missing_attribute, invalid_attribute, unsupported_specversion, unsupported_content_type);
2. `contract`: ce-type known to the catalog (`unknown_type`), ce-dataschema present
   (`missing_dataschema`) and naming a known version (`unknown_version`), then the Avro
   contract (`missing_required_field`, `wrong_type`, `unexpected_field`, `invalid_enum_symbol`);
3. `expectations`: the type's GX suite over the whole batch (rule = the expectation type).

One message can never stop a batch: any other exception while decoding or checking it (a bug
in these checks, a case nobody foresaw) quarantines that message alone with rule
`unexpected_error` in the stage it happened, and a message naming only the exception type
(its text could echo payload values). An event that passes the contract stage is
representable in its raw Delta table (`tidegate.lake.tables.raw_schema`): every value was checked
against its column type, range included.

The Beam composites (tidegate.transforms.ingest: DecodeEnvelopeFn, ValidateContractFn,
ValidateExpectationsFn) call these stages; tests/checking.py chains them without Beam.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tidegate.catalog import Catalog
from tidegate.expectations.coercion import ContractViolation, Violation
from tidegate.expectations.contracts import Contract, ContractRegistry, version_from_dataschema
from tidegate.expectations.envelope import Envelope, EnvelopeError, RawMessage, decode_envelope
from tidegate.expectations.suites import ExpectationOutcome, RuleFailure, SuiteValidator

UNEXPECTED_ERROR = "unexpected_error"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidEvent:
    message: RawMessage
    envelope: Envelope
    contract: Contract
    record: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    message: RawMessage
    stage: str
    failures: tuple[RuleFailure, ...]
    event_id: str | None = None
    event_type: str | None = None
    schema_version: int | None = None
    envelope: Envelope | None = None  # when decoding got that far (its data is the parsed payload)
    event_time: datetime | None = None  # ce-time, when it could be read (also without an envelope)
    record: dict[str, Any] | None = None  # when the contract passed (GX rejections)

    @property
    def rules(self) -> list[str]:
        return [f.rule for f in self.failures]


def resolve_contract(envelope: Envelope, registry: ContractRegistry) -> Contract:
    """Which contract an envelope claims; raises ContractViolation with the reason."""
    if envelope.type not in registry.types:
        known = ", ".join(sorted(registry.types))
        raise ContractViolation(
            [_v("unknown_type", "type", f"ce-type {_clip(envelope.type)} is not in the catalog ({known})")]
        )
    if not envelope.dataschema:
        raise ContractViolation(
            [
                _v(
                    "missing_dataschema",
                    "dataschema",
                    "ce-dataschema is missing: it must name the contract version (…:v1)",
                )
            ]
        )
    version = version_from_dataschema(envelope.dataschema)
    contract = registry.get(envelope.type, version) if version is not None else None
    if contract is None:
        known_v = ", ".join(f"v{v}" for v in registry.versions(envelope.type))
        raise ContractViolation(
            [
                _v(
                    "unknown_version",
                    "dataschema",
                    f"ce-dataschema {_clip(envelope.dataschema)} names no known version of "
                    f"{envelope.type} (known: {known_v})",
                )
            ]
        )
    return contract


def _v(rule: str, field_name: str, message: str) -> Violation:
    return Violation(rule, field_name, message)


def _clip(text: str, limit: int = 120) -> str:
    """An attribute quoted in a message: a structured-mode attribute can be megabytes."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def unexpected_failure(stage: str, exc: BaseException, doing: str) -> RuleFailure:
    """The failure for an exception no check anticipated: its type only, never its text (an
    OverflowError's or a KeyError's text can quote the payload value that caused it)."""
    name = type(exc).__name__
    _log.warning("%s while %s: message quarantined as %s", name, doing, UNEXPECTED_ERROR)
    return RuleFailure(stage, UNEXPECTED_ERROR, None, f"{name} while {doing}")


def decode_stage(message: RawMessage, catalog: Catalog) -> Envelope | Rejection:
    """Stage 1: the CloudEvents envelope, with the payload limit of the event's stream."""
    limit = catalog.max_payload_bytes
    try:
        envelope = decode_envelope(message, limit)
    except EnvelopeError as exc:
        failure = RuleFailure("envelope", exc.rule, exc.field, exc.message)
        return _envelope_rejection(message, failure, exc.event_id, exc.event_type, exc.event_time)
    except Exception as exc:  # noqa: BLE001 - one message must never stop the batch: quarantine it
        return _envelope_rejection(message, unexpected_failure("envelope", exc, "decoding the envelope"))
    on_topic = catalog.types_by_subscription.get(message.subscription)
    if on_topic is not None and envelope.type not in on_topic and envelope.type in catalog.payload_limits:
        topic = next(s.topic for s in catalog.streams if s.subscription == message.subscription)
        return Rejection(
            message,
            "envelope",
            (
                RuleFailure(
                    "envelope",
                    "type_not_on_topic",
                    "type",
                    f"ce-type {envelope.type} is not carried by topic {topic} "
                    f"(the catalog puts {', '.join(sorted(on_topic))} there)",
                ),
            ),
            event_id=envelope.id,
            event_type=envelope.type,
            envelope=envelope,
        )
    bounds = catalog.time_bounds.get(envelope.type)
    if bounds is not None:
        late = _time_rejection(message, envelope, *bounds)
        if late is not None:
            return late
    stream_limit = catalog.payload_limits.get(envelope.type, limit)
    if len(message.data) > stream_limit:
        return Rejection(
            message,
            "envelope",
            (
                RuleFailure(
                    "envelope",
                    "oversize",
                    None,
                    f"message body is {len(message.data)} bytes, the limit for {envelope.type} is {stream_limit}",
                ),
            ),
            event_id=envelope.id,
            event_type=envelope.type,
        )
    return envelope


def _time_rejection(
    message: RawMessage, envelope: Envelope, max_future: timedelta, max_age: timedelta | None
) -> Rejection | None:
    """ce-time against the message's publish time (the processing clock when there is none, e.g.
    a test): a deterministic reference, so a replay or redrive decides as ingestion did."""
    reference = message.publish_time or datetime.now(UTC)
    if envelope.time - reference > max_future:
        rule, text = "event_time_in_future", f"ahead of its publish time by more than {max_future}"
    elif max_age is not None and reference - envelope.time > max_age:
        rule, text = "event_too_old", f"older than its publish time by more than {max_age}"
    else:
        return None
    failure = RuleFailure("envelope", rule, "time", f"ce-time {envelope.time.isoformat()} is {text}")
    return Rejection(
        message,
        "envelope",
        (failure,),
        event_id=envelope.id,
        event_type=envelope.type,
        envelope=envelope,
    )


def _envelope_rejection(
    message: RawMessage,
    failure: RuleFailure,
    event_id: str | None = None,
    event_type: str | None = None,
    event_time: datetime | None = None,
) -> Rejection:
    return Rejection(
        message,
        "envelope",
        (failure,),
        event_id=event_id or message.attributes.get("ce-id"),
        event_type=event_type or message.attributes.get("ce-type"),
        event_time=event_time,
    )


def contract_stage(
    message: RawMessage, envelope: Envelope, registry: ContractRegistry
) -> ValidEvent | Rejection:
    """Stage 2: the contract the event names, and its payload against it."""
    contract: Contract | None = None
    try:
        contract = resolve_contract(envelope, registry)
        record = contract.coerce(envelope.data)
    except ContractViolation as exc:
        failures = tuple(RuleFailure("contract", v.rule, v.field, v.message) for v in exc.violations)
        return _contract_rejection(message, envelope, contract, failures)
    except Exception as exc:  # noqa: BLE001 - one message must never stop the batch: quarantine it
        failure = unexpected_failure("contract", exc, "checking the contract")
        return _contract_rejection(message, envelope, contract, (failure,))
    return ValidEvent(message, envelope, contract, record)


def _contract_rejection(
    message: RawMessage,
    envelope: Envelope,
    contract: Contract | None,
    failures: tuple[RuleFailure, ...],
) -> Rejection:
    return Rejection(
        message,
        "contract",
        failures,
        event_id=envelope.id,
        event_type=envelope.type,
        schema_version=contract.version if contract else version_from_dataschema(envelope.dataschema or ""),
        envelope=envelope,
    )


def expectations_stage(
    events: list[ValidEvent], validator: SuiteValidator
) -> tuple[list[ValidEvent], list[Rejection], list[ExpectationOutcome]]:
    """Stage 3: each type's GX suite over its events of the batch (one validate per type)."""
    by_type: dict[str, list[ValidEvent]] = defaultdict(list)
    for e in events:
        by_type[e.contract.event_type].append(e)
    valid: list[ValidEvent] = []
    rejected: list[Rejection] = []
    outcomes: list[ExpectationOutcome] = []
    for event_type, typed in by_type.items():
        batch = validator.validate(event_type, [e.record for e in typed])
        outcomes += batch.outcomes
        for i, event in enumerate(typed):
            failures = batch.row_failures.get(i)
            if failures:
                rejected.append(
                    Rejection(
                        event.message,
                        "expectations",
                        tuple(failures),
                        event_id=event.envelope.id,
                        event_type=event_type,
                        schema_version=event.contract.version,
                        envelope=event.envelope,
                        record=event.record,
                    )
                )
            else:
                valid.append(event)
    return valid, rejected, outcomes


def id_conflict(event: ValidEvent, landed_digest: str, this_digest: str) -> Rejection:
    """A valid event whose identity (source, id) is already in raw history with another payload
    (found at commit time, lake.writer): the copy in raw stays, this one is quarantined with
    both payload digests, so a producer that sent two events under one id is visible."""
    env = event.envelope
    return Rejection(
        event.message,
        "identity",
        (
            RuleFailure(
                "identity",
                "id_conflict",
                "id",
                f"({env.source}, {env.id}) already landed in raw/{event.contract.event_type} with payload "
                f"digest {landed_digest}; this copy's payload digest is {this_digest}: two different "
                "events were sent under one id",
            ),
        ),
        event_id=env.id,
        event_type=event.contract.event_type,
        schema_version=event.contract.version,
        envelope=env,
        record=event.record,
    )
