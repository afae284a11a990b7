"""Schema compatibility between contract versions, per the catalog's mode for each type.

The reader/writer rules are Apache Avro's own (`avro.compatibility`, the port of Java's
SchemaCompatibility). On top of them tidegate checks what Avro's resolution ignores but the
lake cannot: a field's logical type (decimal precision/scale, timestamp vs plain long) must
not change, because it is a Delta column type.

Modes (as in Confluent's schema registry):

| mode                 | new version must be able to...                        | checked against   |
|----------------------|-------------------------------------------------------|-------------------|
| BACKWARD             | read data written with the previous version           | previous version  |
| FORWARD              | be read by the previous version                       | previous version  |
| FULL                 | both                                                  | previous version  |
| *_TRANSITIVE         | the same                                              | every older version |
| NONE                 | nothing                                               | -                 |

    tidegate contracts check            # exits 1 and names type, versions, field and rule
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)

from tidegate.catalog import Compatibility
from tidegate.expectations.contracts import Contract, ContractRegistry


@dataclass(frozen=True)
class Incompatibility:
    """One rule broken between two versions of a type."""

    event_type: str
    reader_version: int
    writer_version: int
    direction: str  # "backward" (new reads old) or "forward" (old reads new)
    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.event_type}: v{self.reader_version} cannot read v{self.writer_version} "
            f"({self.direction}): field '{self.field}': {self.rule}: {self.message}"
        )


def _avro(contract: Contract) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(contract.schema))


def _logical(t: Any) -> tuple[str, Any, Any] | None:
    if isinstance(t, list):
        non_null = [b for b in t if b != "null"]
        return _logical(non_null[0]) if len(non_null) == 1 else None
    if isinstance(t, dict) and "logicalType" in t:
        return (t["logicalType"], t.get("precision"), t.get("scale", 0))
    if isinstance(t, dict) and isinstance(t.get("type"), dict | list):
        return _logical(t["type"])
    return None


def check_pair(reader: Contract, writer: Contract, direction: str) -> list[Incompatibility]:
    """Can `reader` read what `writer` wrote? Every broken rule, attributed to its field.

    Avro's checker merges the messages of a whole record into sets, so it is run per field
    (on the parsed field types, which keeps named types resolvable) to say which field breaks.
    """
    out: list[Incompatibility] = []

    def add(field_name: str, rule: str, message: str) -> None:
        out.append(
            Incompatibility(
                reader.event_type, reader.version, writer.version, direction, field_name, rule, message
            )
        )

    r_schema, w_schema = _avro(reader), _avro(writer)
    assert isinstance(r_schema, avro.schema.RecordSchema)
    assert isinstance(w_schema, avro.schema.RecordSchema)
    if not schema_name_equals(r_schema, w_schema):
        add(
            "(record)",
            "name_mismatch",
            f"record {r_schema.fullname} is not {w_schema.fullname} (add an alias)",
        )
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    raw_fields = {f["name"]: f for f in reader.schema["fields"]}
    for rf in r_schema.fields:
        wf = lookup_writer_field(writer_schema=w_schema, reader_field=rf)
        if wf is None:
            if not rf.has_default:
                add(
                    rf.name,
                    "reader_field_missing_default_value",
                    f"v{reader.version} requires '{rf.name}' (no default) but v{writer.version} "
                    "does not have it (a required field added, removed, or renamed without alias)",
                )
            continue
        result = checker.get_compatibility(rf.type, wf.type)
        if result.compatibility is SchemaCompatibilityType.incompatible:
            kinds = sorted({k.value for k in result.incompatibilities})
            add(rf.name, ",".join(kinds), "; ".join(sorted(result.messages)))
            continue
        rl = _logical(raw_fields[rf.name]["type"])
        wl = _logical(next(f["type"] for f in writer.schema["fields"] if f["name"] == wf.name))
        if rl != wl:
            add(
                rf.name,
                "logical_type_mismatch",
                f"logical type changed from {_fmt(wl)} (v{writer.version}) to {_fmt(rl)} "
                f"(v{reader.version}); the Delta column type would change",
            )
    return out


def _fmt(logical: tuple[str, Any, Any] | None) -> str:
    if logical is None:
        return "none"
    name, precision, scale = logical
    return f"decimal({precision},{scale})" if name == "decimal" else name


def check_versions(new: Contract, older: list[Contract], mode: Compatibility) -> list[Incompatibility]:
    """Check `new` against the older versions the mode asks for."""
    if mode is Compatibility.NONE or not older:
        return []
    targets = older if mode.transitive else [max(older, key=lambda c: c.version)]
    problems: list[Incompatibility] = []
    for old in sorted(targets, key=lambda c: c.version):
        if mode.backward:
            problems += check_pair(reader=new, writer=old, direction="backward")
        if mode.forward:
            problems += check_pair(reader=old, writer=new, direction="forward")
    return problems


def check_registry(
    registry: ContractRegistry, modes: dict[str, Compatibility]
) -> dict[str, list[Incompatibility]]:
    """Check every version of every type against its predecessors (history must stay valid)."""
    report: dict[str, list[Incompatibility]] = {}
    for event_type, contracts in registry.types.items():
        mode = modes[event_type]
        ordered = [contracts.versions[v] for v in sorted(contracts.versions)]
        problems: list[Incompatibility] = []
        for i in range(1, len(ordered)):
            problems += check_versions(ordered[i], ordered[:i], mode)
        report[event_type] = problems
    return report
