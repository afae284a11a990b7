"""Local mode: micro-batches on Beam's in-process runner, acked only after commit.

    tidegate ingest --until-idle 5        # drain the subscriptions, stop after 5 s of nothing
    tidegate ingest --follow              # run until Ctrl-C (the current batch finishes)

One job per module (docs/architecture.md, "How a message moves"):
- `consumer.py`: pulling and leases (parallel pulls, short leases extended while held, flow
  control, nack on a clean stop, messages up to Pub/Sub's 10 MB);
- `batch.py`: one micro-batch through the Beam composites, poison messages isolated by
  splitting, transient errors retried with backoff;
- `accounting.py`: every message accounted for from the commits, then ledger -> ack -> lineage
  -> metrics on the bookkeeper thread;
- `projection.py`: the aggregates follow the raw history on their own thread;
- `driver.py`: the loop that ties them together (`LocalIngest`).

Why not Beam's local streaming runner: it pulls 10 messages at a time, acks *before*
processing (a crash loses data) and puts the watermark at wall-clock now (platform facts).
"""

from tidegate.lake.lock import lake_lock

from .accounting import BatchOutcome, RunSummary
from .consumer import ConsumerOptions
from .driver import Heartbeat, LocalIngest, LocalOptions

__all__ = [
    "BatchOutcome",
    "ConsumerOptions",
    "Heartbeat",
    "LocalIngest",
    "LocalOptions",
    "RunSummary",
    "lake_lock",
]
