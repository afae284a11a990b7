"""Background projection: aggregates follow the raw history on their own thread.

The projector (`tidegate.lake.projection.Projector`) brings every aggregate over the touched event types
up to the current raw version. It runs here, beside the driver, while the next micro-batch is
pulled, validated and committed (Delta and polars release the GIL: on 2 cores this keeps the
projection off the ingest latency). Rounds coalesce: however many batches committed meanwhile,
one round brings every aggregate up to the current raw version (the app transaction in each
aggregate commit says where it stands). A failed round is logged and retried by the next one;
`close()` runs a last round and raises if that one fails too (raw history is complete either
way; the next run catches up at start).

Current-state views are a step of their own (`Projector.update_views`). A view commit rewrites
the view's files whatever the number of keys it touches, so under load the views are brought up
to date at most every `VIEW_SECONDS`, and at once when the aggregates have had nothing to do for
`VIEW_IDLE_SECONDS`; `close()` brings them up to date. Measured (bench ingest, 2k/s offered): a
view update took ~half of every round and delayed the next aggregate round by as much.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .accounting import BatchOutcome

log = logging.getLogger(__name__)

VIEW_SECONDS = 2.0  # under load, views follow the raw history at most this often ...
VIEW_IDLE_SECONDS = 0.3  # ... and as soon as the aggregates have been idle this long


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
        self.views_stale = False  # raw commits the views have not followed yet
        self.views_at = time.monotonic()  # when the views last followed them
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
                if not self.views_stale:
                    self.cond.wait()
                elif not self.cond.wait(VIEW_IDLE_SECONDS) and not self.pending and not self.closing:
                    break  # the aggregates are idle: the views catch up now
            if not self.pending:
                if self.closing:
                    return False  # close() brings aggregates and views up to date
                self._update_views()
                return True
            pending, sources = self.pending, self.sources
            self.pending, self.sources = [], set()
        try:
            results = self.projector.project_all(sources, views=False)
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
        self.views_stale = True
        if time.monotonic() - self.views_at >= VIEW_SECONDS:
            self._update_views()
        return True

    def _update_views(self) -> None:
        self.views_at = time.monotonic()
        try:
            self.projector.update_views()
        except Exception as exc:  # noqa: BLE001 - retried next time; close() reports the last one
            log.warning("updating the views failed (retried): %s", exc)
            return
        self.views_stale = False

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
