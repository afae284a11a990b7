"""The batch worker (pipelines/local/worker.py): each batch's Beam pipeline in a child process.
Real Beam, real Delta in a temp dir, real processes and signals; no emulator."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tidegate.catalog import Catalog
from tidegate.lake.tables import raw_uri
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.pipelines.local.worker import BatchWorker, WorkerDied
from tidegate.transforms.base import IngestConfig

from .test_batch import orders


@pytest.fixture(scope="module")
def worker(catalog: Catalog):  # type: ignore[no-untyped-def]
    w = BatchWorker(str(catalog.path))
    yield w
    w.close()


def _runner(catalog: Catalog, lake: Path, worker: BatchWorker) -> BatchRunner:
    config = IngestConfig(str(lake), "run-w", str(catalog.path), "t", "t")
    return BatchRunner(config, sleep=lambda s: None, single_writer=True, worker=worker)


def test_a_batch_runs_in_the_worker_process_and_its_log_lines_reach_the_parent(
    catalog, registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    messages = orders(catalog, registry, 25)
    worker = BatchWorker(str(catalog.path))  # its own: it logs "ready" at the level of its start
    pid = worker.pid
    try:
        run = _runner(catalog, tmp_path / "lake", worker).run("b1", messages)
        again = _runner(catalog, tmp_path / "lake", worker).run("b2", messages)  # a redelivery
    finally:
        worker.close()
    assert pid is not None
    assert pid != os.getpid()
    assert worker.starts == 1
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 25
    assert sum(c.inserted for c in run.commits if c.kind == "raw") == 25
    assert run.metrics
    assert run.beam_seconds > 0
    # the same messages again: the worker's key index skips them all
    assert sum(c.inserted for c in again.commits if c.kind == "raw") == 0
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 25
    ready = [r for r in caplog.records if "batch worker" in r.getMessage() and "ready" in r.getMessage()]
    assert ready
    assert ready[0].process == pid


def test_a_crash_in_the_worker_is_isolated_to_its_message_like_in_process(
    catalog, registry, tmp_path: Path, worker: BatchWorker, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = orders(catalog, registry, 30)
    # set after the worker started: each batch carries the parent's environment
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", messages[11].attributes["ce-id"])
    run = _runner(catalog, tmp_path / "lake", worker).run("b1", messages)
    assert run.poison == [11]
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 29


def test_a_worker_killed_by_a_message_is_restarted_and_the_message_isolated(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """A SIGKILL inside the worker (a native crash, the OOM killer) on one message: the ingest
    lives on, the batch is split as for any crash, the rest commits, the culprit is poison."""
    messages = orders(catalog, registry, 6)
    monkeypatch.setenv("TIDEGATE_FAULT_DIE_ON", messages[4].attributes["ce-id"])
    w = BatchWorker(str(catalog.path))
    try:
        run = _runner(catalog, tmp_path / "lake", w).run("b1", messages)
    finally:
        w.close()
    assert run.poison == [4]
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 5
    assert w.starts >= 3  # the first, then one after each death (the whole batch, then the halves)
    died = [r.getMessage() for r in caplog.records if "poison message" in r.getMessage()]
    assert died
    assert "WorkerDied" in died[0]
    assert "SIGKILL" in died[0]


def test_a_dead_worker_is_reported_as_a_crash_with_what_to_look_at(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = orders(catalog, registry, 1)
    monkeypatch.setenv("TIDEGATE_FAULT_DIE_ON", messages[0].attributes["ce-id"])
    w = BatchWorker(str(catalog.path))
    config = IngestConfig(str(tmp_path / "lake"), "run-w", str(catalog.path), "t", "t")
    try:
        with pytest.raises(WorkerDied, match=r"killed by SIGKILL.*native code or the OOM killer"):
            w.run(config, "b1", messages)
        monkeypatch.delenv("TIDEGATE_FAULT_DIE_ON")
        commits, _ = w.run(config, "b2", messages)  # started again
        assert w.starts == 2
        assert sum(c.inserted for c in commits if c.kind == "raw") == 1
    finally:
        w.close()


def test_the_worker_dies_with_its_parent(catalog: Catalog) -> None:
    """A SIGKILLed ingest leaves no writer behind that a restarted ingest would race."""
    code = (
        "import sys, time; from tidegate.pipelines.local.worker import BatchWorker; "
        f"w = BatchWorker({str(catalog.path)!r}); print(w.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            with open(f"/proc/{child}/stat") as fh:  # a zombie (reaped by init soon) is dead too
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    return
            time.sleep(0.1)
        pytest.fail(f"batch worker {child} outlived its SIGKILLed parent")
    finally:
        parent.kill()
