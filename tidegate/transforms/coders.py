"""Coders for chunk elements: pickle to move them, a cheap size estimate to sample them.

Beam samples element sizes for its counters by *encoding* elements (always the first ten of
every PCollection). tidegate's elements are whole chunks (tens of thousands of messages), so
with the default pickling coder every step of a micro-batch would pickle the whole batch
just to measure it: seconds per batch. These coders estimate from the payload byte counts
instead, and only pickle when an element really has to move (a shuffle, a Dataflow worker).
"""

from __future__ import annotations

import pickle
from typing import Any

import apache_beam as beam

from tidegate.transforms.ingest_types import Chunk, Decoded, Rejected, Typed


def _estimate(value: Any) -> int:
    """Roughly the chunk's size: a per-message figure times the count (counting every payload's
    bytes was a Python loop over the whole batch at every step)."""
    if isinstance(value, Chunk):
        return 600 * len(value.messages)
    if isinstance(value, Decoded):
        return 800 * len(value.items)
    if isinstance(value, Typed):
        return 1000 * len(value.events)
    if isinstance(value, Rejected):
        return 1000 * len(value.rejections)
    return 1024


class ChunkCoder(beam.coders.Coder):  # type: ignore[misc]
    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)  # noqa: S301 - our own elements between our own workers

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        return _estimate(value)


for _t in (Chunk, Decoded, Typed, Rejected):
    beam.coders.registry.register_coder(_t, ChunkCoder)  # type: ignore[attr-defined]
