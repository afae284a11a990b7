"""`tidegate up` / `tidegate down`: the local Pub/Sub emulator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidegate.catalog import load_catalog
from tidegate.errors import TidegateError

if TYPE_CHECKING:
    from tidegate.infra.pubsub import Change

from tidegate.cli.app import CatalogOpt, EmulatorOpt, Table, app, console, progress


def _changes_table(changes: list[Change]) -> Table:
    table = Table(title="Pub/Sub resources", show_lines=False)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("action")
    table.add_column("detail")
    colors = {"created": "green", "updated": "yellow", "unchanged": "dim", "conflict": "red"}
    for c in changes:
        table.add_row(c.kind, c.name, f"[{colors.get(c.action, '')}]{c.action}[/]", c.detail)
    return table


@app.command()
def up(catalog_path: CatalogOpt = None, emulator: EmulatorOpt = None) -> None:
    """Start the Pub/Sub emulator in the background (or reuse a running one) and provision the catalog's topics and subscriptions. Safe to run again: it says what changed."""
    from tidegate import settings
    from tidegate.infra import emulator as emu
    from tidegate.infra.pubsub import provision
    from tidegate.lake.catalog_check import check_catalog

    catalog = load_catalog(catalog_path)
    check_catalog(catalog)  # before anything starts: a typo in an aggregate or contract stops here
    address = settings.emulator_address(catalog, emulator)
    host, port = settings.split_address(address)
    if emu.is_up(host, port):
        console.print(f"Pub/Sub emulator already running at {address}: reusing it.")
    else:
        with progress(f"Starting the Pub/Sub emulator on {address} ..."):
            proc = emu.start(host, port, settings.emulator_log_file())
        emu.write_state(settings.emulator_state_file(), proc)
        console.print(
            f"Started the Pub/Sub emulator at {address} (pid {proc.pid}, log {proc.log}).\n"
            f"Point other tools at it with: export PUBSUB_EMULATOR_HOST={address}"
        )
    changes = provision(catalog, address)
    console.print(_changes_table(changes))
    changed = [c for c in changes if c.action != "unchanged"]
    conflicts = [c for c in changes if c.action == "conflict"]
    if conflicts:
        raise TidegateError(f"{len(conflicts)} resource(s) conflict with the catalog (see above)")
    if not changed:
        console.print(f"Nothing to change: all {len(changes)} resources already match the catalog.")
    else:
        console.print(f"{len(changed)} change(s) applied, {len(changes) - len(changed)} unchanged.")


@app.command()
def down() -> None:
    """Stop the Pub/Sub emulator that `tidegate up` started (and only that one)."""
    from tidegate import settings
    from tidegate.infra import emulator as emu

    state_file = settings.emulator_state_file()
    state = emu.read_state(state_file)
    if state is None:
        console.print("No emulator started by tidegate is running here (no pid file).")
        return
    if not emu.pid_alive(state.pid) or not emu.looks_like_emulator(state.pid):
        state_file.unlink(missing_ok=True)
        console.print(f"The emulator tidegate started (pid {state.pid}) is not running any more; cleaned up.")
        return
    emu.stop_pid(state.pid)
    state_file.unlink(missing_ok=True)
    console.print(f"Stopped the Pub/Sub emulator at {state.address} (pid {state.pid}).")
