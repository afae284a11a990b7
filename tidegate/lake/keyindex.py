"""The keys a table already holds, in memory, for its only writer: dedup without a MERGE.

    index = key_index(uri, ["event_source", "event_id"], value="payload_digest")  # one per table
    index.sync(table)                              # follow the table's log (or reload it)
    digests = index.digests(rows)                  # one per row, on the index's keys
    seen = index.seen(digests)                     # -> list[bool]
    landed = index.values(digests)                 # -> the value column of each key (0: unknown)
    index.added(new_digests, version, table, new_values)  # after this process committed them

Why: an insert-only MERGE scans the key column of every file it cannot prune. Raw history is
partitioned by event date, so the MERGE of a micro-batch read the whole day's partition: its
cost grew all day (125 ms -> 600 ms per commit over a 10-minute soak) and it used the CPU the
rest of the batch needed. Local mode has exactly one writer per lake (`tidegate.lake.lock`), so that
writer can know every key it must not insert again and append the rest: a plain append costs
the same on the first and the millionth row.

How it stays right:
- The index is built from the table itself (its key columns) the first time it is used in a
  process, so whatever an earlier process committed, crashed or not, is in it.
- `sync` compares the index's table version with the table's: versions this process committed
  itself and commits that add no keys (compaction, vacuum) are skipped; anything else (another
  writer, a delete) reloads the index from the table.
- A commit whose outcome is unknown (any error) `invalidate`s the index: the next commit
  reloads it.
- Not covered: deleting a table and creating it again while its writer runs (the writer holds
  the lake lock; `tidegate maintain` and every other writer take it too).

**Values.** An index may keep one 64-bit value per key (`value=`: raw history keeps each
event's `payload_digest`), so the writer can tell a plain duplicate (same payload) from an id
conflict (another payload under the same identity) without reading the table. 0 means
unknown (a row landed before the column existed): never a conflict.

Cost: 16 bytes per key (24 with a value) (a BLAKE2b-128 digest: a false "already there" needs a 128-bit
collision) in sorted numpy arrays, one per day (a generation), plus a set of recent digests
merged into today's in bulk. A million keys is ~16 MB and ~1 s to load. Keys older than
`horizon` (by the table's `ingest_time`) are not loaded, and a generation is dropped once
every key in it is past the horizon (the keys loaded at start count as that day's), so a
`--follow` run holds about `horizon` + 1 day of keys: 1.5k events/s for 8 days is ~16 GB,
50 events/s ~0.6 GB. A copy re-sent after the horizon lands again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

# Local mode's dedup horizon: at least Pub/Sub's default message retention (7 days), the longest
# a redelivery or a seek can bring a message back.
DEDUP_HORIZON = timedelta(days=7)
# Operations that add no key to a table (compaction rewrites the same rows)
NO_NEW_KEYS = {"OPTIMIZE", "VACUUM START", "VACUUM END"}
_MERGE_RECENT = 50_000  # recent digests kept in a set before they are merged into the array
_SEP = "\x1f"


def value_of(hex_digest: str | None) -> int:
    """A hex digest (a `payload_digest`) as the index's 64-bit value; 0 for none."""
    return int(hex_digest[:16], 16) if hex_digest else 0


def _digests(rows: pa.Table, keys: Sequence[str]) -> list[bytes]:
    columns = [rows.column(k).to_pylist() for k in keys]
    if len(columns) == 1:
        values = ["" if v is None else str(v) for v in columns[0]]
    else:
        values = [_SEP.join("" if v is None else str(v) for v in vs) for vs in zip(*columns, strict=True)]
    return [hashlib.blake2b(v.encode(), digest_size=16).digest() for v in values]


class KeyIndex:
    def __init__(
        self,
        uri: str,
        keys: Sequence[str],
        horizon: timedelta | None = DEDUP_HORIZON,
        value: str | None = None,
    ) -> None:
        self.uri = uri
        self.keys = tuple(keys)
        self.value = value  # the column whose value each key keeps (None: keys only)
        self.horizon = horizon
        self.version: int | None = None  # the table version the index reflects (None: not loaded)
        self.table_id: str | None = None  # the Delta table's metadata id (None: created by this index)
        self._ours: set[int] = set()  # versions this process committed that `version` has not reached
        # generations of sorted digests (and their values, aligned), each tagged with the day its
        # keys were added (or loaded): a generation older than the horizon is dropped, so a long
        # --follow run stays bounded
        self._generations: list[tuple[date, np.ndarray, np.ndarray]] = []
        self._recent: dict[bytes, int] = {}
        self.lock = threading.Lock()
        self.opened: Any = None  # lake.delta.OpenTables: the writer's open table (lake.writer._current)
        self.loads = 0  # full loads from the table (bench and tests read it)

    def __len__(self) -> int:
        return sum(len(g) for _, g, _ in self._generations) + len(self._recent)

    def invalidate(self) -> None:
        self.version = None
        self.opened = None

    def sync(self, table: Any) -> None:
        """Bring the index up to `table`'s loaded version (a deltalake.DeltaTable, or None for a
        table that does not exist yet)."""
        if table is None:
            self._reset(-1)  # empty: the commit that creates the table is version 0
            return
        current = table.version()
        table_id = table.metadata().id  # a table deleted and created again is another table
        if table_id != self.table_id:
            self._load(table)
            return
        if self.version == current:
            return
        if self.version is not None and current > self.version:
            history = table.history(current - self.version)
            between = [h for h in history if int(h.get("version", -1)) > self.version]
            if len(between) == current - self.version and all(
                int(h["version"]) in self._ours or h.get("operation") in NO_NEW_KEYS for h in between
            ):
                self.version = current
                self._ours = {v for v in self._ours if v > current}
                return
        self._load(table)

    def digests(self, rows: pa.Table) -> list[bytes]:
        return _digests(rows, self.keys)

    def seen(self, digests: list[bytes]) -> list[bool]:
        return [bool(f) for f in self._find(digests)[0]]

    def values(self, digests: list[bytes]) -> list[int]:
        """The value each key keeps (0: not in the index, or unknown)."""
        return [int(v) for v in self._find(digests)[1]]

    def _find(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        found = np.array([d in self._recent for d in digests], dtype=bool)
        values = np.array([self._recent.get(d, 0) for d in digests], dtype=np.uint64)
        if not digests:
            return found, values
        cand = np.array(digests, dtype="S16")
        for _, base, vals in self._generations:
            if not len(base):
                continue
            idx = np.searchsorted(base, cand)
            idx[idx == len(base)] = 0
            hit = base[idx] == cand
            found |= hit
            values = np.where(hit, vals[idx], values)
        return found, values

    def added(self, digests: list[bytes], version: int, table: Any, values: Sequence[int] = ()) -> None:
        """The keys (`digests`) this process committed in `version` of `table`, with their
        values when the index keeps them."""
        if self.table_id is None:
            self.table_id = table.metadata().id
        if values:
            self._recent.update(zip(digests, values, strict=True))
        else:
            self._recent.update(dict.fromkeys(digests, 0))
        if self.version is not None and version == self.version + 1:
            self.version = version
        else:
            self._ours.add(version)  # for `sync`, which has to look past a commit it did not see
        if len(self._recent) >= _MERGE_RECENT:
            self._merge()

    # -- internals ---------------------------------------------------------------------------

    def _reset(self, version: int | None) -> None:
        self._generations = []
        self._recent = {}
        self._ours = set()
        self.version = version
        self.table_id = None

    def _merge(self) -> None:
        today = datetime.now(UTC).date()
        fresh = np.array(list(self._recent), dtype="S16")
        vals = np.array(list(self._recent.values()), dtype=np.uint64)
        if self._generations and self._generations[-1][0] == today:
            _, old, old_vals = self._generations.pop()
            fresh, vals = np.concatenate([old, fresh]), np.concatenate([old_vals, vals])
        self._generations.append((today, *_sorted(fresh, vals)))
        self._recent = {}
        if self.horizon is not None:
            # keep a generation until every key in it is past the horizon (+1 day: a day's keys
            # span that day); keys re-sent later than that land again, as documented
            oldest = today - self.horizon - timedelta(days=1)
            self._generations = [g for g in self._generations if g[0] >= oldest]

    def _load(self, table: Any) -> None:

        version = table.version()
        dataset = table.to_pyarrow_dataset()
        where = None
        if self.horizon is not None and "ingest_time" in dataset.schema.names:
            cutoff = datetime.now(UTC) - self.horizon
            where = ds.field("ingest_time") >= pa.scalar(cutoff, dataset.schema.field("ingest_time").type)
        with_value = self.value is not None and self.value in dataset.schema.names
        columns = [*self.keys, self.value] if with_value and self.value else list(self.keys)
        keys = dataset.to_table(columns=columns, filter=where)
        self._reset(version)
        self.table_id = table.metadata().id
        if keys.num_rows:
            loaded = np.array(_digests(keys, self.keys), dtype="S16")
            if with_value and self.value:
                vals = np.array([value_of(v) for v in keys.column(self.value).to_pylist()], dtype=np.uint64)
            else:
                vals = np.zeros(len(loaded), dtype=np.uint64)
            self._generations = [(datetime.now(UTC).date(), *_sorted(loaded, vals))]
        self.loads += 1


def _sorted(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys, sorted, with the value of each key's first occurrence."""
    unique, first = np.unique(keys, return_index=True)
    return unique, values[first]


_INDEXES: dict[tuple[str, tuple[str, ...], str | None], KeyIndex] = {}
_LOCK = threading.Lock()


def key_index(uri: str, keys: Sequence[str], value: str | None = None) -> KeyIndex:
    """This process's index of `uri` on `keys` (created empty, loaded on first `sync`)."""
    with _LOCK:
        return _INDEXES.setdefault((uri, tuple(keys), value), KeyIndex(uri, keys, value=value))
