"""Great Expectations suites: the value rules of each event type, validated per batch.

Type rules (required fields, types, enums) live in the Avro contract; rules about *values*
(ranges, sets, formats) live in `tidegate/expectations/contracts/<type>/suite.json`, kept in GX's own
JSON (`ExpectationSuite.to_json_dict()` without ids) so GX Data Docs and GX tooling read them
unchanged. One suite per type covers all its versions: frames are built with the latest
contract's columns, so a v1 row simply has nulls in columns added later (GX column-map
expectations skip nulls).

GX costs ~45 ms per `validate()` whatever the size (platform facts), so validate whole
batches, never single events. The GX context cannot be pickled: build `SuiteValidator` once
per worker (`DoFn.setup`).

Row-level failures come from `result_format=COMPLETE` (`unexpected_index_list`). A failing
expectation without row indices (table-level) is reported in `BatchResult.outcomes` and
does not reject single rows.

    uv run python -c "from tidegate.expectations.suites import load_suite; \
        print(load_suite('tidegate/expectations/contracts/shop.order.placed/suite.json'))"
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from tidegate.errors import ConfigError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.native import NativeSuite, compile_suite
from tidegate.expectations.native import engine as native_engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleFailure:
    """One failed rule for one event: where it was checked, which rule, which field, why."""

    stage: str  # envelope | contract | expectations
    rule: str
    field: str | None
    message: str

    def as_dict(self) -> dict[str, str | None]:
        return {"stage": self.stage, "rule": self.rule, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result over a batch (what lands in the _quality table later)."""

    event_type: str
    expectation: str
    column: str | None
    success: bool
    element_count: int
    unexpected_count: int

    @property
    def unexpected_percent(self) -> float:
        return 100.0 * self.unexpected_count / self.element_count if self.element_count else 0.0


@dataclass
class BatchResult:
    row_failures: dict[int, list[RuleFailure]] = field(default_factory=dict)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)


def load_suite_dict(path: Path | str) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"expectation suite {p} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or "expectations" not in doc:
        raise ConfigError(f"expectation suite {p} is not a GX suite (no 'expectations')")
    return doc


def load_suite(path: Path | str) -> Any:
    """Load a suite file into a GX ExpectationSuite (validates every expectation's config)."""
    # GX takes seconds to import: loaded only where a suite runs through it
    from great_expectations.core import (
        ExpectationSuite,
    )

    doc = load_suite_dict(path)
    doc.pop("id", None)
    for e in doc.get("expectations", []):
        e.pop("id", None)
    try:
        return ExpectationSuite(**doc)
    except Exception as exc:  # noqa: BLE001 - GX raises many types for a bad config
        raise ConfigError(f"expectation suite {path} is invalid: {exc}") from None


def suite_fingerprint(path: Path | str) -> str:
    """SHA-256 of the suite's canonical JSON: which rules a batch was checked with."""
    doc = load_suite_dict(path)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _silence_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _number(value: Any) -> Any:
    """1000000.0 -> 1000000 (GX hands bounds back as floats; the suite says 1000000)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(config: Any, result: dict[str, Any], pii: bool) -> str:
    kw = config.kwargs
    column = kw.get("column")
    etype = config.type
    if etype == "expect_column_values_to_be_between":
        rule = f"not between {_number(kw.get('min_value'))} and {_number(kw.get('max_value'))}"
    elif etype == "expect_column_values_to_be_in_set":
        values = list(kw.get("value_set") or [])
        shown = ", ".join(map(str, values[:12])) + (" ..." if len(values) > 12 else "")
        rule = f"not in the allowed set ({shown})"
    elif etype == "expect_column_values_to_match_regex":
        rule = f"does not match {kw.get('regex')}"
    elif etype == "expect_column_values_to_not_be_null":
        rule = "is null"
    else:
        rule = f"fails {etype}"
    return f"{column}: value {rule}" + (" (value withheld: PII)" if pii else "")


class SuiteValidator:
    """Validates batches of typed records against each event type's GX suite.

    Build once per worker; `validate()` is thread-compatible but not thread-safe.
    """

    def __init__(self, registry: ContractRegistry, engine: str | None = None) -> None:
        """`engine`: `native` evaluates each suite that `tidegate.expectations.native` can compile without
        GX's machinery (the rest on GX); `gx` runs GX for every suite. Default: $TIDEGATE_EXPECTATIONS_ENGINE
        or `native`. GX itself (import, context) is only built when a suite needs it."""
        self._registry = registry
        self.engine = engine or native_engine()
        self._native: dict[str, NativeSuite] = {}
        self._gx_types: list[str] = []
        self._suites: dict[str, Any] = {}
        self._batch_defs: dict[str, Any] = {}
        self._context: Any = None
        self.fingerprints: dict[str, str] = {}
        for event_type, contracts in registry.types.items():
            if contracts.suite_path is None:
                continue
            self.fingerprints[event_type] = suite_fingerprint(contracts.suite_path)
            compiled = (
                compile_suite(load_suite_dict(contracts.suite_path)) if self.engine == "native" else None
            )
            if compiled is not None:
                self._native[event_type] = compiled
            else:
                self._gx_types.append(event_type)
        if self._gx_types:
            self._build_gx()

    def _build_gx(self) -> None:
        _silence_gx()
        # GX takes seconds to import: loaded only where a suite runs through it
        import great_expectations as gx

        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = {"globally": False}
        source = self._context.data_sources.add_pandas("tidegate")
        for event_type in self._gx_types:
            path = self._registry.types[event_type].suite_path
            assert path is not None
            self._suites[event_type] = load_suite(path)
            asset = source.add_dataframe_asset(event_type)
            self._batch_defs[event_type] = asset.add_batch_definition_whole_dataframe("batch")

    def engine_of(self, event_type: str) -> str:
        """Which engine validates this type's suite: `native` or `gx` (None: no suite)."""
        return "native" if event_type in self._native else "gx"

    def frame(self, event_type: str, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """A pandas frame for GX: latest contract's columns, decimals as floats."""
        names = self._registry.latest(event_type).field_names
        if not records:
            return pd.DataFrame({name: [] for name in names})
        # one pass over the records, then columns by zip (C): a pass per column walked the
        # batch's scattered records once per field
        columns: dict[str, Any] = {}
        for name, values in zip(
            names, zip(*(tuple(map(r.get, names)) for r in records), strict=True), strict=True
        ):
            if Decimal in set(map(type, values)):  # a decimal column (in any record's version)
                values = tuple(None if v is None else float(v) for v in values)
            columns[name] = values
        return pd.DataFrame(columns)

    def validate(self, event_type: str, records: Sequence[dict[str, Any]]) -> BatchResult:
        """Two passes: every expectation pass/fail first (GX's cheapest result format, ~half
        the cost of COMPLETE), then COMPLETE only for the expectations that failed, to get the
        rows that broke them. Most batches fail one or two rules, or none."""
        if event_type in self._native:
            return self._validate_native(event_type, records)
        # GX takes seconds to import: loaded only where a suite runs through it
        from great_expectations.core import (
            ExpectationSuite,
        )

        suite = self._suites.get(event_type)
        if suite is None or not records:
            return BatchResult()
        df = self.frame(event_type, records)
        batch = self._batch_defs[event_type].get_batch(batch_parameters={"dataframe": df})
        quick = batch.validate(suite, result_format={"result_format": "BOOLEAN_ONLY"})
        self._raise_on_exceptions(event_type, quick.results)
        failing = [r.expectation_config for r in quick.results if not r.success]
        detailed: list[Any] = []
        if failing:
            sub = ExpectationSuite(
                name=f"{event_type}.failing", expectations=[c.to_domain_obj() for c in failing]
            )
            detailed = batch.validate(sub, result_format={"result_format": "COMPLETE"}).results
            self._raise_on_exceptions(event_type, detailed)
        pii = self._registry.latest(event_type).pii_fields
        out = BatchResult()
        for r in quick.results:
            if r.success:
                config = r.expectation_config
                out.outcomes.append(
                    ExpectationOutcome(event_type, config.type, config.kwargs.get("column"), True, len(df), 0)
                )
        for r in detailed:
            config = r.expectation_config
            column = config.kwargs.get("column")
            result = r.result or {}
            out.outcomes.append(
                ExpectationOutcome(
                    event_type=event_type,
                    expectation=config.type,
                    column=column,
                    success=bool(r.success),
                    element_count=int(result.get("element_count") or len(df)),
                    unexpected_count=int(result.get("unexpected_count") or 0),
                )
            )
            indices = result.get("unexpected_index_list")
            if r.success or not indices:
                continue
            message = _describe(config, result, column in pii)
            failure = RuleFailure("expectations", config.type, column, message)
            for idx in indices:
                row = int(idx) if not isinstance(idx, dict) else int(next(iter(idx.values())))
                out.row_failures.setdefault(row, []).append(failure)
        return out

    def _validate_native(self, event_type: str, records: Sequence[dict[str, Any]]) -> BatchResult:
        """The same result as the GX path (outcomes in the same order: passed, then failed;
        row failures for failed expectations only), from `tidegate.expectations.native`."""
        out = BatchResult()
        if not records:
            return out
        df = self.frame(event_type, records)
        try:
            results = self._native[event_type].evaluate(df)
        except (TypeError, ValueError) as exc:  # GX reports these as the expectation raising
            raise ConfigError(f"suite for {event_type} raised: {exc}") from None
        pii = self._registry.latest(event_type).pii_fields
        for r in results:
            if r.success:
                out.outcomes.append(
                    ExpectationOutcome(event_type, r.type, r.kwargs.get("column"), True, len(df), 0)
                )
        for r in results:
            if r.success:
                continue
            column = r.kwargs.get("column")
            out.outcomes.append(
                ExpectationOutcome(event_type, r.type, column, False, r.element_count, r.unexpected_count)
            )
            if not r.unexpected_index_list:
                continue
            failure = RuleFailure("expectations", r.type, column, _describe(r, {}, column in pii))
            for row in r.unexpected_index_list:
                out.row_failures.setdefault(row, []).append(failure)
        return out

    @staticmethod
    def _raise_on_exceptions(event_type: str, results: Sequence[Any]) -> None:
        for r in results:
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise ConfigError(
                    f"suite for {event_type}: {r.expectation_config.type} on "
                    f"{r.expectation_config.kwargs.get('column')!r} raised: {r.exception_info.get('exception_message')}"
                )
