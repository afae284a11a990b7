"""Every command's exit code, for the mistakes people make: 0 ok, 1 a check failed, 2 a user
error, 3 the platform is missing. Never a traceback, never "this is a bug"."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CONTRACTS_DIR

SHIPPED = Path(__file__).resolve().parent.parent / "tidegate" / "infra" / "catalog.yaml"


def typo_catalog(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text().replace("contracts: ../expectations/contracts", f"contracts: {CONTRACTS_DIR}")
    assert old in text
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "catalog.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


def bad_invocations(tmp_path: Path) -> list[tuple[list[str], int, str]]:
    missing = str(tmp_path / "no-such-lake")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a lake")
    readme = str(Path(__file__).resolve().parent.parent / "README.md")
    field_typo = str(
        typo_catalog(
            tmp_path / "f",
            "{fn: sum, field: amount, name: revenue}",
            "{fn: sum, field: amout, name: revenue}",
        )
    )
    key_typo = str(typo_catalog(tmp_path / "k", "keys: [currency]", "keys: [curency]"))
    unknown_key = str(
        typo_catalog(
            tmp_path / "u",
            "    compatibility: FULL_TRANSITIVE\n",
            "    compatibility: FULL_TRANSITIVE\n    retension: 7d\n",
        )
    )
    return [
        (["report", "--lake", missing], 2, "no tidegate tables"),
        (["verify", "--lake", missing], 2, "no tidegate tables"),
        (["status", "--lake", missing, "--backlog", "off"], 2, "no tidegate tables"),
        (["docs", "--lake", missing], 2, "no tidegate tables"),
        (["quarantine", "list", "--lake", missing], 2, "no tidegate tables"),
        (["lineage", "raw/shop.order.placed", "--lake", missing], 2, "no tidegate tables"),
        (["maintain", "--lake", missing], 2, "no tidegate tables"),
        (["ingest", "--lake", str(a_file), "--emulator", "127.0.0.1:9"], 2, "cannot use"),
        (["status", "--lake", str(a_file)], 2, "is a file, not a directory"),
        # a local ingest has no dry run: it once ingested for real (consumed, committed, acked)
        (["ingest", "--dry-run", "--lake", missing, "--emulator", "127.0.0.1:9"], 2, "no dry run"),
        (["ingest", "--job-file", str(tmp_path / "j.json"), "--lake", missing], 2, "--mode streaming"),
        (["verify", "--manifest", readme, "--lake", missing], 2, "manifest"),
        (["verify", "--manifest", str(tmp_path / "nope.jsonl")], 2, "manifest"),
        (["contracts", "check", "--catalog", field_typo], 2, "'amout'"),
        (["contracts", "check", "--catalog", key_typo], 2, "'curency'"),
        (["ingest", "--catalog", field_typo, "--emulator", "127.0.0.1:9"], 2, "'amout'"),
        (["replay", "revenue_per_currency_1m", "--catalog", field_typo], 2, "'amout'"),
        (["contracts", "list", "--catalog", unknown_key], 2, "retension"),
        (["contracts", "list", "--catalog", readme], 2, "catalog"),
        (["ingest", "--emulator", "127.0.0.1:9", "--lake", missing], 3, "no Pub/Sub emulator"),
        (["produce", "--emulator", "127.0.0.1:9", "--count", "1"], 3, "no Pub/Sub emulator"),
        (["keys", "rotate", "--keyring-file", str(tmp_path / "ring.json")], 2, "TIDEGATE_PII_KEY"),
        (["bench", "dedup", "--rows", "0"], 2, "--rows"),
        (["bench", "writers", "--writers", "0,x"], 2, "--writers"),
        (["contracts", "show", "shop.nope"], 2, "unknown event type"),
        (["replay", "nope"], 2, "unknown aggregate"),
        # last: were the check missing, `up` would start an emulator on that port
        (["up", "--catalog", field_typo, "--emulator", "127.0.0.1:9"], 2, "'amout'"),
    ]


def test_bad_invocations_exit_with_their_documented_code_and_no_traceback(
    cli, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    for var in ("TIDEGATE_PII_KEY", "TIDEGATE_PII_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    wrong = []
    try:
        for args, code, words in bad_invocations(tmp_path):
            r = cli(*args)
            ok = r.code == code and words in r.text and "Traceback" not in r.text and "bug" not in r.text
            if not ok:
                wrong.append(f"{' '.join(args)} -> {r.code}: {r.text.strip()[:300]}")
    finally:
        cli("down")  # should a regression have started an emulator, stop it
    assert not wrong, "\n".join(wrong)


def test_an_emulator_launcher_that_cannot_run_is_a_platform_error(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """TIDEGATE_PUBSUB_EMULATOR naming a file that is not executable, or not a program, once
    ended in "PermissionError ... This is a bug in tidegate"."""
    from tidegate.infra.emulator import free_port

    not_executable = tmp_path / "launcher.txt"
    not_executable.write_text("not a launcher")
    not_a_program = tmp_path / "launcher.bin"
    not_a_program.write_bytes(b"\x7fELF not really")
    not_a_program.chmod(0o755)
    for launcher, words in ((not_executable, "is not executable"), (not_a_program, "could not be started")):
        monkeypatch.setenv("TIDEGATE_PUBSUB_EMULATOR", str(launcher))
        r = cli("up", "--emulator", f"127.0.0.1:{free_port()}")
        assert r.code == 3, r.text
        assert words in r.text
        assert "TIDEGATE_PUBSUB_EMULATOR" in r.text or "launcher" in r.text
        assert "Traceback" not in r.text
        assert "bug" not in r.text
