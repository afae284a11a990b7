"""Checking a decoded JSON payload against an Avro schema: each schema compiles once into a
coercer (`compile_schema`) that returns typed Python values (Decimal, aware datetime, ...) or
raises ContractViolation with every violated rule (`missing_required_field`, `wrong_type`,
`unexpected_field`, `invalid_enum_symbol`). Every value is checked against its column's range
too, so whatever passes is representable in the raw Delta table. tidegate.expectations.contracts
loads the schemas and holds the registry.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from tidegate.errors import ConfigError, TerminalError

if TYPE_CHECKING:
    pass

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = 3.4028234663852886e38
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Every timestamp the lake stores is an aware datetime in UTC: years 0001 to 9999. A timestamp
# column (int64 microseconds) could hold more, but nothing in Python could read it back.
TIMESTAMP_RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
_TS_MIN = datetime.min.replace(tzinfo=UTC)
_TS_MAX = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Violation:
    """One broken contract rule: which rule, at which field path, and why."""

    rule: str
    field: str | None
    message: str

    def as_dict(self) -> dict[str, str | None]:
        return {"rule": self.rule, "field": self.field, "message": self.message}


class ContractViolation(TerminalError):
    """The payload breaks its contract: every violated rule, not just the first."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(v.message for v in violations))
        self.violations = violations


class _Bad(Exception):
    """Internal: one value failed; carries the rule name."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


Coercer = Callable[[Any, str, list[Violation]], Any]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(_describe(s) for s in schema)
    logical = schema.get("logicalType")
    if logical == "decimal":
        return f"decimal({schema.get('precision')},{schema.get('scale', 0)})"
    if logical:
        return str(logical)
    t = schema.get("type")
    if t == "enum":
        return "enum{" + ",".join(schema["symbols"]) + "}"
    if t == "array":
        return f"array<{_describe(schema['items'])}>"
    if t == "map":
        return f"map<{_describe(schema['values'])}>"
    return str(schema.get("name") or t)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (`T`/`Z` in either case); it must carry a zone. Returns an
    aware UTC datetime.

    Raises ValueError, also for a legal timestamp whose UTC instant falls outside years
    0001-9999 (`0001-01-01T00:00:00+01:00` is in year 0 in UTC)."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise ValueError(f"{_short(text)} is not an RFC 3339 timestamp (e.g. 2026-11-26T10:15:00Z)")
    try:
        dt = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case t and z
    except ValueError:
        raise ValueError(f"{_short(text)} is not an RFC 3339 timestamp (e.g. 2026-11-26T10:15:00Z)") from None
    if dt.tzinfo is None:
        raise ValueError(f"{_short(text)} has no time zone offset (add Z or +01:00)")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{_short(text)} is outside the storable range ({TIMESTAMP_RANGE})") from None


# --------------------------------------------------------------------------------------
# Compiling an Avro schema into a plain-JSON coercer
# --------------------------------------------------------------------------------------


def _scalar(check: Callable[[Any], Any], expected: str) -> Coercer:
    def coerce(value: Any, path: str, out: list[Violation]) -> Any:
        try:
            return check(value)
        except _Bad as bad:
            out.append(Violation(bad.rule, path or None, f"{path or 'payload'}: {bad.message}"))
            return None

    return coerce


def _wrong(value: Any, expected: str) -> _Bad:
    return _Bad("wrong_type", f"expected {expected}, got {_type_name(value)} {_short(value)}")


def _short(value: Any) -> str:
    """At most 40 characters of a value, for messages (a payload value may be megabytes)."""
    if isinstance(value, str):
        text = repr(value[:40])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        text = f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_check(lo: int, hi: int, expected: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _wrong(v, expected)
        if not lo <= v <= hi:
            raise _Bad("wrong_type", f"{_short(v)} does not fit in {expected}")
        return v

    return check


def _float_check(limit: float, expected: str) -> Callable[[Any], float]:
    """float (32-bit) or double: finite, and small enough for its column (pyarrow would
    silently turn 1e308 into inf in a float32 column)."""

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _wrong(v, "number")
        try:
            f = float(v)
        except OverflowError:  # an integer beyond 1.8e308
            raise _Bad("wrong_type", f"{_short(v)} does not fit in {expected}") from None
        if math.isnan(f) or math.isinf(f):
            raise _Bad("wrong_type", f"{_short(v)} is not a finite number")
        if abs(f) > limit:
            raise _Bad("wrong_type", f"{_short(v)} does not fit in {expected}")
        return f

    return check


def _decimal_check(precision: int, scale: int) -> Callable[[Any], Decimal]:
    expected = f'decimal({precision},{scale}) as a string like "12.30" or a number'
    quantum = Decimal(1).scaleb(-scale)
    # Room for every value that passes the magnitude check below, rounding carry included: the
    # default context (28 digits) would raise InvalidOperation on decimal(38, s) or on 1e400.
    context = Context(prec=precision + 1)

    def check(v: Any) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise _wrong(v, expected)
        try:
            d = Decimal(str(v)) if isinstance(v, float) else Decimal(v)
        except InvalidOperation:
            raise _wrong(v, expected) from None
        if not d.is_finite():
            raise _wrong(v, expected)
        if d and d.adjusted() >= precision - scale:
            raise _Bad(
                "wrong_type",
                f"{_short(v)} has more than {precision} digits: decimal({precision},{scale}) "
                f"holds at most {precision - scale} before the point",
            )
        exponent = d.as_tuple().exponent
        quantized = d.quantize(quantum, context=context)
        if isinstance(exponent, int) and -exponent > scale and d != quantized:
            raise _Bad("wrong_type", f"{_short(v)} has more than {scale} decimal places")
        return quantized

    return check


def _timestamp_check(unit: str) -> Callable[[Any], datetime]:
    step = timedelta(milliseconds=1) if unit == "ms" else timedelta(microseconds=1)
    lo, hi = (_TS_MIN - _EPOCH) // step, (_TS_MAX - _EPOCH) // step

    def check(v: Any) -> datetime:
        if isinstance(v, str):
            try:
                return parse_rfc3339(v)
            except ValueError as exc:
                raise _Bad("wrong_type", str(exc)) from None
        if isinstance(v, int) and not isinstance(v, bool):
            if not lo <= v <= hi:
                raise _Bad(
                    "wrong_type",
                    f"{_short(v)} (epoch {unit}) is outside the storable range ({TIMESTAMP_RANGE})",
                )
            return _EPOCH + v * step
        raise _wrong(v, "an RFC 3339 timestamp string")

    return check


def _date_check(v: Any) -> date:
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            raise _Bad("wrong_type", f"{v!r} is not a date like 2026-11-26") from None
    raise _wrong(v, "a date string like 2026-11-26")


def _string_check(v: Any) -> str:
    if not isinstance(v, str):
        raise _wrong(v, "string")
    return v


def _uuid_check(v: Any) -> str:
    if not isinstance(v, str):
        raise _wrong(v, "uuid string")
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise _Bad("wrong_type", f"{v!r} is not a UUID") from None


def _bool_check(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _wrong(v, "boolean")
    return v


def _bytes_check(v: Any) -> bytes:
    if not isinstance(v, str):
        raise _wrong(v, "base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except ValueError:
        raise _Bad("wrong_type", "not valid base64") from None


_STRING = _scalar(_string_check, "string")  # one shared coercer: compile_record knows it by identity


def _null_check(v: Any) -> None:
    if v is not None:
        raise _wrong(v, "null")
    return None


def _compile(schema: Any, named: dict[str, Any]) -> Coercer:
    if isinstance(schema, str):
        if schema in named:
            return _compile(named[schema], named)
        schema = {"type": schema}
    if isinstance(schema, list):
        return _compile_union(schema, named)
    t = schema["type"]
    logical = schema.get("logicalType")
    if isinstance(t, dict | list):
        return _compile(t, named)
    if logical == "decimal":
        return _scalar(_decimal_check(schema["precision"], schema.get("scale", 0)), "decimal")
    if logical in ("timestamp-millis", "local-timestamp-millis"):
        return _scalar(_timestamp_check("ms"), "timestamp")
    if logical in ("timestamp-micros", "local-timestamp-micros"):
        return _scalar(_timestamp_check("us"), "timestamp")
    if logical == "date":
        return _scalar(_date_check, "date")
    if logical == "uuid":
        return _scalar(_uuid_check, "uuid")
    simple: dict[str, Callable[[Any], Any]] = {
        "null": _null_check,
        "boolean": _bool_check,
        "int": _int_check(*INT32, "int (32-bit integer)"),
        "long": _int_check(*INT64, "long (64-bit integer)"),
        "float": _float_check(FLOAT32_MAX, "float (32-bit)"),
        "double": _float_check(sys.float_info.max, "double"),
        "string": _string_check,
        "bytes": _bytes_check,
        "fixed": _bytes_check,
    }
    if t == "string":
        return _STRING
    if t in simple:
        return _scalar(simple[t], t)
    if t == "enum":
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        symbols = frozenset(schema["symbols"])
        listed = ", ".join(schema["symbols"])

        def enum_check(v: Any) -> str:
            if not isinstance(v, str):
                raise _wrong(v, f"one of {listed}")
            if v not in symbols:
                raise _Bad("invalid_enum_symbol", f"{v!r} is not one of {listed}")
            return v

        return _scalar(enum_check, "enum")
    if t == "array":
        item = _compile(schema["items"], named)

        def coerce_array(value: Any, path: str, out: list[Violation]) -> Any:
            if not isinstance(value, list):
                out.append(
                    Violation("wrong_type", path or None, f"{path}: expected array, got {_type_name(value)}")
                )
                return None
            return [item(v, f"{path}[{i}]", out) for i, v in enumerate(value)]

        return coerce_array
    if t == "map":
        val = _compile(schema["values"], named)

        def coerce_map(value: Any, path: str, out: list[Violation]) -> Any:
            if not isinstance(value, dict):
                out.append(
                    Violation("wrong_type", path or None, f"{path}: expected object, got {_type_name(value)}")
                )
                return None
            return [(k, val(v, f"{path}.{k}", out)) for k, v in value.items()]

        return coerce_map
    if t == "record":
        return compile_record(schema, named)
    raise ConfigError(f"unsupported Avro type {t!r}")


def _compile_union(branches: list[Any], named: dict[str, Any]) -> Coercer:
    nullable = any(b == "null" or (isinstance(b, dict) and b.get("type") == "null") for b in branches)
    others = [b for b in branches if not (b == "null" or (isinstance(b, dict) and b.get("type") == "null"))]
    compiled = [_compile(b, named) for b in others]
    expected = " | ".join(_describe(b) for b in branches)

    def coerce(value: Any, path: str, out: list[Violation]) -> Any:
        if value is None:
            if nullable:
                return None
            out.append(Violation("wrong_type", path or None, f"{path}: expected {expected}, got null"))
            return None
        first_errors: list[Violation] = []
        for c in compiled:
            errs: list[Violation] = []
            result = c(value, path, errs)
            if not errs:
                return result
            first_errors = first_errors or errs
        out.extend(
            first_errors
            if len(compiled) == 1
            else [
                Violation(
                    "wrong_type",
                    path or None,
                    f"{path}: expected {expected}, got {_type_name(value)} {_short(value)}",
                )
            ]
        )
        return None

    return coerce


def _private(coerce: Coercer, expected: str) -> Coercer:
    """A PII field's coercer: its violations name the field and the problem, never the value
    (a rejection reason is read by people who may not see personal data)."""

    def coerce_private(value: Any, path: str, out: list[Violation]) -> Any:
        errs: list[Violation] = []
        result = coerce(value, path, errs)
        for v in errs:
            what = (
                f"expected {expected}, got {_type_name(value)}"
                if v.rule == "wrong_type"
                else v.rule.replace("_", " ")
            )
            out.append(Violation(v.rule, v.field, f"{path}: {what} (personal data: the value is not shown)"))
        return result

    return coerce_private


def compile_record(schema: dict[str, Any], named: dict[str, Any]) -> Coercer:
    name = schema["name"]
    named[name] = schema
    if "namespace" in schema:
        named[f"{schema['namespace']}.{name}"] = schema
    fields: list[tuple[str, Coercer, bool, Any]] = []
    for f in schema["fields"]:
        has_default = "default" in f
        coercer = _compile(f["type"], named)
        if f.get("pii"):
            coercer = _private(coercer, _describe(f["type"]))
        fields.append((f["name"], coercer, has_default, f.get("default")))
    known = frozenset(f[0] for f in fields)

    def coerce_record(value: Any, path: str, out: list[Violation]) -> Any:
        where = path or "payload"
        if not isinstance(value, dict):
            out.append(
                Violation(
                    "wrong_type", path or None, f"{where}: expected a JSON object, got {_type_name(value)}"
                )
            )
            return None
        result: dict[str, Any] = {}
        for fname, coerce, has_default, default in fields:
            if fname in value:
                v = value[fname]
                if coerce is _STRING and v.__class__ is str:  # the commonest field, checked inline
                    result[fname] = v
                else:
                    result[fname] = coerce(v, f"{path}.{fname}" if path else fname, out)
            elif has_default:
                result[fname] = default
            else:
                fpath = f"{path}.{fname}" if path else fname
                out.append(Violation("missing_required_field", fpath, f"{fpath}: required field is missing"))
        extra = [k for k in value if k not in known]
        for k in extra:
            kpath = f"{path}.{k}" if path else k
            out.append(Violation("unexpected_field", kpath, f"{kpath}: field is not in the contract"))
        return result

    return coerce_record
