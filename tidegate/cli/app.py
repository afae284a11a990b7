"""The typer application, its consoles and shared options, and the entry point.

Command modules (tidegate/cli/*.py) register on `app`; `main()` turns a TidegateError into
its message and exit code, never a traceback. Commands import Beam, GX and Delta inside the
function that needs them: those take seconds to import and `tidegate --help` must not wait.

Output conventions every command follows:
- **Exit codes**: 0 ok, 1 a check failed (verify, contracts check), 2 a user error (a flag, a
  path, the catalog), 3 the platform is missing (Java, the emulator). Never a traceback.
- **Progress**: `progress("Doing X ...")` around any step that can take more than ~2 s: a
  spinner on stderr when it is a terminal, nothing when piped or with `--quiet`.
- **Logs**: `--verbose` (`-v`, `-vv`) shows tidegate's log on stderr; every run also appends
  to `<TIDEGATE_HOME>/logs/tidegate.log` (INFO, DEBUG with -vv). Libraries' chatter (GX, Beam,
  gRPC) stays out of both unless -vv.
- **Tables** are `Table` from here: cells wrap instead of ending in "…", so identifiers stay
  whole at 80 columns and when piped. `--json` gives the same data for machines.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as _RichTable
from typer.core import TyperOption

from tidegate import __version__, settings
from tidegate.catalog import Catalog
from tidegate.catalog import parse_duration as catalog_duration
from tidegate.errors import PlatformError, TidegateError

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("tidegate")
_QUIET = {"on": False}
# libraries whose INFO chatter is noise for a tidegate user ("Created temporary directory ...
# for ephemeral docs site" on every ingest); shown only with -vv
NOISY = (
    "great_expectations",
    "apache_beam",
    "google",
    "grpc",
    "urllib3",
    "matplotlib",
    "deltalake",
    "fsspec",
    "asyncio",
    "absl",
    "py4j",
    "openlineage",
)


def _metavar(self: TyperOption, ctx: Any) -> str | None:
    """Help's type column as people read it: nothing for a flag (not `<bool>`), `TEXT ...` for a
    repeatable option (not `<list[str]>`), `INTEGER` for `<int>`."""
    if self.is_flag or self.count:
        return None
    shown = _typer_metavar(self, ctx)
    if shown is None or not (shown.startswith("<") and shown.endswith(">")):
        return shown
    label = shown[1:-1]
    if label.startswith("list[") and label.endswith("]"):
        return f"{_LABELS.get(label[5:-1], label[5:-1].upper())} ..."
    return _LABELS.get(label, label.upper())


_LABELS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "bool": "BOOLEAN"}
_typer_metavar = TyperOption.display_type_rich
TyperOption.display_type_rich = _metavar  # type: ignore[method-assign]


class Table(_RichTable):
    """A rich Table whose cells wrap (fold) rather than end in "…" when the terminal is narrow."""

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while the block runs (a terminal, not --quiet); logged."""
    log.info(message)
    if _QUIET["on"] or not err_console.is_terminal:
        yield
        return
    with err_console.status(message):
        yield


def is_quiet() -> bool:
    return _QUIET["on"]


class _LogFile(logging.handlers.RotatingFileHandler):
    """tidegate.log under TIDEGATE_HOME/logs, made only when something is logged."""

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def setup_logging(verbose: int, quiet: bool) -> None:
    """Idempotent (the tests call the CLI many times in one process)."""
    _QUIET["on"] = quiet
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_tidegate", False)]:
        root.removeHandler(h)
        h.close()
    to_file = _LogFile(settings.home() / "logs" / "tidegate.log", maxBytes=5 << 20, backupCount=3, delay=True)
    to_file.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(
        logging.ERROR
        if quiet
        else (logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    )
    to_stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [to_file, to_stderr]
    for h in handlers:
        setattr(h, "_tidegate", True)  # noqa: B010 - marks ours, for the next setup to remove
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


app = typer.Typer(
    name="tidegate",
    help="Land CloudEvents from Pub/Sub in Delta Lake: exactly once, quarantined, with lineage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress, no warnings: results and errors only.")
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="Show tidegate's log on stderr (-vv: also libraries', DEBUG)."
        ),
    ] = 0,
) -> None:
    """tidegate: CloudEvents from Pub/Sub into Delta Lake through Apache Beam.

    Exit codes: 0 ok, 1 a check failed, 2 a mistake to fix (flag, path, catalog), 3 the platform
    is missing. Every run appends to <TIDEGATE_HOME>/logs/tidegate.log."""
    setup_logging(verbose, quiet)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]

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
    # A crash in native code (delta-rs, polars, pyarrow) kills the process with no Python
    # traceback; with this, stderr names the thread and the Python call that was running (a
    # `bench soak` died twice of a SIGSEGV inside deltalake's library: docs/architecture.md)
    with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr is no file (captured)
        faulthandler.enable(all_threads=True)
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
        raise no_tables(root, catalog)


def no_tables(root: str, catalog: Catalog) -> TidegateError:
    """The error for a lake without tables, with what to do: where `tidegate demo` left its lake,
    when it did (the demo writes <home>/demo/lake, not the default lake the other commands read)."""
    from tidegate.lake.read import Lake  # see the module docstring

    hint = "run `tidegate ingest` (or `tidegate demo`) first, or check --lake / TIDEGATE_LAKE"
    demo = settings.demo_lake_path()
    if str(demo) != root and Lake(str(demo), None, catalog).has_tables():
        try:
            shown = str(demo.relative_to(Path.cwd()))
        except ValueError:
            shown = str(demo)
        hint = f"`tidegate demo` left its lake in {shown}: add `--lake {shown}` (or set TIDEGATE_LAKE)"
    return TidegateError(f"no tidegate tables under {root}", hint=hint)


def require_emulator(address: str) -> None:
    from tidegate.infra import emulator as emu  # see the module docstring

    host, port = settings.split_address(address)
    if not emu.is_up(host, port):
        raise PlatformError(
            f"no Pub/Sub emulator answers at {address}",
            hint="start one with `tidegate up` (or pass --emulator HOST:PORT)",
        )
