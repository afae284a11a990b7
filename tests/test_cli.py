"""CLI ergonomics: help everywhere, mistakes explained, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    ["up"],
    ["down"],
    ["produce"],
    ["demo"],
    ["contracts"],
    ["contracts", "list"],
    ["contracts", "check"],
    ["contracts", "show"],
    ["replay"],
    ["verify"],
    ["lineage"],
    ["bench", "replay"],
    ["bench", "backlog"],
    ["bench", "dedup"],
    ["bench", "writers"],
    ["bench", "commits"],
    ["deploy", "dataflow"],
    ["status"],
    ["docs"],
    ["quarantine"],
    ["quarantine", "list"],
    ["quarantine", "show"],
    ["quarantine", "redrive"],
    ["keys", "rotate"],
    ["keys", "retokenize"],
    ["contracts", "new"],
    ["contracts", "bump"],
    ["ingest"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli, cmd: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = cli(*cmd, "--help")
    assert r.code == 0
    assert "Usage:" in r.text
    assert len(r.text) > 150
    assert "<bool>" not in r.text  # flags show no type; lists read TEXT ...
    assert "<list[" not in r.text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["produce", "--type", "shop.order.shipped"], "unknown event type 'shop.order.shipped'"),
        (["produce", "--invalid-rate", "2"], "must be between 0 and 1"),
        (["produce", "--count", "0"], "Invalid value for '--count'"),
        (["produce", "--late-by", "soon"], "not a duration"),
        (["produce", "--start-time", "tomorrow"], "not an RFC 3339 timestamp"),
        (["contracts", "show", "shop.order.placed", "--version", "9"], "has no version 9"),
        (["contracts", "list", "--catalog", "/nonexistent.yaml"], "does not exist"),
        (["frobnicate"], "No such command"),
        (["replay", "revenue_per_hour"], "unknown aggregate 'revenue_per_hour'"),
        (
            ["replay", "revenue_per_currency_1m", "--lake", "/nonexistent/lake"],
            "no raw history for shop.order.placed",
        ),
        (["replay", "revenue_per_currency_1m", "--since", "yesterday"], "is not an RFC 3339 time"),
        (
            [
                "replay",
                "revenue_per_currency_1m",
                "--since",
                "2026-11-27T00:00:00Z",
                "--until",
                "2026-11-26T00:00:00Z",
            ],
            "is not before --until",
        ),
        (["lineage", "aggregates/nope"], "aggregates/revenue_per_currency_1m"),
    ],
)
def test_mistakes_say_what_to_do(cli, args: list[str], expected: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(*args)
    assert r.code != 0
    assert expected in r.text
    assert "Traceback" not in r.text


def test_console_script_prints_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tidegate.cli", "produce", "--type", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown event type" in proc.stderr
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_contracts_list_shows_versions_and_pii(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("contracts", "list")
    assert r.code == 0
    assert "shop.order.placed" in r.text
    assert "v1, v2" in r.text
    assert "customer_email" in r.text


def test_contracts_show_prints_delta_types(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("contracts", "show", "shop.order.placed")
    assert r.code == 0
    assert "decimal128(12, 2)" in r.text
    assert "timestamp[us, tz=UTC]" in r.text
    assert "coupon_code" in r.text


def test_a_new_type_is_scaffolded_and_passes_the_check_and_a_bump_adds_the_next_version(
    cli, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """`contracts new` writes v1.avsc, suite.json and a stream; `contracts check` passes as
    written, and a reading of the catalog lists the type; `contracts bump` adds v2."""
    import json
    import shutil
    from pathlib import Path

    from tidegate.catalog import load_catalog

    shipped = Path(__file__).resolve().parent.parent / "tidegate"
    shutil.copytree(shipped / "expectations" / "contracts", tmp_path / "contracts")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        (shipped / "infra" / "catalog.yaml")
        .read_text()
        .replace("contracts: ../expectations/contracts", "contracts: contracts")
    )
    r = cli("contracts", "new", "shop.order.cancelled", "--catalog", catalog)
    assert r.code == 0, r.text
    assert (tmp_path / "contracts" / "shop.order.cancelled" / "v1.avsc").is_file()
    stream = load_catalog(catalog).stream("shop.order.cancelled")
    assert (stream.topic, stream.subscription) == ("shop-order-cancelled", "shop-order-cancelled-tidegate")
    assert load_catalog(catalog).aggregates  # the rest of the catalog is intact
    checked = cli("contracts", "check", "--catalog", catalog, "--json")
    assert checked.code == 0, checked.text
    assert "shop.order.cancelled" in [t["event_type"] for t in json.loads(checked.out)["types"]]
    again = cli("contracts", "new", "shop.order.cancelled", "--catalog", catalog)
    assert again.code == 2
    assert "contracts bump" in again.text
    bumped = cli("contracts", "bump", "shop.order.cancelled", "--catalog", catalog)
    assert bumped.code == 0, bumped.text
    listed = json.loads(cli("contracts", "list", "--catalog", catalog, "--json").out)
    mine = next(t for t in listed["types"] if t["event_type"] == "shop.order.cancelled")
    assert mine["versions"] == [1, 2]
    assert cli("contracts", "check", "--catalog", catalog).code == 0
    bad = cli("contracts", "new", "Not A Type", "--catalog", catalog)
    assert bad.code == 2
    assert "dotted event type" in bad.text


def test_tables_keep_identifiers_whole_at_80_columns(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Piped or in an 80-column terminal, a table wraps its cells: no identifier ends in "…"."""
    import sys

    monkeypatch.setattr(sys.modules["tidegate.cli.app"].console, "_width", 80)
    r = cli("contracts", "list")
    assert r.code == 0
    assert "…" not in r.out  # cells wrap (fold) instead: every character of every name is printed
    assert "shop.order.placed" in r.out


def test_every_run_is_logged_under_the_home_and_libraries_stay_quiet(cli) -> None:  # type: ignore[no-untyped-def]
    import os
    from pathlib import Path

    r = cli("contracts", "check")
    assert r.code == 0
    assert "Created temporary directory" not in r.text  # GX's chatter is not the user's business
    log = Path(os.environ["TIDEGATE_HOME"]) / "logs" / "tidegate.log"
    assert "Checking contracts, suites and aggregates" in log.read_text()
    quiet = cli("-q", "contracts", "check")
    assert quiet.code == 0
    assert quiet.err == ""
    verbose = cli("-v", "contracts", "check")
    assert "INFO tidegate: Checking contracts" in verbose.err


def test_every_command_summary_is_one_paragraph_without_hard_line_breaks() -> None:
    """Typer prints a docstring's first paragraph as written: a line break inside it shows up
    as a sentence cut in two in `--help` (`quarantine redrive` and `bench dedup` did)."""
    import typer

    from tidegate.cli import app

    def commands(t: typer.Typer, path: str) -> list[tuple[str, str]]:
        out = [
            (f"{path} {c.name or c.callback.__name__}", c.callback.__doc__ or "")
            for c in t.registered_commands
            if c.callback
        ]
        for g in t.registered_groups:
            if g.typer_instance is not None:
                out += commands(g.typer_instance, f"{path} {g.name}")
        return out

    found = commands(app, "tidegate")
    assert len(found) > 20
    broken = [name for name, doc in found if "\n" in doc.strip().split("\n\n")[0]]
    assert not broken, broken
