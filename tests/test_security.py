"""Security controls on real Delta tables: key rotation with re-tokenization, no PII value in any
text tidegate writes, the development key kept away from production (docs/security.md)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.test_batch import orders
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.pii import KeyRing, PiiProtector
from tidegate.lake.tables import QUARANTINE, raw_uri
from tidegate.lake.verify import verify
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.transforms.base import IngestConfig

KEY = secrets.token_hex(32)


def _with(message: RawMessage, mid: str, **payload: object) -> RawMessage:
    data = json.loads(message.data)
    data.update(payload)
    attrs = {**message.attributes, "ce-id": f"{message.attributes['ce-id']}-{mid}"}
    return RawMessage(json.dumps(data).encode(), attrs, mid, datetime.now(UTC), message.subscription)


def test_a_rotation_then_retokenize_leaves_one_token_per_customer_and_every_original_readable(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:  # type: ignore[no-untyped-def]
    """Rows before a rotation carry version-1 tokens, rows after it version 2: the same
    customer has two tokens until `tidegate keys retokenize` moves the lake to version 2.
    Originals in the quarantine stay decryptable throughout; a second run rewrites nothing."""
    lake = tmp_path / "lake"
    monkeypatch.setenv("TIDEGATE_PII_KEY", KEY)
    messages = orders(catalog, registry, 6)
    email = json.loads(messages[0].data)["customer_email"]
    bad = _with(messages[1], "bad", item_count="many")  # quarantined (wrong_type), original kept
    runner = BatchRunner(IngestConfig(str(lake), "r1", str(catalog.path), "t", "t"), single_writer=True)
    runner.run("b1", [*messages, bad])

    ring_file = tmp_path / "keys" / "ring.json"
    rotated = cli("keys", "rotate", "--keyring-file", ring_file)
    assert rotated.code == 0, rotated.err
    assert ring_file.stat().st_mode & 0o777 == 0o600
    ring = KeyRing.parse(ring_file.read_bytes(), "test")
    assert (ring.current, ring.secret(1).decode()) == (2, KEY)
    monkeypatch.delenv("TIDEGATE_PII_KEY")
    monkeypatch.setenv("TIDEGATE_PII_KEY_FILE", str(ring_file))
    again = _with(messages[0], "after", item_count=3)  # the same customer, after the rotation
    BatchRunner(IngestConfig(str(lake), "r2", str(catalog.path), "t", "t"), single_writer=True).run(
        "b2", [again]
    )

    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    mine = raw.filter(pl.col("event_id").str.starts_with(messages[0].attributes["ce-id"]))
    tokens = mine.get_column("customer_email").to_list()
    assert sorted(t[:6] for t in tokens) == ["pii_1_", "pii_2_"]  # two tokens for one customer

    done = cli("keys", "retokenize", "--lake", lake)
    assert done.code == 0, done.err
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.height == 7
    assert raw.get_column("customer_email").str.starts_with("pii_2_").all()
    mine = raw.filter(pl.col("event_id").str.starts_with(messages[0].attributes["ce-id"]))
    assert mine.get_column("customer_email").n_unique() == 1  # joinable again
    protector = PiiProtector(ring)
    assert protector.detokenize(mine.get_column("customer_email")[0], "email") == email
    q = pl.read_delta(QUARANTINE.uri(str(lake))).row(0, named=True)
    assert protector.encrypted_with_current(q["payload_encrypted"])
    assert json.loads(protector.decrypt(q["payload_encrypted"]))["item_count"] == "many"
    assert "pii_1_" not in json.dumps([q["reason"], q["payload_preview"], q["attributes"]])
    report = verify(str(lake), catalog.event_types)  # the rewrite kept one row per event
    assert report.ok, report.failures

    twice = cli("keys", "retokenize", "--lake", lake)
    assert twice.code == 0
    assert "rewritten" not in twice.out  # nothing stale left
    shown = cli("keys", "show", "--lake", lake, "--json")
    assert [v["version"] for v in json.loads(shown.out)["versions"]] == [2, 1]
    assert KEY not in shown.out


def test_rotate_without_a_key_to_start_from_says_what_to_set(tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    r = cli("keys", "rotate", "--keyring-file", tmp_path / "ring.json")
    assert r.code != 0
    assert "TIDEGATE_PII_KEY" in r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize(
    "where",
    [["--lake", "gs://acme-lake/lake"], ["--production"]],
    ids=["gs lake", "production"],
)
def test_the_development_key_never_reaches_a_production_lake(cli, monkeypatch, where: list[str]) -> None:  # type: ignore[no-untyped-def]
    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE", "TIDEGATE_PII_KEY_SECRET", "TIDEGATE_ENV"):
        monkeypatch.delenv(var, raising=False)
    args = ["quarantine", "redrive", "--rule", "wrong_type", *where]
    r = cli(*args)
    assert r.code != 0
    assert "public development key" in r.err


def test_local_state_is_private_and_the_lock_never_follows_a_symlink(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """TIDEGATE_HOME 0700 and the files tidegate creates 0600; a lock file that is a symlink
    (which `open(..., "w")` used to follow and truncate) is refused and its target untouched."""
    import os
    import stat

    from tidegate import settings
    from tidegate.errors import TidegateError
    from tidegate.lake.lock import lake_lock

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("TIDEGATE_HOME", str(home))
    old = os.umask(0o022)
    try:
        settings.secure_home()
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        with lake_lock(str(home / "lake")):
            pass
        assert stat.S_IMODE((home / "lake" / ".ingest.lock").stat().st_mode) == 0o600
        (home / "state.json").write_text("{}")
        assert stat.S_IMODE((home / "state.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".ingest.lock").symlink_to(victim)
    with pytest.raises(TidegateError, match="symbolic link"), lake_lock(str(lake)):
        pass
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("address", ["0.0.0.0:8085", "10.1.2.3:8085", "pubsub.example.com:8085"])
def test_only_a_loopback_emulator_is_accepted_unless_asked(cli, monkeypatch, address: str) -> None:  # type: ignore[no-untyped-def]
    """--emulator or PUBSUB_EMULATOR_HOST pointing off this machine is refused before any
    connection (the emulator has no authentication or TLS)."""
    from tidegate import settings
    from tidegate.catalog import load_catalog

    r = cli("produce", "--count", "1", "--emulator", address)
    assert r.code != 0
    assert "not a loopback address" in r.err
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", address)
    with pytest.raises(Exception, match="PUBSUB_EMULATOR_HOST"):
        settings.emulator_address(load_catalog())
    monkeypatch.setenv("TIDEGATE_ALLOW_REMOTE_EMULATOR", "1")
    assert settings.emulator_address(load_catalog()) == address  # on purpose: allowed
    for ok in ("127.0.0.1:8085", "[::1]:8085", "localhost:8085"):
        monkeypatch.delenv("TIDEGATE_ALLOW_REMOTE_EMULATOR")
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", ok)
        assert settings.emulator_address(load_catalog()) == ok
        monkeypatch.setenv("TIDEGATE_ALLOW_REMOTE_EMULATOR", "1")
