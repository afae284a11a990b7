"""The elements that flow through the ingest composites (a chunk of messages, not one)."""

from __future__ import annotations

from typing import NamedTuple

from tidegate.expectations.checks import Rejection, ValidEvent
from tidegate.expectations.envelope import Envelope, RawMessage


class Chunk(NamedTuple):
    batch_id: str
    messages: list[RawMessage]


class Decoded(NamedTuple):
    batch_id: str
    items: list[tuple[RawMessage, Envelope]]


class Typed(NamedTuple):
    batch_id: str
    events: list[ValidEvent]


class Rejected(NamedTuple):
    batch_id: str
    rejections: list[Rejection]
