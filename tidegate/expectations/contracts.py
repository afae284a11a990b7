"""Versioned payload contracts: Avro schemas, one file per event type and version.

Layout (the catalog's `contracts` directory):

    tidegate/expectations/contracts/shop.order.placed/v1.avsc    # Avro record schema, version 1
    tidegate/expectations/contracts/shop.order.placed/v2.avsc    # version 2 (additive, optional field)
    tidegate/expectations/contracts/shop.order.placed/suite.json # GX suite: value rules (ranges, sets)

Contracts are Avro because Pub/Sub speaks Avro for topic schemas, but payloads arrive as
*plain* JSON (not Avro's JSON encoding: no `{"string": ...}` union wrappers), so each schema is
compiled once (tidegate.expectations.coercion) into a checker that turns a decoded JSON value into typed Python
values (Decimal, aware datetime, ...) or a list of precise violations
(`missing_required_field`, `wrong_type`, `unexpected_field`, ...). The Arrow/Delta schema is
derived from the same Avro schema, so the lake's column types can never drift from the
contract.

Field-level extras understood here: `"pii": true` marks a field to tokenize before it lands.

    uv run python -c "from tidegate.expectations.contracts import ContractRegistry; \
        from tidegate.catalog import load_catalog; \
        print(ContractRegistry.from_catalog(load_catalog()).latest('shop.order.placed').arrow_schema)"
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import fastavro.schema
import pyarrow as pa

from tidegate.errors import ConfigError
from tidegate.expectations.coercion import Coercer, ContractViolation, Violation, compile_record

if TYPE_CHECKING:
    from tidegate.catalog import Catalog

_VERSION_FILE_RE = re.compile(r"^v(\d+)\.avsc$")
# ce-dataschema ends in the contract version: "urn:tidegate:contract:shop.order.placed:v2",
# ".../shop.order.placed/v2.avsc" and ".../v2" all name version 2.
# At most 9 digits: a version always fits the int32 schema_version column (a longer number names
# no version: unknown_version).
_DATASCHEMA_VERSION_RE = re.compile(r"(?:^|[/:])v(\d{1,9})(?:\.avsc)?$")


def dataschema_uri(event_type: str, version: int) -> str:
    """The ce-dataschema tidegate's producer sends (any URI ending in v<N> works)."""
    return f"urn:tidegate:contract:{event_type}:v{version}"


@functools.lru_cache(maxsize=4096)  # a stream sends a handful of distinct values: parse each once
def version_from_dataschema(dataschema: str) -> int | None:
    m = _DATASCHEMA_VERSION_RE.search(dataschema.strip())
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# Avro -> Arrow (and so Delta) types
# --------------------------------------------------------------------------------------


def avro_to_arrow(schema: Any, named: dict[str, Any] | None = None) -> tuple[pa.DataType, bool]:
    """Map an Avro type to (Arrow type, nullable).

    Timestamps become microsecond UTC timestamps (Delta's only timestamp precision), decimals
    keep precision and scale, enums become strings, `["null", X]` becomes a nullable X.
    """
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in named:
            return avro_to_arrow(named[schema], named)
        schema = {"type": schema}
    if isinstance(schema, list):
        non_null = [
            b for b in schema if b != "null" and not (isinstance(b, dict) and b.get("type") == "null")
        ]
        if len(non_null) != 1:
            raise ConfigError(f'union {schema!r} is not supported in contracts: use ["null", <type>] only')
        t, _ = avro_to_arrow(non_null[0], named)
        return t, len(non_null) != len(schema)
    t = schema["type"]
    if isinstance(t, dict | list):
        return avro_to_arrow(t, named)
    logical = schema.get("logicalType")
    if logical == "decimal":
        return pa.decimal128(schema["precision"], schema.get("scale", 0)), False
    if logical in ("timestamp-millis", "timestamp-micros"):
        return pa.timestamp("us", tz="UTC"), False
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return pa.timestamp("us"), False
    if logical == "date":
        return pa.date32(), False
    if logical == "uuid":
        return pa.string(), False
    primitive = {
        "boolean": pa.bool_(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "string": pa.string(),
        "bytes": pa.binary(),
        "fixed": pa.binary(),
        "enum": pa.string(),
    }
    if t in primitive:
        if t in ("enum", "fixed"):
            named[schema["name"]] = schema
        return primitive[t], False
    if t == "array":
        item, item_null = avro_to_arrow(schema["items"], named)
        return pa.list_(pa.field("element", item, nullable=item_null)), False
    if t == "map":
        val, val_null = avro_to_arrow(schema["values"], named)
        return pa.map_(pa.string(), pa.field("value", val, nullable=val_null)), False
    if t == "record":
        named[schema["name"]] = schema
        return pa.struct([_arrow_field(f, named) for f in schema["fields"]]), False
    raise ConfigError(f"unsupported Avro type {t!r}")


def _arrow_field(f: dict[str, Any], named: dict[str, Any]) -> pa.Field:
    t, nullable = avro_to_arrow(f["type"], named)
    meta = {}
    if f.get("doc"):
        meta["doc"] = str(f["doc"])
    if f.get("pii"):
        meta["pii"] = "true"
    return pa.field(f["name"], t, nullable=nullable, metadata=meta or None)


# --------------------------------------------------------------------------------------
# Contracts and the registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """One version of one event type's payload contract."""

    event_type: str
    version: int
    schema: dict[str, Any]
    path: Path

    @cached_property
    def parsed(self) -> Any:
        """fastavro's parsed schema (also validates the schema itself)."""
        return fastavro.parse_schema(json.loads(json.dumps(self.schema)))

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the Avro Parsing Canonical Form: the same schema, the same print."""
        canonical = fastavro.schema.to_parsing_canonical_form(self.parsed)
        return str(fastavro.schema.fingerprint(canonical, "SHA-256"))

    @cached_property
    def _coercer(self) -> Coercer:
        return compile_record(self.schema, {})

    @cached_property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.schema["fields"]]

    @cached_property
    def pii_fields(self) -> frozenset[str]:
        return frozenset(self.pii_classes)

    @cached_property
    def pii_classes(self) -> dict[str, str]:
        """PII field -> token class: `"pii": true` is the field's own class, `"pii": "email"`
        a shared one (tokens of one class join across fields and tables)."""
        return {
            f["name"]: (f["pii"] if isinstance(f["pii"], str) else f["name"])
            for f in self.schema["fields"]
            if f.get("pii")
        }

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        named: dict[str, Any] = {}
        return pa.schema([_arrow_field(f, named) for f in self.schema["fields"]])

    @property
    def dataschema(self) -> str:
        return dataschema_uri(self.event_type, self.version)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the definition, not the compiled closures cached on the instance.
        return (Contract, (self.event_type, self.version, self.schema, self.path))

    def coerce(self, data: Any) -> dict[str, Any]:
        """Check a decoded JSON payload and return it typed; raise ContractViolation."""
        violations: list[Violation] = []
        record = self._coercer(data, "", violations)
        if violations:
            raise ContractViolation(violations)
        return record  # type: ignore[no-any-return]


@dataclass(frozen=True)
class EventTypeContracts:
    event_type: str
    versions: dict[int, Contract]
    suite_path: Path | None

    @property
    def latest(self) -> Contract:
        return self.versions[max(self.versions)]


@dataclass
class ContractRegistry:
    """All versions of every event type the catalog declares."""

    types: dict[str, EventTypeContracts] = field(default_factory=dict)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ContractRegistry:
        return cls.from_directory(catalog.contracts_dir, catalog.event_types)

    @classmethod
    def from_directory(cls, root: Path, event_types: Iterable[str]) -> ContractRegistry:
        reg = cls()
        for event_type in event_types:
            reg.types[event_type] = load_event_type(root / event_type, event_type)
        return reg

    def get(self, event_type: str, version: int) -> Contract | None:
        t = self.types.get(event_type)
        return None if t is None else t.versions.get(version)

    def latest(self, event_type: str) -> Contract:
        return self.types[event_type].latest

    def versions(self, event_type: str) -> list[int]:
        return sorted(self.types[event_type].versions)


_PII_CLASS_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_SCALARS = {"string", "int", "long", "float", "double", "boolean"}


def _check_pii_marks(schema: dict[str, Any], path: Path) -> None:
    """`"pii"` is `true` or a class name, on a top-level scalar field (a string, a number, or
    a nullable one): the value is replaced by a token string, whole."""
    for f in schema.get("fields", []):
        mark = f.get("pii")
        if mark in (None, False):
            nested = f.get("type")
            if isinstance(nested, dict) and nested.get("type") == "record" and _any_pii(nested):
                raise ConfigError(
                    f"contract {path}: field {f.get('name')!r} holds a record with a field marked pii",
                    hint="mark PII on top-level fields only (a token replaces the whole value)",
                )
            continue
        if not (mark is True or (isinstance(mark, str) and _PII_CLASS_RE.fullmatch(mark))):
            raise ConfigError(
                f"contract {path}: field {f.get('name')!r} has pii {mark!r}",
                hint='use "pii": true (the field is its own class) or "pii": "<class>", e.g. "email"',
            )
        t = f.get("type")
        branches = [b for b in (t if isinstance(t, list) else [t]) if b != "null"]
        kinds = {b if isinstance(b, str) else b.get("type") for b in branches}
        logical = any(isinstance(b, dict) and b.get("logicalType") for b in branches)
        if len(kinds) != 1 or not kinds <= _SCALARS or logical:
            raise ConfigError(
                f"contract {path}: field {f.get('name')!r} is marked pii but is not a plain string or number",
                hint="a token (a string) replaces a PII value: mark a string field, or a nullable one",
            )


def _any_pii(record: dict[str, Any]) -> bool:
    for f in record.get("fields", []):
        t = f.get("type")
        if f.get("pii") or (isinstance(t, dict) and t.get("type") == "record" and _any_pii(t)):
            return True
    return False


def load_contract(path: Path, event_type: str, version: int) -> Contract:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"contract {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ConfigError(f"contract {path} must be an Avro record schema")
    _check_pii_marks(schema, path)
    contract = Contract(event_type=event_type, version=version, schema=schema, path=path)
    try:
        contract.parsed  # noqa: B018 - parse now so a broken schema fails at load time
        contract.arrow_schema  # noqa: B018
    except (fastavro.schema.SchemaParseException, fastavro.schema.UnknownType, ConfigError) as exc:
        raise ConfigError(f"contract {path} is not a valid Avro schema: {exc}") from None
    return contract


def load_event_type(directory: Path, event_type: str) -> EventTypeContracts:
    if not directory.is_dir():
        raise ConfigError(
            f"no contracts for {event_type}: {directory} does not exist",
            hint=f"add {directory}/v1.avsc (an Avro record schema)",
        )
    versions: dict[int, Contract] = {}
    for p in sorted(directory.iterdir()):
        m = _VERSION_FILE_RE.match(p.name)
        if m:
            v = int(m.group(1))
            versions[v] = load_contract(p, event_type, v)
    if not versions:
        raise ConfigError(
            f"no contract versions for {event_type} in {directory}",
            hint="contract files are named v1.avsc, v2.avsc, ...",
        )
    expected = list(range(1, max(versions) + 1))
    if sorted(versions) != expected:
        missing = sorted(set(expected) - set(versions))
        raise ConfigError(f"{event_type}: contract versions must be 1..N without gaps; missing {missing}")
    suite = directory / "suite.json"
    return EventTypeContracts(event_type, versions, suite if suite.exists() else None)
