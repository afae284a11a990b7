"""Pull what waits on the catalog's subscriptions and check it, without consuming it.

Used by `tidegate demo` to show where every published message *will* land (raw or
quarantine, and why) and to reconcile that against the producer's manifest. Messages are
pulled, checked with the same pure functions the pipeline uses (`expectations.checks`), and
then released (ack deadline 0) so they stay on the subscription for ingestion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from expectations.checks import CheckedBatch, check_batch
from expectations.contracts import ContractRegistry
from expectations.envelope import RawMessage
from expectations.suites import SuiteValidator
from infra.pubsub import pull_now, subscriber, subscription_path
from tidegate.catalog import Catalog


@dataclass
class Preview:
    checked: CheckedBatch
    pulled: int = 0
    by_subscription: Counter[str] = field(default_factory=Counter)

    def landing(self) -> dict[str, str]:
        """Pub/Sub message id -> 'raw' or 'quarantine:<stage>:<rule>'."""
        out = {v.message.message_id: "raw" for v in self.checked.valid}
        for r in self.checked.rejected:
            first = r.failures[0]
            out[r.message.message_id] = f"quarantine:{first.stage}:{first.rule}"
        return out


def _to_raw(received: Any, subscription: str) -> RawMessage:
    m = received.message
    publish_time = m.publish_time
    if isinstance(publish_time, datetime) and publish_time.tzinfo is None:
        publish_time = publish_time.replace(tzinfo=UTC)
    return RawMessage(
        data=bytes(m.data),
        attributes=dict(m.attributes),
        message_id=m.message_id,
        publish_time=publish_time,
        subscription=subscription,
    )


def preview(
    catalog: Catalog,
    address: str | None,
    registry: ContractRegistry,
    validator: SuiteValidator,
    project: str | None = None,
) -> Preview:
    project = project or catalog.project
    client = subscriber(address)
    messages: list[RawMessage] = []
    held: dict[str, list[str]] = {}
    result = Preview(CheckedBatch())
    try:
        for stream in catalog.streams:
            path = subscription_path(project, stream.subscription)
            acks = held.setdefault(path, [])
            empty_pulls = 0
            while empty_pulls < 2:
                received = pull_now(client, path)
                if not received:
                    empty_pulls += 1
                    continue
                empty_pulls = 0
                for rm in received:
                    messages.append(_to_raw(rm, stream.subscription))
                    acks.append(rm.ack_id)
                    result.by_subscription[stream.subscription] += 1
        result.pulled = len(messages)
        result.checked = check_batch(messages, catalog, registry, validator)
    finally:
        for path, ack_ids in held.items():
            for i in range(0, len(ack_ids), 1000):
                client.modify_ack_deadline(
                    request={
                        "subscription": path,
                        "ack_ids": ack_ids[i : i + 1000],
                        "ack_deadline_seconds": 0,
                    }
                )
        client.close()
    return result
