"""OpenLineage run events from real ingest runs and replays: file transport under the lake by
default, HTTP to a receiver on loopback when configured; naming conventions, facets, and run
ids that lead to the Delta commits and back."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from deltalake import DeltaTable

from tests.test_ingest import ingest, produce
from tidegate.infra.pubsub import provision
from tidegate.lake.openlineage import run_uuid
from tidegate.lake.tables import raw_uri

pytestmark = pytest.mark.emulator


def events(lake: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (lake / "_openlineage" / "events.jsonl").read_text().splitlines()]


def test_ingest_runs_and_batches_emit_lineage_with_facets(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    produce(pubsub_emulator, catalog, project, tmp_path / "m.jsonl", count=700, invalid_rate=0.1, seed=3)
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator, catalog, project, lake, max_batch=300)
    got = events(lake)
    run = [e for e in got if e["job"]["name"] == "ingest"]
    assert [e["eventType"] for e in run] == ["START", "COMPLETE"]
    assert run[0]["run"]["runId"] == run_uuid(summary.run_id)
    assert run[0]["run"]["facets"]["tidegate"]["runId"] == summary.run_id
    assert {i["namespace"] for i in run[0]["inputs"]} == {"pubsub"}
    assert {i["name"] for i in run[0]["inputs"]} == {
        f"subscription:{project}:{s.subscription}" for s in catalog.streams
    }

    batches = [e for e in got if e["job"]["name"] == "ingest.batch"]
    complete = [e for e in batches if e["eventType"] == "COMPLETE"]
    assert len(complete) == summary.batches
    assert len([e for e in batches if e["eventType"] == "START"]) == summary.batches
    for e in complete:
        assert e["run"]["facets"]["parent"]["run"]["runId"] == run_uuid(summary.run_id)
        assert e["job"]["namespace"] == "tidegate"
    outputs = [o for e in complete for o in e["outputs"]]
    raw_out = [o for o in outputs if "/raw/" in o["name"]]
    assert all(o["namespace"] == "file" and o["name"].startswith(str(lake)) for o in outputs)
    assert sum(o["outputFacets"]["outputStatistics"]["rowCount"] for o in raw_out) == summary.raw_written
    assert all(
        o["outputFacets"]["outputStatistics"]["fileCount"] >= 1
        for o in raw_out
        if o["outputFacets"]["outputStatistics"]["rowCount"]
    )
    assert all(
        o["outputFacets"]["outputStatistics"]["size"] > 0
        for o in raw_out
        if o["outputFacets"]["outputStatistics"]["rowCount"]
    )
    assert all(
        {f["name"] for f in o["facets"]["schema"]["fields"]} >= {"event_id", "event_time"} for o in raw_out
    )
    assert any(not a["success"] for o in raw_out for a in o["facets"]["dataQualityAssertions"]["assertions"])
    # the dataset version is the Delta version committed, and that commit names the same run
    o = raw_out[-1]
    version = int(o["facets"]["version"]["datasetVersion"])
    table = DeltaTable(o["name"])
    commit = next(h for h in table.history() if h["version"] == version)
    assert run_uuid(commit["tidegate_run_id"]) == run[0]["run"]["runId"]


def test_a_failed_run_emits_fail(pubsub_emulator, catalog, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tidegate.errors import PlatformError

    lake = tmp_path / "lake"  # nothing provisioned in this project: pulling fails
    with pytest.raises(PlatformError):
        ingest(pubsub_emulator, catalog, project, lake)
    got = events(lake)
    assert [e["eventType"] for e in got if e["job"]["name"] == "ingest"] == ["START", "FAIL"]
    assert "PlatformError" in got[-1]["run"]["facets"]["errorMessage"]["message"]


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append({"path": self.path, "event": json.loads(body)})
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_http_transport_posts_to_a_configured_receiver(
    pubsub_emulator, catalog, project, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.replay import replay

    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received.clear()
    monkeypatch.setenv("TIDEGATE_OPENLINEAGE_URL", f"http://127.0.0.1:{server.server_port}")
    try:
        provision(catalog, pubsub_emulator.address, project)
        produce(pubsub_emulator, catalog, project, tmp_path / "m.jsonl", count=200, seed=5)
        lake = tmp_path / "lake"
        summary = ingest(pubsub_emulator, catalog, project, lake)
        replay(
            catalog,
            str(lake),
            "revenue_per_currency_1m",
            run_id="replay-test-1",
            code_version="0",
            git_sha="x",
        )
    finally:
        server.shutdown()
    paths = {r["path"] for r in _Receiver.received}
    assert paths == {"/api/v1/lineage"}
    jobs = [(r["event"]["job"]["name"], r["event"]["eventType"]) for r in _Receiver.received]
    assert ("ingest", "START") in jobs
    assert ("ingest", "COMPLETE") in jobs
    assert ("replay.revenue_per_currency_1m", "COMPLETE") in jobs
    done = next(
        r["event"]
        for r in _Receiver.received
        if r["event"]["job"]["name"] == "replay.revenue_per_currency_1m"
        and r["event"]["eventType"] == "COMPLETE"
    )
    assert done["inputs"][0]["name"] == str(Path(raw_uri(str(lake), "shop.order.placed")).absolute())
    assert done["outputs"][0]["name"].endswith("/aggregates/revenue_per_currency_1m")
    assert not (lake / "_openlineage").exists()  # HTTP instead of the file, not both
    assert summary.run_id
