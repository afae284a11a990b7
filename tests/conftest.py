"""Shared fixtures: real things, never mocks of them.

- `pubsub_emulator`: one private Cloud SDK Pub/Sub emulator per test session, on a free
  loopback port, stopped at the end. A test never depends on, or collides with, an emulator
  a developer left running (PUBSUB_EMULATOR_HOST is cleared for the session).
- `project`: a fresh GCP project id per test, so every test sees an empty Pub/Sub world on
  the shared emulator (the emulator isolates resources by project).
- `gcs_emulator`: one private GCS emulator (fake-gcs-server from the dev dependencies, behind
  tidegate's fixing proxy) per session; `gs_prefix` is a fresh `gs://` location in it per test.
  A missing binary fails the test with the launcher's hint, never a silent skip.
- `registry` / `validator`: the shipped contracts and a real GX context (built once).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidegate.catalog import Catalog, load_catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.suites import SuiteValidator
from tidegate.infra.emulator import EmulatorProcess, private_emulator
from tidegate.infra.gcs_emulator import GcsEmulator, private_gcs_emulator

_projects = itertools.count(1)
# google-auth probes the GCE metadata server (a non-loopback address) when it finds no
# credentials; tests must never send traffic off this machine. Read at google.auth import.
os.environ["NO_GCE_CHECK"] = "true"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("PUBSUB_EMULATOR_HOST", "TIDEGATE_HOME", "TIDEGATE_CATALOG")}
    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    os.environ.pop("TIDEGATE_CATALOG", None)
    os.environ["COLUMNS"] = "200"  # before tidegate.cli creates its rich consoles: no wrapping
    os.environ["TIDEGATE_HOME"] = str(tmp_path_factory.mktemp("tidegate-home"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with private_emulator(tmp_path_factory.mktemp("emulator-logs")) as proc:
        yield proc


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    with private_gcs_emulator("tidegate-test") as gcs:
        yield gcs


@pytest.fixture
def gs_prefix(gcs_emulator: GcsEmulator, request: pytest.FixtureRequest) -> str:
    """A `gs://` location of its own for this test (nothing to wipe: names never repeat)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return gcs_emulator.uri(f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def project() -> str:
    return f"tg-test-{os.getpid() % 10000}-{next(_projects)}"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def registry(catalog: Catalog) -> ContractRegistry:
    return ContractRegistry.from_catalog(catalog)


@pytest.fixture(scope="session")
def validator(registry: ContractRegistry) -> SuiteValidator:
    return SuiteValidator(registry)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err
        # rich wraps long lines to the terminal width: compare on collapsed whitespace
        self.text = " ".join((out + "\n" + err).split())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the real console-script entry point in-process: `cli("up", "--catalog", p)`."""
    from tidegate.cli import main

    def run(*args: str | Path) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["tidegate", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_catalog(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    return p


CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "tidegate" / "expectations" / "contracts"
