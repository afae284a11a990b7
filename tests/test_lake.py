"""Delta writes on real tables in tmp_path: idempotent inserts, schema evolution, lineage,
PII tokens and quarantine rows that never hold PII in clear. No Beam here."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.checking import check_batch
from tidegate.errors import ConfigError
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.pii import DEV_KEY, PiiProtector, load_protector
from tidegate.lake.rows import commit_metadata, quarantine_rows, raw_rows, trace_id
from tidegate.lake.tables import raw_schema
from tidegate.lake.writer import append_new, dedupe, insert_new
from tidegate.producer import EXPECTED_RULE, ProduceConfig, generate

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY = b"k" * 40


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


def test_pii_tokens_are_keyed_deterministic_and_opaque() -> None:
    a, b = PiiProtector(KEY), PiiProtector(b"x" * 40)
    token = a.token("lena.weber@web.de")
    assert token == a.token("lena.weber@web.de")
    assert token != b.token("lena.weber@web.de")
    assert token is not None
    assert token.startswith("pii_")
    assert "lena" not in token
    assert a.decrypt(a.encrypt(b"original bytes")) == b"original bytes"
    assert a.mask_text("mail me at lena.weber@web.de now") == f"mail me at {token} now"


def test_key_handling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIDEGATE_PII_KEY", raising=False)
    monkeypatch.delenv("TIDEGATE_PII_KEY_FILE", raising=False)
    monkeypatch.delenv("TIDEGATE_ENV", raising=False)
    protector, warning = load_protector()
    assert protector.key == DEV_KEY
    assert protector.development
    assert warning
    with pytest.raises(ConfigError, match="production mode needs a PII key"):
        load_protector(production=True)
    monkeypatch.setenv("TIDEGATE_ENV", "production")
    with pytest.raises(ConfigError):
        load_protector()
    (tmp_path / "key").write_text("s" * 48 + "\n")
    monkeypatch.setenv("TIDEGATE_PII_KEY_FILE", str(tmp_path / "key"))
    protector, warning = load_protector()
    assert protector.key == b"s" * 48
    assert warning is None
    monkeypatch.setenv("TIDEGATE_PII_KEY", "short")
    with pytest.raises(ConfigError, match="at least 32"):
        load_protector()


SECRET = "projects/acme-data/secrets/tidegate-pii-key/versions/latest"


def test_the_key_comes_from_secret_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """How Dataflow workers get the key: the config carries the secret's name, each worker
    process reads the value once (a loopback Secret Manager stands in for Google's)."""
    from tests.gcp_fakes import secret_manager
    from tidegate.lake.pii import fetch_secret

    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE", "TIDEGATE_PII_KEY_SECRET", "TIDEGATE_ENV"):
        monkeypatch.delenv(var, raising=False)
    with secret_manager({SECRET: b"k" * 64 + b"\n"}, monkeypatch) as fake:
        protector, warning = load_protector(production=True, secret=SECRET)
        assert protector.key == b"k" * 64
        assert warning is None
        assert not protector.development
        load_protector(production=True, secret=SECRET)
        assert fake.requests == [SECRET]  # once per process, not per bundle
        monkeypatch.setenv("TIDEGATE_PII_KEY_SECRET", SECRET)
        assert load_protector(production=True)[0].key == b"k" * 64  # or named by the environment
        monkeypatch.setenv("TIDEGATE_PII_KEY", "e" * 40)
        assert load_protector(production=True, secret=SECRET)[0].key == b"e" * 40  # explicit key wins
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
        contracts.latest.pii_fields,
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
    t = quarantine_rows(checked.rejected, registry, protector, run_id="r", batch_id="b", now=NOW)
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
