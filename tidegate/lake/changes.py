"""What a raw table's commits after a version did: what the aggregate projection
(tidegate.lake.projection) and the state views (tidegate.lake.views) both need to know before
they read "the rows added since".

Every raw row carries `ingest_time`, set just before the commit that inserts it, and one writer
commits a raw table at a time (local mode), so the rows added after version `done` are exactly
those with `ingest_time` later than `done`'s commit time. Compaction (OPTIMIZE, which
`ingest --follow` runs itself) and re-tokenization rewrite files without adding rows: their
rows would look new, so callers filter on that time instead. Retention (expire), vacuum and
table-property commits change no row a reader projects. An erasure deletes rows: the
aggregates are rebuilt by the erasure itself (tidegate.ops.erasure), a view must fold again.
Anything else (a manual UPDATE or DELETE) means: rebuild from the whole history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

APPENDS = {"WRITE", "MERGE", "CREATE TABLE"}
NO_ROW_CHANGES = {"VACUUM START", "VACUUM END", "SET TBLPROPERTIES"}


@dataclass(frozen=True)
class RawChanges:
    only_appends: bool  # WRITE / MERGE (and compaction), nothing that changed rows otherwise
    compacted_since: datetime | None  # the commit time of `done` if files were rewritten after it
    done_at: datetime | None = None  # the commit time of `done` (None: the history is too short)
    erased: bool = False  # an erasure deleted rows after `done`


def raw_changes(raw: Any, done: int, target: int) -> RawChanges:
    """The commits of `raw` (a deltalake.DeltaTable) in (done, target]."""
    compacted = erased = False
    done_ts: datetime | None = None
    for commit in raw.history(limit=target - done + 1):
        version = int(commit.get("version", -1))
        if version == done:
            done_ts = datetime.fromtimestamp(int(commit["timestamp"]) / 1000, UTC)
        elif done < version <= target:
            op = commit.get("operation")
            tidegate_op = commit.get("tidegate_operation")
            if op == "OPTIMIZE" or tidegate_op == "retokenize":
                compacted = True  # the same rows in new files (re-tokenized: new tokens, old ingest_time)
            elif tidegate_op == "erase":
                erased = True
            elif op in NO_ROW_CHANGES or tidegate_op == "expire":
                continue
            elif op not in APPENDS:
                return RawChanges(False, None, done_ts)
    if compacted and done_ts is None:
        return RawChanges(False, None, None)  # history too short to say: rebuild
    return RawChanges(True, done_ts if compacted else None, done_ts, erased)
