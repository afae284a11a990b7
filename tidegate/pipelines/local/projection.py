"""Background projection: aggregates follow the raw history on their own thread.

The projector (`tidegate.lake.projection.Projector`) brings every aggregate over the touched event types
up to the current raw version. It runs here, beside the driver, while the next micro-batch is
pulled, validated and committed (Delta and polars release the GIL: on 2 cores this keeps the
projection off the ingest latency). Rounds coalesce: however many batches committed meanwhile,
one round brings every aggregate up to the current raw version (the app transaction in each
aggregate commit says where it stands). A failed round is logged and retried by the next one;
`close()` runs a last round and raises if that one fails too (raw history is complete either
way; the next run catches up at start).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .accounting import BatchOutcome

log = logging.getLogger(__name__)


def attribute(pending: list[tuple[BatchOutcome, list[float]]], results: list[Any]) -> None:
    """Credit one projection round to the batches it covered: freshness for every message (publish
    -> its windows committed), the round's late pairs to the last batch (counted once)."""
    if not results:
        return
    done = max(r.committed_at for r in results)
    for outcome, published in pending:
        outcome.projections = results
        outcome.aggregate_latencies = [done - p for p in published]
    pending[-1][0].late += sum(r.late for r in results)


class BackgroundProjector:
    def __init__(self, projector: Any, heal: bool = False) -> None:
        """`heal`: the first round brings every aggregate up to the raw history as it is (what an
        earlier run committed but never projected), before any batch of this run."""
        self.projector = projector  # lake.projection.Projector
        self.heal = heal
        self.pending: list[tuple[BatchOutcome, list[float]]] = []
        self.sources: set[str] = set()
        self.cond = threading.Condition()
        self.closing = False
        self.late = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tidegate-projector", daemon=True)
        self.thread.start()

    def submit(self, outcome: BatchOutcome, published: list[float], sources: set[str]) -> None:
        with self.cond:
            self.pending.append((outcome, published))
            self.sources |= sources
            self.cond.notify()

    def _round(self) -> bool:
        with self.cond:
            while not self.pending and not self.closing:
                self.cond.wait()
            if not self.pending:
                return False
            pending, sources = self.pending, self.sources
            self.pending, self.sources = [], set()
        try:
            results = self.projector.project_all(sources)
        except Exception as exc:  # noqa: BLE001 - retried next round; close() reports the last one
            log.warning("aggregate projection failed (retried with the next batch): %s", exc)
            self.error = exc
            with self.cond:
                self.pending = pending + self.pending
                self.sources |= sources
            if self.closing:
                return False  # close() makes the last, synchronous attempt
            time.sleep(0.5)
            return True
        self.error = None
        attribute(pending, results)
        self.late += sum(r.late for r in results)
        return True

    def _run(self) -> None:
        if self.heal:
            try:
                healed = self.projector.project_all()
                if healed:
                    log.info("caught up %d aggregate table(s) with raw history", len(healed))
            except Exception as exc:  # noqa: BLE001 - the next round (or close) tries again
                log.warning("catching up the aggregates failed (retried with the next batch): %s", exc)
                self.error = exc
        while self._round():
            pass

    def close(self, catch_up: bool = True) -> int:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        if catch_up:
            # whatever is still pending (or failed last) gets one more, synchronous try
            results = self.projector.project_all()
            self.late += sum(r.late for r in results)
        return self.late
