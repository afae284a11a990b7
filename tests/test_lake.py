"""Delta writes on real tables in tmp_path: idempotent inserts, schema evolution, lineage,
PII tokens and quarantine rows that never hold PII in clear. No Beam here."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag
from deltalake import DeltaTable, write_deltalake

from tests.checking import check_batch
from tidegate.errors import ConfigError
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.pii import (
    DEV_KEY,
    KeyRing,
    PiiPolicy,
    PiiProtector,
    key_problem,
    load_protector,
)
from tidegate.lake.pii import pii_policies as policies_of
from tidegate.lake.rows import commit_metadata, quarantine_rows, raw_rows, trace_id
from tidegate.lake.tables import raw_schema
from tidegate.lake.writer import append_new, dedupe, insert_new
from tidegate.producer import EXPECTED_RULE, ProduceConfig, generate

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY = b"0d5cbd2f6b4e8a91c3f7e2a4b6d8f0a1c3e5f7092b4d6f8a0c2e4f6a8b0d2f4e"  # random, as token_hex(32)
OTHER_KEY = b"7c1e9a3f5b2d8c6e4a0f2b9d7e5c3a1f8d6b4e2c0a9f7e5d3c1b0a8f6e4d2c1b"


def table(ids: list[str], day: date = date(2026, 11, 26), **extra: list) -> pa.Table:  # type: ignore[type-arg]
    return pa.table({"id": ids, "d": [day] * len(ids), "v": list(range(len(ids))), **extra})


def test_dedupe_keeps_the_first_occurrence_in_input_order() -> None:
    t = table(["c", "a", "c", "b", "a"])
    assert dedupe(t, ["id"]).to_pydict() == {
        "id": ["c", "a", "b"],
        "d": [date(2026, 11, 26)] * 3,
        "v": [0, 1, 3],
    }


def test_insert_new_is_idempotent_and_append_only(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = insert_new(uri, table(["a", "b", "a"]), keys=["id"], partition_by=["d"], prune_on="d")
    assert (first.offered, first.inserted, first.version) == (2, 2, 0)
    again = insert_new(uri, table(["a", "b"]), keys=["id"], partition_by=["d"], prune_on="d")
    assert (again.inserted, again.version) == (0, 0)  # nothing new: no commit at all
    more = insert_new(uri, table(["b", "c"]), keys=["id"], partition_by=["d"], prune_on="d")
    assert (more.inserted, more.version) == (1, 1)
    rows = pl.read_delta(uri).sort("id")
    assert rows.get_column("id").to_list() == ["a", "b", "c"]
    assert rows.filter(pl.col("id") == "b").get_column("v").to_list() == [1]  # never updated
    ops = [h["operation"] for h in DeltaTable(uri).history()]
    assert set(ops) <= {"WRITE", "MERGE"}  # only inserts: no UPDATE, DELETE, OPTIMIZE rewrites


@pytest.mark.parametrize("path", ["merge", "key index"])
def test_dedup_reaches_back_as_far_as_the_horizon_by_ingest_time_whatever_the_date(
    tmp_path: Path, path: str
) -> None:
    """The dedup horizon is by ingest time: a key landed 3 days ago is a duplicate on any event
    date; one landed 10 days ago (past the 7-day horizon) lands again, as documented. Both
    commit paths (the horizon MERGE, the key index) agree; a different digest is a conflict."""
    uri = str(tmp_path / "t")
    now = datetime.now(UTC)
    stamped = pa.timestamp("us", tz="UTC")
    landed = pa.table(
        {
            "id": ["old", "recent"],
            "d": [date(2026, 1, 1), date(2026, 1, 2)],
            "ingest_time": pa.array([now - timedelta(days=10), now - timedelta(days=3)], stamped),
            "digest": ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"],
        }
    )
    write_deltalake(uri, landed, partition_by=["d"])
    again = pa.table(
        {
            "id": ["old", "recent", "recent"],
            "d": [date(2026, 6, 1)] * 3,  # another date than the landed copies
            "ingest_time": pa.array([now] * 3, stamped),
            "digest": ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"],
        }
    )
    if path == "merge":
        done = insert_new(uri, again, keys=["id"], horizon=timedelta(days=7), conflict_on="digest")
    else:
        index = KeyIndex(uri, ["id"], horizon=timedelta(days=7), value="digest")
        done = append_new(uri, again, keys=["id"], index=index)
    assert (done.offered, done.inserted) == (2, 1)
    assert done.conflicts == ((2, "bbbbbbbbbbbbbbbb"),)  # the third row: "recent" with another digest
    assert sorted(pl.read_delta(uri).get_column("id")) == ["old", "old", "recent"]


def test_schema_evolves_with_a_new_optional_column(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    insert_new(uri, table(["a"]), keys=["id"])
    insert_new(uri, table(["b"], coupon=["VIP20"]), keys=["id"])
    rows = pl.read_delta(uri).sort("id")
    assert rows.get_column("coupon").to_list() == [None, "VIP20"]


def test_every_commit_carries_its_metadata(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    meta = commit_metadata(
        run_id="run-1",
        batch_ids=["b1"],
        code_version="0.1.0",
        git_sha="abc",
        subscriptions=["s"],
        message_ids=["3", "10", "7"],
    )
    insert_new(uri, table(["a"]), keys=["id"], metadata=meta)
    h = DeltaTable(uri).history()[0]
    assert h["tidegate_run_id"] == "run-1"
    assert h["tidegate_git_sha"] == "abc"
    assert (h["tidegate_message_id_min"], h["tidegate_message_id_max"], h["tidegate_message_count"]) == (
        "3",
        "10",
        "3",
    )
    assert len(h["tidegate_message_digest"]) == 64


def test_raw_schema_is_envelope_then_contract_with_honest_nullability(registry) -> None:  # type: ignore[no-untyped-def]
    schema = raw_schema(registry.types["shop.order.placed"])
    assert schema.names[:3] == ["event_id", "event_time", "event_date"]
    assert schema.field("amount").type == pa.decimal128(12, 2)
    assert not schema.field("amount").nullable  # required in v1 and v2
    assert schema.field("coupon_code").nullable  # only in v2: v1 rows read null
    assert schema.field("customer_email").metadata[b"pii"] == b"true"


def test_trace_id_comes_from_a_well_formed_traceparent() -> None:
    assert (
        trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        == "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert trace_id("garbage") is None
    assert trace_id(None) is None


def test_pii_tokens_are_keyed_deterministic_per_class_and_reversible_only_with_the_key() -> None:
    a, b = PiiProtector(KEY), PiiProtector(OTHER_KEY)
    token = a.token("lena.weber@web.de", "email")
    assert token == a.token("lena.weber@web.de", "email")  # joinable
    assert token != b.token("lena.weber@web.de", "email")  # keyed
    assert token != a.token("lena.weber@web.de", "customer_id")  # per class
    assert token is not None
    assert token.startswith("pii_1_")
    assert "lena" not in token
    assert a.detokenize(token, "email") == "lena.weber@web.de"
    with pytest.raises(InvalidTag):
        b.detokenize(token, "email")  # another key cannot open it
    with pytest.raises(InvalidTag):
        a.detokenize(token, "customer_id")  # nor another class's subkey
    # the length shows only to 16 bytes
    assert len(a.token("ab", "email") or "") == len(a.token("abcdefghijklmno", "email") or "")
    assert a.decrypt(a.encrypt(b"original bytes")) == b"original bytes"
    assert a.mask_text("mail me at lena.weber@web.de now") == f"mail me at {a.token('lena.weber@web.de')} now"


def test_the_key_id_names_the_key_without_letting_a_reader_test_a_guess() -> None:
    protector = PiiProtector(KEY)
    assert protector.key_id == PiiProtector(KEY).key_id != PiiProtector(OTHER_KEY).key_id
    assert protector.key_id not in hashlib.sha256(KEY).hexdigest()  # not a hash of the key


def test_masking_reaches_what_the_old_regex_missed() -> None:
    p = PiiProtector(KEY)
    for text in ("root@localhost", "jürgen.müller@exämple.de", '"alice@examp', "a.b+c@x.io"):
        masked = p.mask_text(text)
        assert "@" not in masked, masked
    assert p.preview(None) is None  # an unparsed payload gets no preview at all
    nested = {"order": {"customer_email": "deep@example.org", "lines": [{"customer_email": ["x@y.z"]}]}}
    text = p.preview(nested, {"customer_email": "email"}) or ""
    assert "deep@" not in text
    assert "x@y.z" not in text
    url = p.mask_url("https://u:pw@shop.example.com/p/42?email=carol@example.org&utm=x#top")
    assert url.startswith("https://pii_1_")
    assert "/p/42?email=pii_1_" in url
    assert "carol" not in url
    assert "pw" not in url.split("@")[0].removeprefix("https://pii_1_")


def test_key_handling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE", "TIDEGATE_PII_KEY_SECRET", "TIDEGATE_ENV"):
        monkeypatch.delenv(var, raising=False)
    protector, warning = load_protector()
    assert protector.ring.secret(1) == DEV_KEY
    assert protector.development
    assert warning
    # anything near production refuses the public development key
    for near in ({"production": True}, {"gcp": True}, {"lake": "gs://acme-lake/lake"}):
        with pytest.raises(ConfigError, match="public development key"):
            load_protector(**near)  # type: ignore[arg-type]
    assert load_protector(lake="file:///tmp/lake")[0].development  # a local lake is not production
    monkeypatch.setenv("TIDEGATE_ENV", "production")
    with pytest.raises(ConfigError):
        load_protector()
    (tmp_path / "key").write_bytes(KEY + b"\n")
    monkeypatch.setenv("TIDEGATE_PII_KEY_FILE", str(tmp_path / "key"))
    protector, warning = load_protector()
    assert protector.ring.secret(1) == KEY
    assert warning is None
    monkeypatch.setenv("TIDEGATE_PII_KEY", "short")
    with pytest.raises(ConfigError, match="at least 32"):
        load_protector()
    # --production refuses the development key's bytes and an obviously weak key...
    monkeypatch.setenv("TIDEGATE_PII_KEY", DEV_KEY.decode())
    with pytest.raises(ConfigError, match="public development key"):
        load_protector()
    monkeypatch.setenv("TIDEGATE_PII_KEY", "a" * 32)
    with pytest.raises(ConfigError, match="low-entropy"):
        load_protector()
    # ... which locally is only a warning
    monkeypatch.delenv("TIDEGATE_ENV")
    protector, warning = load_protector()
    assert "low-entropy" in (warning or "")


def test_rotation_keeps_every_version_usable_and_retokenizes(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.single(KEY)
    old = PiiProtector(ring)
    token, sealed = old.token("lena@web.de", "email"), old.encrypt(b"original")
    rotated = ring.rotated()
    assert (rotated.current, [v for v, _ in rotated.keys]) == (2, [1, 2])
    assert key_problem(rotated.secret(2)) is None  # a new random key
    new = PiiProtector(KeyRing.parse(rotated.to_json().encode(), "test"))
    assert new.key_version == 2
    assert (new.token("lena@web.de", "email") or "").startswith("pii_2_")  # new rows: newest key
    assert new.detokenize(token or "", "email") == "lena@web.de"  # old tokens: still readable
    assert new.decrypt(sealed) == b"original"  # old originals: still decryptable (MultiFernet)
    assert new.retokenize(token, "email") == new.token("lena@web.de", "email")
    assert new.decrypt(new.reencrypt(sealed)) == b"original"
    text = f"reason mentions {token} and {old.token('x@y.io', 'text')}"
    moved = new.retokenize_text(text, ["email"]) or ""
    assert "pii_1_" not in moved
    assert new.token("lena@web.de", "email") in moved
    assert old.key_id != new.key_id
    monkeypatch.setenv("TIDEGATE_PII_KEY", rotated.to_json())
    assert load_protector(production=True)[0].key_version == 2


SECRET = "projects/acme-data/secrets/tidegate-pii-key/versions/latest"


def test_the_key_comes_from_secret_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """How Dataflow workers get the key: the config carries the secret's name, each worker
    process reads the value once (a loopback Secret Manager stands in for Google's)."""
    from tests.gcp_fakes import secret_manager
    from tidegate.lake.pii import fetch_secret

    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE", "TIDEGATE_PII_KEY_SECRET", "TIDEGATE_ENV"):
        monkeypatch.delenv(var, raising=False)
    with secret_manager({SECRET: KEY + b"\n"}, monkeypatch) as fake:
        protector, warning = load_protector(production=True, secret=SECRET)
        assert protector.ring.secret(1) == KEY
        assert warning is None
        assert not protector.development
        load_protector(production=True, secret=SECRET)
        assert fake.requests == [SECRET]  # once per process, not per bundle
        monkeypatch.setenv("TIDEGATE_PII_KEY_SECRET", SECRET)
        assert load_protector(production=True)[0].ring.secret(1) == KEY  # or named by the environment
        monkeypatch.setenv("TIDEGATE_PII_KEY", OTHER_KEY.decode())
        assert (
            load_protector(production=True, secret=SECRET)[0].ring.secret(1) == OTHER_KEY
        )  # explicit key wins
        monkeypatch.delenv("TIDEGATE_PII_KEY")

        missing = SECRET.replace("tidegate-pii-key", "nope")
        with pytest.raises(ConfigError, match="does not exist") as exc:
            load_protector(production=True, secret=missing)
        assert "gcloud secrets versions add nope" in (exc.value.hint or "")
        fake.denied.add(SECRET)
        fetch_secret.cache_clear()
        with pytest.raises(ConfigError, match="not allowed to read") as exc:
            load_protector(production=True, secret=SECRET)
        assert "secretAccessor" in (exc.value.hint or "")
        with pytest.raises(ConfigError, match="is not a Secret Manager secret version"):
            load_protector(secret="tidegate-pii-key")
        fake.secrets["projects/acme-data/secrets/short/versions/1"] = b"too short"
        with pytest.raises(ConfigError, match="at least 32"):
            load_protector(secret="projects/acme-data/secrets/short/versions/1")


def _checked(catalog, registry, validator, **kw):  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=("shop.order.placed",), count=600, seed=13, **kw)
    msgs = list(generate(config, catalog, registry))
    raw = [
        RawMessage(m.data, m.attributes, message_id=str(m.seq), subscription="shop-orders-tidegate")
        for m in msgs
    ]
    return msgs, check_batch(raw, catalog, registry, validator)


def test_raw_rows_tokenize_pii_and_keep_lineage(catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    _, checked = _checked(catalog, registry, validator)
    contracts = registry.types["shop.order.placed"]
    t = raw_rows(
        checked.valid,
        raw_schema(contracts),
        PiiPolicy(dict(contracts.latest.pii_classes)),
        PiiProtector(KEY),
        run_id="r",
        batch_id="b",
        ingest_time=NOW,
    )
    assert t.num_rows == len(checked.valid) == 600
    emails = t.column("customer_email").to_pylist()
    assert all(e.startswith("pii_") for e in emails)
    assert not any("@" in e for e in emails)
    assert set(t.column("schema_version").to_pylist()) == {1, 2}
    assert set(t.column("run_id").to_pylist()) == {"r"}
    assert t.schema == raw_schema(contracts)


def test_quarantine_rows_never_hold_pii_in_clear(catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    msgs, checked = _checked(catalog, registry, validator, invalid_rate=1.0)
    protector = PiiProtector(KEY)
    t = quarantine_rows(
        checked.rejected, policies_of(catalog, registry), protector, run_id="r", batch_id="b", now=NOW
    )
    assert t.num_rows == 600
    clear = {json.loads(m.data)["customer_email"] for m in msgs if m.kind == "not_in_set"}
    text = json.dumps(t.drop_columns(["payload_encrypted"]).to_pylist(), default=str)
    assert "@" not in text  # no e-mail in preview, reasons, failures or attributes
    for email in list(clear)[:20]:
        assert email not in text
    by_id = {r["pubsub_message_id"]: r for r in t.to_pylist()}
    for m in msgs:
        row = by_id[str(m.seq)]
        assert (row["stage"], row["rule"]) == EXPECTED_RULE[m.kind]
        assert protector.decrypt(row["payload_encrypted"]) == m.data  # forensics keep the original
        assert row["payload_size"] == len(m.data)


def test_compaction_merges_partitions_with_many_small_files_and_never_changes_rows(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    from tidegate.lake.maintenance import compact_small_files

    uri = str(tmp_path / "t")
    for i in range(24):  # one file per "batch": 20 in partition busy, 4 in partition quiet
        part = "quiet" if i % 6 == 0 else "busy"
        write_deltalake(uri, pa.table({"n": [i], "p": [part]}), partition_by=["p"], mode="append")
    before = sorted(DeltaTable(uri).to_pyarrow_table().column("n").to_pylist())

    assert compact_small_files(uri, min_files=8) == 20
    table = DeltaTable(uri)
    files = pa.table(table.get_add_actions(flatten=True)).column("partition.p").to_pylist()
    assert sorted(files) == ["busy", "quiet", "quiet", "quiet", "quiet"]
    assert sorted(table.to_pyarrow_table().column("n").to_pylist()) == before
    assert table.history(1)[0]["operation"] == "OPTIMIZE"
    assert compact_small_files(uri, min_files=8) == 0  # nothing left worth compacting
    assert compact_small_files(str(tmp_path / "missing"), min_files=8) == 0


def test_a_doc_edited_in_a_new_contract_version_does_not_change_the_raw_schema(registry) -> None:  # type: ignore[no-untyped-def]
    """Delta refuses to merge a column whose metadata changed: the raw column keeps the doc of
    the first version that has the field (shop.order.placed v2 rewords customer_email's)."""
    contracts = registry.types["shop.order.placed"]
    v1, v2 = contracts.versions[1], contracts.versions[2]
    assert (
        v1.arrow_schema.field("customer_email").metadata != v2.arrow_schema.field("customer_email").metadata
    )
    assert (
        raw_schema(contracts).field("customer_email").metadata
        == v1.arrow_schema.field("customer_email").metadata
    )


def test_the_streaming_jobs_maintenance_tick_compacts_and_checkpoints(tmp_path: Path) -> None:
    """MaintainTables' DoFn (what the Dataflow job runs every 5 minutes): partitions with many
    small files are compacted, a checkpoint is written, and rows never change."""
    from tidegate.pipelines.streaming import CompactFn

    uri = str(tmp_path / "t")
    for i in range(20):
        write_deltalake(uri, pa.table({"n": [i], "p": ["busy"]}), partition_by=["p"], mode="append")
    fn = CompactFn([uri, str(tmp_path / "absent")], min_files=8, storage=None)
    assert list(fn.process(None)) == [20]
    table = DeltaTable(uri)
    assert len(table.file_uris()) == 1
    assert sorted(table.to_pyarrow_table().column("n").to_pylist()) == list(range(20))
    assert any(p.name.endswith(".checkpoint.parquet") for p in (tmp_path / "t" / "_delta_log").iterdir())
