"""Where tidegate keeps local state, and how it finds the emulator.

- `TIDEGATE_HOME` (default `./.tidegate`): pid file and log of the emulator `tidegate up`
  started, manifests, and (from the ingest issue on) the local lake.
- `TIDEGATE_LAKE` (default `<TIDEGATE_HOME>/lake`): the lake root, a path or a URI (gs://...).
- `PUBSUB_EMULATOR_HOST`: if set, commands talk to that emulator instead of the catalog's
  `emulator.host:port` (the same variable Google's client libraries read).
"""

from __future__ import annotations

import os
from pathlib import Path

from tidegate.catalog import Catalog

HOME_ENV = "TIDEGATE_HOME"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or ".tidegate").absolute()


def lake_path(override: str | None = None) -> str:
    """The lake root: --lake, else $TIDEGATE_LAKE, else <TIDEGATE_HOME>/lake."""
    return override or os.environ.get("TIDEGATE_LAKE") or str(home() / "lake")


def emulator_state_file() -> Path:
    return home() / "emulator.json"


def emulator_log_file() -> Path:
    return home() / "logs" / "pubsub-emulator.log"


def emulator_address(catalog: Catalog, override: str | None = None) -> str:
    return override or os.environ.get("PUBSUB_EMULATOR_HOST") or catalog.emulator.address


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        from tidegate.errors import TidegateError

        raise TidegateError(f"{address!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8085")
    return host, int(port)
