"""The whole catalog checked against its contracts, before anything runs.

    registry = check_catalog(catalog)   # raises ConfigError (exit 2) naming the mistake

`load_catalog` checks the catalog file alone (unknown keys, names, durations). What needs the
contracts too is checked here: every contract parses, every aggregate's keys and metric fields
are columns of its source's raw table (a typo like `field: amout` used to pass `up` and
`contracts check` and then crash ingest), and every `pii_url_fields` entry is a contract
field, every `subject_fields` entry too, every view's key and columns, and every
null-rate monitor's columns. `tidegate up`, `contracts check`, `ingest`, `replay` and `deploy` call it first.
"""

from __future__ import annotations

from tidegate.catalog import Catalog
from tidegate.errors import ConfigError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.aggregates import check_aggregates
from tidegate.lake.pii import pii_policies
from tidegate.lake.tables import raw_schema


def check_catalog(catalog: Catalog) -> ContractRegistry:
    registry = ContractRegistry.from_catalog(catalog)
    check_aggregates(catalog, registry)
    pii_policies(catalog, registry)
    for stream in catalog.streams:
        for event_type in stream.types:
            names = {f for c in registry.types[event_type].versions.values() for f in c.field_names}
            missing = [f for f in stream.subject_fields if f not in names]
            if missing and len(stream.types) == 1:
                raise ConfigError(
                    f"{event_type}: subject_fields names {', '.join(missing)}, not a field of its contracts",
                    hint=f"its fields: {', '.join(sorted(names))}",
                )
    for view in catalog.views:
        for e in view.events:
            schema = raw_schema(registry.types[e.type])
            for name in [view.key, *e.columns.values()]:
                if name not in schema.names:
                    raise ConfigError(
                        f"view {view.name}: {name!r} is not a column of raw/{e.type}",
                        hint=f"its columns: {', '.join(schema.names)}",
                    )
    for stream in catalog.streams:
        columns = stream.monitors.null_rate.columns if stream.monitors.null_rate else []
        for event_type in stream.types:
            names = raw_schema(registry.types[event_type]).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ConfigError(
                    f"{event_type}: monitors.null_rate names {', '.join(missing)}, not a column of raw/{event_type}"
                )
    return registry
