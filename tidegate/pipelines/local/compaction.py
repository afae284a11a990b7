"""Compaction while ingesting: `ingest --follow` keeps every table's file count bounded.

A thread wakes every `every` seconds and compacts the partitions that gathered `min_files`
small files (lake.maintenance), and, every 2 minutes, archives each table's commit lineage in
`_commits` (tidegate.lake.lineage.CommitArchive), checkpoints it and deletes its log files older
than the table's log retention (10 minutes, set when tidegate creates a table: the commit log
otherwise grows by one file per batch, and every open, update and commit lists it). At the
same cadence it vacuums the derived tables (`derived`: aggregates and views, rewritten by every
projection round) of the files removed more than `DERIVED_RETAIN_HOURS` ago
(lake.maintenance says why; the other tables wait for `tidegate maintain`). It never
blocks the driver: a compaction commit that races a batch's commit makes one of them retry
(the writer's conflict backoff), nothing more.
"""

from __future__ import annotations

import logging
import threading
import time

from tidegate.lake.delta import LOG_RETENTION, log_cleaned_under_read
from tidegate.lake.lineage import CommitArchive
from tidegate.lake.maintenance import DERIVED_RETAIN_HOURS, clean_log, compact_small_files, vacuum_removed

log = logging.getLogger(__name__)

COMPACT_EVERY_S = 2.0  # a --follow run looks for partitions of 16+ small files this often
LOG_CLEAN_EVERY_S = 120.0  # and checkpoints and drops log files past the retention this often


class Compactor:
    def __init__(
        self,
        uris: list[str],
        every: float,
        min_files: int,
        storage: dict[str, str] | None,
        log_retention: str | None = LOG_RETENTION,
        clean_every: float = LOG_CLEAN_EVERY_S,
        root: str | None = None,
        derived: frozenset[str] = frozenset(),
        derived_retain_hours: int = DERIVED_RETAIN_HOURS,
    ) -> None:
        self.uris = uris
        self.derived = derived  # uris among `uris` whose removed files it vacuums
        self.derived_retain_hours = derived_retain_hours
        self.vacuumed = 0
        # the lake's commit archive: lineage is copied there before the log is cleaned
        self.archive = CommitArchive(root, storage) if root is not None else None
        self.clean_every = clean_every
        self.log_retention = log_retention
        self.log_cleaned_at: dict[str, float] = {}
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
                    self._clean_log(uri)
                except Exception as exc:  # noqa: BLE001 - maintenance must never stop ingestion
                    if log_cleaned_under_read(exc):  # a commit's own log cleanup: the next round retries
                        log.info("compacting %s deferred: its commit log was cleaned under the read", uri)
                    else:
                        log.warning("compacting %s failed: %s", uri, exc)
            self.rounds += 1

    def _clean_log(self, uri: str) -> None:
        """Every `clean_every` seconds at most, archive the commits' lineage, checkpoint and drop
        log files past `log_retention`."""
        if (
            self.log_retention is None
            or time.monotonic() - self.log_cleaned_at.get(uri, -1e9) < self.clean_every
        ):
            return
        self.log_cleaned_at[uri] = time.monotonic()
        clean_log(uri, self.storage, self.archive)
        if uri in self.derived:
            self.vacuumed += vacuum_removed(uri, self.derived_retain_hours, self.storage)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
