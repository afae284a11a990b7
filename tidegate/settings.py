"""Where tidegate keeps local state, and how it finds the emulator.

- `TIDEGATE_HOME` (default `./.tidegate`): pid file and log of the emulator `tidegate up`
  started, manifests, and (from the ingest issue on) the local lake.
- `TIDEGATE_LAKE` (default `<TIDEGATE_HOME>/lake`): the lake root, a path or a URI (gs://...).
- `TIDEGATE_STORAGE_OPTIONS`: options for the lake's object store, passed to delta-rs and
  polars as they are, e.g. `google_service_account_path=/secrets/sa.json` or a JSON object
  (`{"google_service_account_path": "..."}`); comma-separated `key=value` pairs also work.
  Not needed with Application Default Credentials on GCS.
- `PUBSUB_EMULATOR_HOST`: if set, commands talk to that emulator instead of the catalog's
  `emulator.host:port` (the same variable Google's client libraries read). Only a loopback
  address is accepted (the emulator has no authentication and no TLS: events sent to another
  machine travel in clear to whoever listens there), unless `TIDEGATE_ALLOW_REMOTE_EMULATOR=1`.

The CLI keeps its local state private: `secure_home()` (called by `tidegate.cli.main`) sets the
process umask to 077, so every file tidegate creates is 0600 and every directory 0700, and
makes `TIDEGATE_HOME` itself 0700.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from tidegate.catalog import Catalog
from tidegate.errors import ConfigError, TidegateError

HOME_ENV = "TIDEGATE_HOME"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or ".tidegate").absolute()


def lake_path(override: str | None = None) -> str:
    """The lake root: --lake, else $TIDEGATE_LAKE, else <TIDEGATE_HOME>/lake."""
    return override or os.environ.get("TIDEGATE_LAKE") or str(home() / "lake")


def storage_options() -> dict[str, str] | None:
    """Object-store options for the lake, from $TIDEGATE_STORAGE_OPTIONS (None: defaults)."""

    raw = os.environ.get("TIDEGATE_STORAGE_OPTIONS", "").strip()
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TIDEGATE_STORAGE_OPTIONS is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError("TIDEGATE_STORAGE_OPTIONS must be a JSON object or key=value pairs")
        return {str(k): str(v) for k, v in parsed.items()}
    out: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"TIDEGATE_STORAGE_OPTIONS: {part!r} is not key=value",
                hint="e.g. TIDEGATE_STORAGE_OPTIONS=google_service_account_path=/secrets/sa.json",
            )
        out[key.strip()] = value.strip()
    return out


def emulator_state_file() -> Path:
    return home() / "emulator.json"


def emulator_log_file() -> Path:
    return home() / "logs" / "pubsub-emulator.log"


REMOTE_EMULATOR_ENV = "TIDEGATE_ALLOW_REMOTE_EMULATOR"


def secure_home() -> None:
    """Files this process creates are its owner's only (umask 077); TIDEGATE_HOME is 0700."""
    os.umask(0o077)
    path = home()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_uid == os.getuid():
            path.chmod(0o700)
    except OSError:
        pass  # a read-only or foreign home: commands that need it say so themselves


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def emulator_address(catalog: Catalog, override: str | None = None) -> str:
    """--emulator, else $PUBSUB_EMULATOR_HOST, else the catalog's; a loopback address only,
    unless TIDEGATE_ALLOW_REMOTE_EMULATOR=1."""
    address = override or os.environ.get("PUBSUB_EMULATOR_HOST") or catalog.emulator.address
    host, _port = split_address(address)
    if not is_loopback(host) and os.environ.get(REMOTE_EMULATOR_ENV) != "1":
        source = (
            "--emulator"
            if override
            else "PUBSUB_EMULATOR_HOST"
            if os.environ.get("PUBSUB_EMULATOR_HOST")
            else "the catalog"
        )
        raise TidegateError(
            f"the Pub/Sub emulator address {address} ({source}) is not a loopback address",
            hint="the emulator has no authentication or TLS, so tidegate only talks to one on this machine "
            f"(127.0.0.1, ::1, localhost); set {REMOTE_EMULATOR_ENV}=1 to allow another host on purpose",
        )
    return address


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TidegateError(f"{address!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8085")
    return host, int(port)
