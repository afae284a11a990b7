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
    ["deploy", "dataflow"],
    ["status"],
    ["docs"],
    ["quarantine"],
    ["quarantine", "list"],
    ["quarantine", "show"],
    ["quarantine", "redrive"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli, cmd: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = cli(*cmd, "--help")
    assert r.code == 0
    assert "Usage:" in r.text
    assert len(r.text) > 150


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
