"""Compaction while ingesting: `ingest --follow` keeps every table's file count bounded.

A thread wakes every `every` seconds and compacts the partitions that gathered `min_files`
small files (lake.maintenance). It never blocks the driver: a compaction commit that races a
batch's MERGE makes one of them retry (the writer's conflict backoff), nothing more.
"""

from __future__ import annotations

import logging
import threading

from tidegate.lake.maintenance import compact_small_files

log = logging.getLogger(__name__)


class Compactor:
    def __init__(self, uris: list[str], every: float, min_files: int, storage: dict[str, str] | None) -> None:
        self.uris = uris
        self.every = every
        self.min_files = min_files
        self.storage = storage
        self.compacted = 0
        self.rounds = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tidegate-compactor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            for uri in self.uris:
                if self.stopping.is_set():
                    return
                try:
                    self.compacted += compact_small_files(uri, self.min_files, self.storage)
                except Exception as exc:  # noqa: BLE001 - maintenance must never stop ingestion
                    log.warning("compacting %s failed: %s", uri, exc)
            self.rounds += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
