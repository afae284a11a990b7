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


def test_a_protector_tokenizes_under_its_current_version_and_survives_pickling() -> None:
    """token() keeps each class's sealer of the current version: a ring's other versions
    still detokenize, and a protector that has tokenized still pickles (its cache stays behind)."""
    import pickle

    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    first = PiiProtector(KeyRing(((1, old),), 1))
    ring = PiiProtector(KeyRing(((1, old), (2, new)), 2))
    before = first.token("ana@example.com", "email")
    assert before is not None
    assert before.startswith("pii_1_")
    now = ring.token("ana@example.com", "email")
    assert now is not None
    assert now.startswith("pii_2_")
    assert ring.token("ana@example.com", "email") == now  # deterministic: tokens join
    assert ring.token("ana@example.com", "text") != now  # classes do not
    assert ring.detokenize(before, "email") == ring.detokenize(now, "email") == "ana@example.com"
    again = pickle.loads(pickle.dumps(ring))
    assert again.token("ana@example.com", "email") == now


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


def _strings(value: object) -> list[str]:
    """Every string inside a value read back from Parquet (nested lists, structs, maps, bytes)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if value is not None else []


def lake_text(*roots: Path) -> str:
    """Everything a reader of these directories could see: every file's bytes, and every
    Parquet file's values decoded (compressed pages hide strings from a byte scan)."""
    import pyarrow.parquet as pq

    parts: list[str] = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            parts.append(data.decode("latin-1"))
            if f.suffix == ".parquet":
                for row in pq.read_table(f).to_pylist():
                    parts += _strings(row)
    return "\n".join(parts)


@pytest.mark.emulator
def test_pii_in_every_wrong_shape_reaches_no_file_of_the_lake_the_data_docs_or_the_report(
    pubsub_emulator, catalog, project, tmp_path: Path, cli, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Published with the plain client: personal data as a valid field, in the wrong type
    (array, object), nested in an unexpected field, in a truncated body, in ce-subject, in URL
    query strings and userinfo, in a custom attribute, in a structured-mode event, with a
    non-ASCII local part, as root@localhost, in an oversize body. After ingest, Data Docs and
    the report, no file holds any of those values in clear."""
    from tests.test_consumer import ingest, publish_plain, valid_orders
    from tidegate.infra.pubsub import provision
    from tidegate.producer import ProduceConfig, generate

    monkeypatch.setenv("TIDEGATE_PII_KEY", KEY)
    provision(catalog, pubsub_emulator.address, project)
    pii = {f"p{i}": f"person{i}.secret@privacy-test.example" for i in range(1, 12)}
    pii["p12"] = "jürgen.geheim@exämple-privat.de"
    pii["p13"] = "root@localhost"
    orders = valid_orders(catalog, 9, seed=41)

    def order(i: int, **changes: object) -> bytes:
        data = json.loads(orders[i][0])
        data.update(changes)
        return json.dumps(data, ensure_ascii=False).encode()

    ce = {k.removeprefix("ce-"): v for k, v in orders[7][1].items() if k.startswith("ce-")}
    structured = json.dumps(
        {
            **ce,
            "id": "structured-pii",
            "subject": pii["p9"],
            "data": json.loads(order(7, amount=None, customer_email=pii["p10"])),
        }
    ).encode()
    messages = [
        (order(0, customer_email=pii["p1"]), orders[0][1]),  # valid: tokenized in raw
        (order(1, customer_email=[pii["p2"]]), orders[1][1]),  # wrong type: array
        (order(2, customer_email={"address": pii["p3"]}), orders[2][1]),  # wrong type: object
        (
            order(3, contact={"customer_email": pii["p4"], "note": pii["p13"]}),
            orders[3][1],
        ),  # nested, unexpected
        (order(4, customer_email=pii["p5"])[:60], orders[4][1]),  # truncated JSON
        (order(5), {**orders[5][1], "ce-subject": pii["p6"]}),  # ce-subject of a valid event
        (order(6), {**orders[6][1], "x-contact": pii["p11"]}),  # a custom attribute
        (structured, {"content-type": "application/cloudevents+json"}),
        (order(8, coupon=pii["p12"]), orders[8][1]),  # non-ASCII local part, unexpected field
        (order(0, customer_email=pii["p1"], note="x" * 70_000 + pii["p1"]), {**orders[0][1], "ce-id": "big"}),
    ]
    publish_plain(pubsub_emulator.address, project, "shop-orders", messages)
    views = list(
        generate(
            ProduceConfig(types=("shop.page.viewed",), count=2, seed=3), catalog, ContractRegistryOf(catalog)
        )
    )
    page = json.loads(views[0].data)
    page["url"] = f"https://shop.example.com/account?email={pii['p7']}&tab=orders"
    page["referrer"] = f"https://{pii['p8'].split('@')[0]}:hunter2@mail.example.com/inbox"
    publish_plain(
        pubsub_emulator.address, project, "shop-pageviews", [(json.dumps(page).encode(), views[0].attributes)]
    )

    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator.address, catalog, project, lake)
    assert summary.received == len(messages) + 1
    assert summary.raw_written >= 3  # the valid order, the subject one, the attribute one, the page view
    docs, report = tmp_path / "docs", tmp_path / "report.html"
    assert cli("docs", "--lake", lake, "--out", docs).code == 0
    assert cli("report", "--lake", lake, "--out", report).code == 0

    text = lake_text(lake, docs, report)
    local_parts = [v.split("@")[0] for v in pii.values() if len(v.split("@")[0]) >= 8]  # not "root"
    forms = {
        k: {v, json.dumps(v)[1:-1], *(lp for lp in local_parts if v.startswith(lp))} for k, v in pii.items()
    }
    leaked = {k: sorted(f for f in fs if f in text) for k, fs in forms.items() if any(f in text for f in fs)}
    assert not leaked, leaked
    assert "hunter2" not in text
    q = pl.read_delta(QUARANTINE.uri(str(lake)))
    assert q.height >= 6  # every wrong shape was quarantined, with a reason
    wrong_type = q.filter(pl.col("rule") == "wrong_type").get_column("reason").to_list()
    assert any("customer_email" in r and "personal data" in r for r in wrong_type)


def ContractRegistryOf(catalog):  # type: ignore[no-untyped-def]
    from tidegate.expectations.contracts import ContractRegistry

    return ContractRegistry.from_catalog(catalog)


def test_a_field_no_contract_declares_is_withheld_from_the_quarantine_preview(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A producer adds a field the contract does not know (rejected `unexpected_field`): nobody
    declared whether it is personal data, so its value never reaches a readable column. The
    preview keeps its name (the reason names it too), the encrypted original keeps the value.
    Also for an unknown event type, and for a structured-mode event whose envelope is refused."""
    lake = tmp_path / "lake"
    monkeypatch.setenv("TIDEGATE_PII_KEY", KEY)
    phone = "+49 170 1234567"
    messages = orders(catalog, registry, 3)
    extra = _with(messages[0], "extra", phone=phone)
    unknown = _with(messages[1], "unknown", phone=phone)
    unknown = RawMessage(
        unknown.data,
        {**unknown.attributes, "ce-type": "shop.order.nope"},
        "unknown",
        None,
        unknown.subscription,
    )
    doc = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "//shop",
        "type": "shop.order.placed",
        "datacontenttype": "application/json",
        "data": {**json.loads(messages[2].data), "phone": phone},
    }  # no `time`: refused at the envelope, previewed from the body
    structured = RawMessage(
        json.dumps(doc).encode(),
        {"content-type": "application/cloudevents+json"},
        "structured",
        None,
        messages[2].subscription,
    )
    runner = BatchRunner(IngestConfig(str(lake), "r1", str(catalog.path), "t", "t"), single_writer=True)
    runner.run("b1", [extra, unknown, structured])

    q = pl.read_delta(QUARANTINE.uri(str(lake)))
    assert sorted(q.get_column("rule").to_list()) == ["missing_attribute", "unexpected_field", "unknown_type"]
    for row in q.iter_rows(named=True):
        readable = json.dumps({k: v for k, v in row.items() if k != "payload_encrypted"}, default=str)
        assert phone not in readable, row["rule"]
        preview = json.loads(row["payload_preview"])
        payload = preview["data"] if row["rule"] == "missing_attribute" else preview
        assert payload["phone"] == "(withheld: not in the contract)"
        assert payload["order_id"].startswith("ord_")  # declared fields stay readable
    protector = PiiProtector(KeyRing.parse(KEY.encode(), "test"))
    originals = [json.loads(protector.decrypt(e)) for e in q.get_column("payload_encrypted").to_list()]
    assert all(phone in json.dumps(o) for o in originals)  # forensics keep the value, encrypted
