"""GX suites evaluated without GX's metric graph: the same pandas operations, a fraction of the cost.

    suite = compile_suite(load_suite_dict("tidegate/expectations/contracts/shop.order.placed/suite.json"))
    results = suite.evaluate(frame)      # -> [NativeResult], one per expectation, in suite order

Why: Great Expectations spends ~45-150 ms per `validate()` in its metric-graph machinery
(building configurations, resolving metric dependencies), whatever the batch size; pandas' own
work for these rules is ~1 ms. At 2k events/s over three event types that fixed cost was the
largest stage of a micro-batch, and GX's import and context ~2.6 s of a cold start.

What: the suite files stay GX suites (`suite.json`, GX's own JSON: Data Docs and GX tooling
read them unchanged). For the expectation types below, with only the kwargs below, the
validator evaluates them here with GX's pandas semantics, line for line:

| expectation | GX pandas condition (metric) | kwargs |
|---|---|---|
| `expect_column_values_to_match_regex` | `column.astype(str).str.contains(regex)` | column, regex, mostly |
| `expect_column_values_to_be_in_set` | `column.isin(value_set)` | column, value_set, mostly |
| `expect_column_values_to_be_between` | `min <= v <= max` (strict_min / strict_max: `<`) | column, min_value, max_value, strict_min, strict_max, mostly |

As in GX's column-map expectations, nulls are outside the domain (never unexpected), a
column the frame lacks fails the expectation without naming rows,
`element_count` is every row, success is `unexpected == 0`, or with `mostly`
`(nonnull - unexpected) / nonnull >= mostly`. Any other expectation type or kwarg (a
`row_condition`, say) makes the whole suite run on GX, as before: `compile_suite` returns None.
`TIDEGATE_EXPECTATIONS_ENGINE=gx` forces GX everywhere. `tests/test_validation.py` holds both
engines equal on the shipped suites with every fault the producer makes and on edge values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

ENGINE_ENV = "TIDEGATE_EXPECTATIONS_ENGINE"

_COMMON = {"column", "mostly", "result_format", "catch_exceptions", "meta"}
_KWARGS = {
    "expect_column_values_to_match_regex": _COMMON | {"regex"},
    "expect_column_values_to_be_in_set": _COMMON | {"value_set"},
    "expect_column_values_to_be_between": _COMMON | {"min_value", "max_value", "strict_min", "strict_max"},
}


def engine() -> str:
    """`native` (default: compiled where the suite allows, GX otherwise) or `gx`."""
    value = os.environ.get(ENGINE_ENV, "native").strip().lower() or "native"
    return value if value in ("native", "gx") else "native"


@dataclass(frozen=True)
class NativeResult:
    """One expectation over a frame, as GX reports it (the fields tidegate reads)."""

    type: str
    kwargs: dict[str, Any]
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_index_list: list[int]


@dataclass(frozen=True)
class NativeExpectation:
    type: str
    kwargs: dict[str, Any]
    condition: Callable[[pd.Series], pd.Series]  # non-null values -> True where expected

    def evaluate(self, frame: pd.DataFrame) -> NativeResult:
        if self.kwargs["column"] not in frame.columns:
            # GX: the metric raises inside the validation, the expectation fails, no rows named
            return NativeResult(self.type, self.kwargs, False, len(frame), 0, [])
        column = frame[self.kwargs["column"]]
        nonnull = column[~column.isnull()]
        ok = self.condition(nonnull).to_numpy(dtype=bool) if len(nonnull) else []
        unexpected = [int(i) for i, good in zip(nonnull.index, ok, strict=True) if not good]
        mostly = self.kwargs.get("mostly")
        if mostly is None:
            success = not unexpected
        else:
            success = not len(nonnull) or (len(nonnull) - len(unexpected)) / len(nonnull) >= mostly
        return NativeResult(self.type, self.kwargs, bool(success), len(frame), len(unexpected), unexpected)


@dataclass(frozen=True)
class NativeSuite:
    expectations: tuple[NativeExpectation, ...]

    def evaluate(self, frame: pd.DataFrame) -> list[NativeResult]:
        return [e.evaluate(frame) for e in self.expectations]


def _regex(kwargs: dict[str, Any]) -> Callable[[pd.Series], pd.Series]:
    pattern = re.compile(kwargs["regex"])  # a bad pattern fails here, when the suite loads
    return lambda col: col.astype(str).str.contains(pattern)


def _in_set(kwargs: dict[str, Any]) -> Callable[[pd.Series], pd.Series]:
    values = list(kwargs["value_set"])
    return lambda col: col.isin(values)


def _between(kwargs: dict[str, Any]) -> Callable[[pd.Series], pd.Series]:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    strict_low, strict_high = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))
    if low is None and high is None:
        raise ValueError("min_value and max_value cannot both be None")
    if low is not None and high is not None and low > high:
        raise ValueError("min_value cannot be greater than max_value")

    def one(v: Any) -> bool:
        if isinstance(v, str) != isinstance(low if low is not None else high, str):
            raise TypeError(
                "Column values, min_value, and max_value must either be None or of the same type."
            )
        above = low is None or (v > low if strict_low else v >= low)
        below = high is None or (v < high if strict_high else v <= high)
        return bool(above and below)

    def vectorized(col: pd.Series, lo: Any, hi: Any) -> pd.Series:
        above = True if lo is None else (col > lo if strict_low else col >= lo)
        below = True if hi is None else (col < hi if strict_high else col <= hi)
        return pd.Series(above & below, index=col.index)

    def condition(col: pd.Series) -> pd.Series:
        if pd.api.types.is_datetime64_any_dtype(col.dtype):  # GX parses string bounds here
            return vectorized(col, _timestamp(low), _timestamp(high))
        if col.dtype in (int, float):  # GX's own test for its vectorized path
            return vectorized(col, low, high)
        return col.map(one)

    return condition


def _timestamp(bound: Any) -> Any:
    return pd.Timestamp(bound) if isinstance(bound, str) else bound


_BUILDERS: dict[str, Callable[[dict[str, Any]], Callable[[pd.Series], pd.Series]]] = {
    "expect_column_values_to_match_regex": _regex,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_between": _between,
}


def compile_suite(doc: dict[str, Any]) -> NativeSuite | None:
    """The suite's expectations as native checks, or None if any needs GX itself."""
    out = []
    for e in doc.get("expectations", []):
        etype, kwargs = e.get("type"), dict(e.get("kwargs") or {})
        allowed = _KWARGS.get(str(etype))
        if allowed is None or not set(kwargs) <= allowed or "column" not in kwargs:
            return None
        if kwargs.get("result_format") not in (None,) or kwargs.get("catch_exceptions") not in (None,):
            return None
        try:
            condition = _BUILDERS[str(etype)](kwargs)
        except (KeyError, ValueError, TypeError, re.error):
            return None  # let GX say what is wrong with it
        out.append(NativeExpectation(str(etype), kwargs, condition))
    return NativeSuite(tuple(out))
