"""Pulling and leases: a Pub/Sub consumer that behaves like the official subscriber.

    consumer = Consumer(client, {path: name}, ConsumerOptions())
    consumer.start()                      # a puller per subscription, helpers in a backlog
    batch = consumer.take(20_000, wait=0.5, fill=0.1)
    ...commit...
    consumer.ack(batch)                   # or consumer.nack(batch): back to Pub/Sub at once
    consumer.close()                      # stops pulling, nacks whatever is still held

Why each piece exists:
- **Leases.** A pull hands messages out for the subscription's ack deadline (10 s in the shipped
  catalog; 600 s in older catalogs, and whatever a subscription made by other tools has). Held
  for a long deadline, a killed process would stall its messages that long. So every pulled
  message of a subscription whose deadline is longer than `lease_seconds` is put on a short
  lease at once (`modify_ack_deadline(lease_seconds)`; `start` reads each subscription's deadline
  once, and shortens always if it may not read it), and a lease thread extends, once a
  second, the held messages whose lease has less than `lease_seconds / 2` left, until they are
  acked or nacked. The first, shortening call is made by the lease thread too, woken by the
  puller, so a puller goes straight back to pulling instead of waiting for that round trip
  (half of each puller's time went to it); the lease thread sends the ids of several pulls in
  one request. Until it lands a message keeps the subscription's longer deadline: never an
  early redelivery, and a SIGKILL in those few milliseconds costs that deadline for those
  messages only. An ack or nack in between drops the ids from the pending call (a late
  lease must not undo a nack). With the shipped 10 s deadline there is nothing to shorten: that
  call cost a tenth of a 100k backlog's run in the lease thread (GIL and emulator CPU) for
  nothing. (Extending every held message on a fixed period cost 0.8 lease calls per
  message on a 100k backlog, all of it emulator and gRPC CPU taken from the batch; a message
  acked within half a lease is never extended.) A SIGKILL stops the extensions: Pub/Sub
  redelivers within `lease_seconds`. A clean stop nacks (deadline 0) at once.
- **Any message Pub/Sub can deliver.** gRPC's default receive limit is 4 MB; Pub/Sub bodies go to
  10 MB and a pull response carries many. The emulator channel is built without a limit (the
  library's own emulator channel keeps the 4 MB default; its GCP channel has none).
- **Flow control.** Pullers stop pulling while `max_messages` or `max_bytes` are held (buffered
  plus in flight), so memory stays bounded when the lake is slower than the topics. A message
  counts its wire size (`ByteSize()`: body, attributes, ids), one C call on the puller's thread.
- **Parallel pulls.** Each subscription has its own puller: a sync pull is mostly waiting on
  gRPC (the GIL is free), so the subscriptions drain side by side. One pull is not enough for
  a backlog: the emulator hands over at most ~100 messages a pull, in ~11 ms on a quiet machine
  and 25-30 ms beside a running batch, so one subscription's puller brings in 3-9k msg/s, and
  the busiest one (half the bench's mix) held the whole ingest back: the driver waited for
  messages a third of a 100k backlog's run. So a subscription also has `pullers_per_subscription
  - 1` helpers that pull only while it is backlogged (its last pulls came back full) and
  otherwise sleep: several pulls in flight where they pay, no extra empty pulls (each costs
  the GIL and the emulator) when traffic is light. (Real Pub/Sub's pulls have longer round
  trips, where pulls in flight should pay at least as well; not measured here.)

Thread ownership: puller threads append to the buffer, the lease table and the pending first
leases; the lease thread reads the lease table and empties the pending leases; the caller (the
driver) takes, acks and nacks. One condition guards them all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tidegate.errors import PlatformError
from tidegate.expectations.envelope import RawMessage, frozen
from tidegate.infra.pubsub import ack_request, modack_request, pull_now, retry_for

log = logging.getLogger(__name__)

ACK_REQUEST_SIZE = 2500  # ack ids per acknowledge / modify_ack_deadline request (Pub/Sub's limit)
PULL_MAX = 1000  # messages per pull request
CAUGHT_UP = 50  # a pull that returns fewer: the subscription is drained, pause before the next
# a pull that returns this many (or all it asked for) was limited by the request, not by what was
# there (the emulator never returns more than 100); several in a row: a backlog
FULL_PULL = 100
BACKLOG_STREAK = 3
HELPER_STREAK = 2  # a subscription's helper pullers pull after this many full pulls in a row
HELPER_IDLE = 0.1  # and otherwise look again after this many seconds
LEASE_TICK = 1.0  # seconds between looks for leases that need extending


class Leased(NamedTuple):
    """A pulled message while tidegate holds it: where it came from and how to ack it."""

    path: str  # projects/<p>/subscriptions/<s>
    ack_id: str
    message: RawMessage
    size: int  # the message's wire size (body, attributes, ids), bytes: what flow control counts


@dataclass(frozen=True)
class ConsumerOptions:
    lease_seconds: int = 10  # Pub/Sub's minimum ack deadline; what a SIGKILL costs at most
    max_messages: int = 60_000  # held at once (buffered + in flight)
    max_bytes: int = 512 * 1024 * 1024
    pullers_per_subscription: int = 3  # pulls in flight per subscription in a backlog (the helpers)
    rpc_timeout: float = 30.0  # per pull / ack call; transient gRPC errors are retried within it
    idle_poll: float = 0.05  # first pause after an empty pull (doubles up to 0.25 s)


def to_raw(received: Any, subscription: str) -> RawMessage:
    """A raw protobuf ReceivedMessage (see infra.pubsub.pull_now) as a RawMessage.

    Runs on a puller thread for every message, sharing the GIL with the batches: the frozen
    dataclass's own constructor (one object.__setattr__ per field) is skipped
    (`envelope.frozen`, ~0.8 us of ~5 us a message)."""
    m = received.message
    pt = m.publish_time
    attrs = m.attributes
    return frozen(
        RawMessage,
        {
            "data": m.data,
            # not dict(attrs): on protobuf's upb map that goes through the Mapping mixin, 2x slower
            "attributes": {k: attrs[k] for k in attrs},
            "message_id": m.message_id,
            "publish_time": datetime.fromtimestamp(pt.seconds + pt.nanos / 1e9, UTC) if pt.seconds else None,
            "subscription": subscription,
        },
    )


def by_subscription(items: Iterable[Leased], size: int = ACK_REQUEST_SIZE) -> Iterator[tuple[str, list[str]]]:
    """Ack ids per subscription path, in requests of at most `size`."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(item.path, []).append(item.ack_id)
    for path, ids in groups.items():
        for i in range(0, len(ids), size):
            yield path, ids[i : i + size]


class Consumer:
    """Pulls the given subscriptions into a bounded buffer of leased messages (module docstring)."""

    def __init__(self, client: Any, paths: dict[str, str], options: ConsumerOptions) -> None:
        self.client = client
        self.paths = paths  # subscription path -> short name
        self.options = options
        self.cond = threading.Condition()
        self.buffer: deque[Leased] = deque()
        # path -> ack id -> (size, monotonic time its lease runs out)
        self.held: dict[str, dict[str, tuple[int, float]]] = {p: {} for p in paths}
        self.held_messages = 0
        self.held_bytes = 0
        # path -> ack ids pulled whose first (shortening) lease call is not sent yet
        self.unleased: dict[str, list[str]] = {p: [] for p in paths}
        self.lease_wake = threading.Event()
        # held by the lease thread while it sends leases, and by nack: a lease sent after a nack
        # would hold the nacked message back for a whole lease
        self.lease_lock = threading.Lock()
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        # per subscription: since when every pull came back empty (None: the last one did not)
        self.empty_since: dict[str, float | None] = dict.fromkeys(paths)
        self.full_streak: dict[str, int] = dict.fromkeys(paths, 0)  # full pulls in a row
        # per subscription: its ack deadline, s (read by `start`; unknown: infinite)
        self.deadline: dict[str, float] = dict.fromkeys(paths, math.inf)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.deadline = {path: self._deadline(path) for path in self.paths}
        for path, name in self.paths.items():
            for i in range(self.options.pullers_per_subscription):
                t = threading.Thread(
                    target=self._pull_loop, args=(path, i > 0), name=f"pull-{name}-{i}", daemon=True
                )
                self.threads.append(t)
        self.threads.append(threading.Thread(target=self._lease_loop, name="tidegate-leases", daemon=True))
        for t in self.threads:
            t.start()

    def _shortens(self, path: str) -> bool:
        """Are `path`'s pulled messages put on our lease (its deadline is longer)?"""
        return self.deadline[path] > self.options.lease_seconds

    def _deadline(self, path: str) -> float:
        """The subscription's ack deadline in seconds (infinite if it cannot be read: on GCP,
        reading a subscription needs `pubsub.subscriptions.get`, which a subscriber may lack)."""
        try:
            sub = self.client.get_subscription(
                request={"subscription": path},
                timeout=self.options.rpc_timeout,
                retry=retry_for(self.options.rpc_timeout),
            )
            return float(sub.ack_deadline_seconds) or math.inf
        except Exception as exc:  # noqa: BLE001 - then every pull is shortened, as before
            log.info("reading %s's ack deadline failed (%s): shortening every lease", path, _first_line(exc))
            return math.inf

    def close(self) -> int:
        """Stop pulling and hand every message still held back to Pub/Sub. Returns how many."""
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        # Pullers finish their current RPC (daemon threads: one stuck retrying against a gone
        # Pub/Sub must not hold the stop for its whole retry budget).
        deadline = time.monotonic() + 5
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.cond:
            leftover = [
                Leased(p, a, _NO_MESSAGE, s) for p, ids in self.held.items() for a, (s, _) in ids.items()
            ]
            self.buffer.clear()
        self.nack(leftover)
        return len(leftover)

    # -- what the driver calls --------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self.buffer)

    def backlogged(self) -> bool:
        """Some subscription's last pulls all came back full: it has a backlog."""
        return any(n >= BACKLOG_STREAK for n in self.full_streak.values())

    def idle_for(self) -> float:
        """Seconds since every subscription last had something to pull and nothing is buffered
        (0 while any is still delivering, or before each has answered a pull)."""
        with self.cond:
            if self.buffer or any(t is None for t in self.empty_since.values()):
                return 0.0
            return time.monotonic() - max(t for t in self.empty_since.values() if t is not None)

    def take(
        self,
        max_messages: int,
        wait: float,
        fill: float,
        backlog_rate: float = 0.0,
        backlog_fill: float = 0.0,
        backlog_age: float = 0.0,
    ) -> list[Leased]:
        """Up to `max_messages` held messages. Waits at most `wait` for the first one, then at most
        `fill` more seconds for others (a short fill keeps latency low when traffic is light).
        The pullers are draining a backlog if messages arrived faster than `backlog_rate` per
        second during that fill (and pulls come back full), or if the oldest message held was
        published `backlog_age` seconds ago or more (the ingest is behind, however slowly
        Pub/Sub hands the backlog over: a large emulator backlog arrives at a few thousand a
        second). Then keep filling up to `backlog_fill` seconds in all, so a batch's fixed cost
        is paid for many messages, not a few hundred; their latency is lost already. Raises a
        puller's fatal error."""
        deadline = time.monotonic() + wait
        with self.cond:
            while not self.buffer:
                self._raise_error()
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set():
                    return []
                self.cond.wait(left)
            started, before = time.monotonic(), len(self.buffer)
            self._fill(max_messages, started + fill)
            arrived = len(self.buffer) - before
            fast = bool(backlog_rate) and arrived >= backlog_rate * fill and self.backlogged()
            if backlog_fill > fill and (fast or self._behind(backlog_age)):
                self._fill(max_messages, started + backlog_fill)
            n = min(max_messages, len(self.buffer))
            return [self.buffer.popleft() for _ in range(n)]

    def _behind(self, age: float) -> bool:
        """The oldest buffered message was published `age` seconds ago or more (0: never)."""
        if not age or not self.buffer:
            return False
        published = self.buffer[0].message.publish_time
        return published is not None and time.time() - published.timestamp() >= age

    def _fill(self, max_messages: int, until: float) -> None:
        """Wait (holding the condition) until the buffer holds `max_messages` or `until`."""
        while len(self.buffer) < max_messages and not self.stopping.is_set():
            self._raise_error()
            left = until - time.monotonic()
            if left <= 0:
                return
            self.cond.wait(left)

    def ack(self, items: list[Leased]) -> None:
        """Acknowledge committed messages (then they are no longer held)."""
        for path, ids in by_subscription(items):
            try:
                self.client.acknowledge(
                    request=ack_request(path, ids),
                    timeout=self.options.rpc_timeout,
                    retry=retry_for(self.options.rpc_timeout),
                )
            except Exception as exc:  # noqa: BLE001 - the data is committed; only the ack failed
                raise PlatformError(
                    f"acknowledging {len(ids)} committed messages on {self.paths.get(path, path)} failed: "
                    f"{exc.__class__.__name__}; they will be redelivered and skipped as duplicates",
                    hint="is Pub/Sub (the emulator) still running? `tidegate up`, then run ingest again",
                ) from None
        self._release(items)

    def nack(self, items: list[Leased]) -> None:
        """Hand messages back to Pub/Sub now (deadline 0), not after their lease. Best effort:
        a message whose nack fails comes back when its lease runs out anyway."""
        with self.lease_lock:
            self._release(items)
            for path, ids in by_subscription(items):
                with contextlib.suppress(Exception):
                    self._modack(path, ids, 0)

    # -- internals -------------------------------------------------------------------------

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _release(self, items: list[Leased]) -> None:
        with self.cond:
            gone: dict[str, set[str]] = {}
            for item in items:
                gone.setdefault(item.path, set()).add(item.ack_id)
            for path, ids in gone.items():
                if self.unleased[path]:
                    self.unleased[path] = [a for a in self.unleased[path] if a not in ids]
            for item in items:
                lease = self.held[item.path].pop(item.ack_id, None)
                if lease is not None:
                    self.held_messages -= 1
                    self.held_bytes -= lease[0]
            self.cond.notify_all()

    def _modack(self, path: str, ids: list[str], seconds: int) -> None:
        """Set the deadline of `ids` (any number: sent in requests of Pub/Sub's maximum size)."""
        for i in range(0, len(ids), ACK_REQUEST_SIZE):
            self.client.modify_ack_deadline(
                request=modack_request(path, ids[i : i + ACK_REQUEST_SIZE], seconds),
                timeout=self.options.rpc_timeout,
                retry=retry_for(self.options.rpc_timeout),
            )

    def _room(self) -> int:
        """How many messages a pull may ask for now (0: wait for acks)."""
        if self.held_bytes >= self.options.max_bytes:
            return 0
        return max(0, min(PULL_MAX, self.options.max_messages - self.held_messages))

    def _pull_loop(self, path: str, helper: bool = False) -> None:
        """Pull `path` into the buffer until stopped. A `helper` pulls only while `path` is
        backlogged (module docstring, "Parallel pulls")."""
        name = self.paths[path]
        pause = self.options.idle_poll
        while not self.stopping.is_set():
            if helper and self.full_streak[path] < HELPER_STREAK:
                self.stopping.wait(HELPER_IDLE)
                continue
            with self.cond:
                while not self._room() and not self.stopping.is_set():
                    self.cond.wait(0.5)
                room = self._room()
            if self.stopping.is_set():
                return
            try:
                asked = time.monotonic()
                received = pull_now(self.client, path, max_messages=room, timeout=self.options.rpc_timeout)
                leased_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any transport failure ends the run the same way
                if self.stopping.is_set():
                    return
                self.error = PlatformError(
                    f"pulling from {name} failed: {exc.__class__.__name__}: {_first_line(exc)}",
                    hint="is Pub/Sub (the emulator) still running and the subscription provisioned? "
                    "`tidegate up`, then run ingest again: nothing acked was lost",
                )
                with self.cond:
                    self.cond.notify_all()
                return
            if not received:
                self.full_streak[path] = 0
                if self.empty_since[path] is None:
                    self.empty_since[path] = time.monotonic()
                self.stopping.wait(pause)
                pause = min(pause * 2, 0.25)
                continue
            pause = self.options.idle_poll
            self.empty_since[path] = None
            full = len(received) >= min(room, FULL_PULL)
            self.full_streak[path] = self.full_streak[path] + 1 if full else 0
            items = []
            for r in received:
                # flow control counts the message's wire size (body, attributes, ids): one C call
                items.append(Leased(path, r.ack_id, to_raw(r, name), r.message.ByteSize()))
            # our short lease counts from its call (after this); the subscription's own deadline,
            # when it is kept, from Pub/Sub's delivery: no later than the request
            expires = (
                leased_at + self.options.lease_seconds
                if self._shortens(path)
                else asked + self.deadline[path]
            )
            with self.cond:
                held = self.held[path]
                for item in items:
                    held[item.ack_id] = (item.size, expires)
                    self.held_bytes += item.size
                self.held_messages += len(items)
                if self._shortens(path):
                    # the lease thread shortens the subscription's deadline to our lease (docstring)
                    self.unleased[path].extend(item.ack_id for item in items)
                self.buffer.extend(items)
                self.cond.notify_all()
            if self._shortens(path):
                self.lease_wake.set()
            if len(received) < CAUGHT_UP:
                # Caught up with the topic: let messages gather instead of spinning on tiny pulls
                # (each pull + lease RPC costs Python time the batch needs; the batch is what
                # sets latency, a few ms here do not).
                self.stopping.wait(self.options.idle_poll)

    def _lease_loop(self) -> None:
        lease = self.options.lease_seconds
        next_tick = time.monotonic() + LEASE_TICK
        while not self.stopping.is_set():
            self.lease_wake.wait(max(0.0, next_tick - time.monotonic()))
            self.lease_wake.clear()
            if self.stopping.is_set():
                return
            with self.lease_lock:
                self.lease_pulled()
                if time.monotonic() >= next_tick:
                    self.extend_due(time.monotonic() + lease / 2)
                    next_tick = time.monotonic() + LEASE_TICK

    def lease_pulled(self) -> int:
        """Put every message pulled since the last call on our short lease (module docstring):
        one request per subscription for the ids of all pulls since. Returns how many."""
        with self.cond:
            pending = {p: ids for p, ids in self.unleased.items() if ids}
            for p in pending:
                self.unleased[p] = []
        leased = 0
        for path, ids in pending.items():
            try:
                self._modack(path, ids, self.options.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - they keep the subscription's deadline: no loss
                log.warning("leasing pulled messages on %s failed: %s", self.paths[path], _first_line(exc))
                continue
            leased += len(ids)
        return leased

    def extend_due(self, before: float) -> int:
        """Extend by a full lease every held message whose lease runs out before `before`
        (monotonic). Returns how many were extended."""
        with self.cond:
            due = {p: [a for a, (_, exp) in ids.items() if exp < before] for p, ids in self.held.items()}
        extended = 0
        for path, ids in due.items():
            if not ids:
                continue
            asked = time.monotonic()  # the new lease counts from the request, not the reply
            try:
                self._modack(path, ids, self.options.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - a lapsed lease means redelivery, never loss
                log.warning("extending leases on %s failed: %s", self.paths[path], _first_line(exc))
                continue
            expires = asked + self.options.lease_seconds
            extended += len(ids)
            with self.cond:
                held = self.held[path]
                for a in ids:
                    if a in held:
                        held[a] = (held[a][0], expires)
        return extended


_NO_MESSAGE = RawMessage(b"", {})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
