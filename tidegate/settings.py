"""Where tidegate keeps local state, and how it finds the emulator.

- `TIDEGATE_HOME`: pid file and log of the emulator `tidegate up` started, manifests, the local
  lake (`<home>/lake`) and the demo's (`<home>/demo/lake`). Unset, it is found the way git finds
  `.git`: the nearest `.tidegate` directory in the current directory or one of its parents (a
  directory of this user's only), else `./.tidegate`, created on first use. So the CLI and a
  notebook agree from any subdirectory of the project (Jupyter runs a notebook in its own folder).
- `TIDEGATE_LAKE` (default `<TIDEGATE_HOME>/lake`): the lake root, a path or a URI (gs://...).
  `find_lake()` is what readers (the quickstart notebook) use: `TIDEGATE_LAKE`, else
  `<home>/lake` once it holds a table, else the demo's lake `<home>/demo/lake`, else an error
  that says what to run.
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
import stat
from pathlib import Path

from tidegate.catalog import Catalog
from tidegate.errors import ConfigError, TidegateError

HOME_ENV = "TIDEGATE_HOME"
LAKE_ENV = "TIDEGATE_LAKE"
HOME_DIR = ".tidegate"


def home() -> Path:
    """$TIDEGATE_HOME, else the nearest `.tidegate` in the current directory or above, else ./.tidegate."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).absolute()
    return _discovered_home() or Path(HOME_DIR).absolute()


def _discovered_home() -> Path | None:
    """The nearest `.tidegate` directory in the current directory or its parents that belongs to
    this user (one another user planted in /tmp or a shared parent is never adopted)."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidate = folder / HOME_DIR
        try:
            st = candidate.stat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            return candidate
    return None


def lake_path(override: str | None = None) -> str:
    """The lake root: --lake, else $TIDEGATE_LAKE, else <TIDEGATE_HOME>/lake."""
    return override or os.environ.get(LAKE_ENV) or str(home() / "lake")


def demo_lake_path() -> Path:
    """Where `tidegate demo` leaves its lake: <TIDEGATE_HOME>/demo/lake."""
    return home() / "demo" / "lake"


def find_lake(override: str | None = None) -> str:
    """The lake a reader (the quickstart notebook) opens: `override`, else $TIDEGATE_LAKE, else
    <home>/lake (what `tidegate ingest` fills) once it holds a table, else the demo's lake
    <home>/demo/lake. A URI (gs://...) is taken as it is; a local path is made absolute, and one
    without any table is an error that says what to run."""
    explicit = override or os.environ.get(LAKE_ENV)
    if explicit:
        if "://" in explicit:
            return explicit
        path = Path(explicit).absolute()
        if not _has_tables(path):
            source = "the lake given" if override else f"{LAKE_ENV}={explicit}"
            relative = (
                "" if Path(explicit).is_absolute() else f" (relative to the current directory {Path.cwd()})"
            )
            raise TidegateError(
                f"{source}: no tidegate tables under {path}{relative}",
                hint=f"run `uv run tidegate demo` first, or set {LAKE_ENV} to an existing lake "
                "(an absolute path or gs://bucket/lake)",
            )
        return str(path)
    root = home()
    for candidate in (root / "lake", demo_lake_path()):
        if _has_tables(candidate):
            return str(candidate)
    if os.environ.get(HOME_ENV):
        how = f"{HOME_ENV}={os.environ[HOME_ENV]}"
    elif _discovered_home() is not None:
        how = f"{HOME_ENV} is unset: the nearest {HOME_DIR} directory, from {Path.cwd()}"
    else:
        how = f"{HOME_ENV} is unset and there is no {HOME_DIR} directory in {Path.cwd()} or above"
    raise TidegateError(
        f"no lake yet: neither {root / 'lake'} nor {demo_lake_path()} holds a tidegate table ({how})",
        hint=f"run `uv run tidegate demo` first (in the project folder), or set {LAKE_ENV} to a lake "
        "(an absolute path or gs://bucket/lake)",
    )


def _has_tables(root: Path) -> bool:
    """Whether a local lake holds at least one Delta table (raw/<type>, quarantine, aggregates/...)."""
    return root.is_dir() and any(
        p.is_dir() for pattern in ("*/_delta_log", "*/*/_delta_log") for p in root.glob(pattern)
    )


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
