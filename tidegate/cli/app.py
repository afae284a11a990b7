"""The typer application, its consoles and shared options, and the entry point.

Command modules (tidegate/cli/*.py) register on `app`; `main()` turns a TidegateError into
its message and exit code, never a traceback. Commands import Beam, GX and Delta inside the
function that needs them: those take seconds to import and `tidegate --help` must not wait.
"""

from __future__ import annotations

import gc
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidegate import __version__, settings
from tidegate.catalog import Catalog
from tidegate.catalog import parse_duration as catalog_duration
from tidegate.errors import PlatformError, TidegateError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tidegate",
    help="Land CloudEvents from Pub/Sub in Delta Lake: exactly once, quarantined, with lineage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
contracts_app = typer.Typer(help="Event contracts: list, show and check compatibility.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
bench_app = typer.Typer(
    help="Benchmarks on this machine (figures for notes and docs, never timed tests).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
deploy_app = typer.Typer(help="Deploy to GCP (docs/deploy.md).", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Stream catalog file (default: $TIDEGATE_CATALOG or tidegate/infra/catalog.yaml).",
        show_default=False,
    ),
]
EmulatorOpt = Annotated[
    str | None,
    typer.Option(
        "--emulator",
        help="Emulator HOST:PORT (default: $PUBSUB_EMULATOR_HOST or the catalog's).",
        show_default=False,
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tidegate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """tidegate: CloudEvents from Pub/Sub into Delta Lake through Apache Beam."""


LakeOpt = Annotated[
    str | None,
    typer.Option(
        "--lake",
        help="Lake root, a path or URI (default: $TIDEGATE_LAKE or .tidegate/lake).",
        show_default=False,
    ),
]


def main() -> None:
    """Console-script entry point: user errors become messages, not tracebacks."""
    # Imports of Beam, GX and pandas build millions of long-lived objects: with the default
    # thresholds the collector runs full passes over them again and again (~1 s of a cold
    # start). Collect young objects less often; the ingest driver freezes what warm-up built.
    gc.set_threshold(50_000, 20, 100)
    settings.secure_home()  # files 0600, TIDEGATE_HOME 0700
    debug = bool(os.environ.get("TIDEGATE_DEBUG"))
    try:
        app(standalone_mode=True)
    except TidegateError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc.message}")
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[red]unexpected error:[/] {exc.__class__.__name__}: {exc}\n"
            "This is a bug in tidegate or an unhandled environment problem; "
            "rerun with TIDEGATE_DEBUG=1 for the traceback and report it."
        )
        sys.exit(1)


def parse_rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"must be between 0 and 1 (a fraction), got {value}", param_hint=name)
    return value


def parse_duration(text: str, name: str) -> timedelta:
    try:
        return timedelta(seconds=catalog_duration(text))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def parse_time(text: str | None, option: str = "--start-time") -> datetime | None:
    if text is None:
        return None
    from tidegate.expectations.coercion import parse_rfc3339  # see the module docstring

    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def require_lake(root: str, catalog: Catalog) -> None:
    """A lake without any tidegate table is a user mistake: a typo in --lake, or nothing ingested."""
    from tidegate.lake.read import Lake  # see the module docstring

    if not Lake(root, settings.storage_options(), catalog).has_tables():
        raise TidegateError(
            f"no tidegate tables under {root}",
            hint="run `tidegate ingest` (or `tidegate demo`) first, or check --lake / TIDEGATE_LAKE",
        )


def require_emulator(address: str) -> None:
    from tidegate.infra import emulator as emu  # see the module docstring

    host, port = settings.split_address(address)
    if not emu.is_up(host, port):
        raise PlatformError(
            f"no Pub/Sub emulator answers at {address}",
            hint="start one with `tidegate up` (or pass --emulator HOST:PORT)",
        )
