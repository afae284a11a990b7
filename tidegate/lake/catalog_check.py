"""The whole catalog checked against its contracts, before anything runs.

    registry = check_catalog(catalog)   # raises ConfigError (exit 2) naming the mistake

`load_catalog` checks the catalog file alone (unknown keys, names, durations). What needs the
contracts too is checked here: every contract parses, every aggregate's keys and metric fields
are columns of its source's raw table (a typo like `field: amout` used to pass `up` and
`contracts check` and then crash ingest), and every `pii_url_fields` entry is a contract
field. `tidegate up`, `contracts check`, `ingest`, `replay` and `deploy` call it first.
"""

from __future__ import annotations

from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.aggregates import check_aggregates
from tidegate.lake.pii import pii_policies


def check_catalog(catalog: Catalog) -> ContractRegistry:
    registry = ContractRegistry.from_catalog(catalog)
    check_aggregates(catalog, registry)
    pii_policies(catalog, registry)
    return registry
