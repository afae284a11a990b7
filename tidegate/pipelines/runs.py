"""A run's identity: every ingest, replay and Dataflow job gets a run id and an IngestConfig
from here (local mode, the Dataflow launcher, the Flex Template entry point, the bench)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tidegate import settings
from tidegate.catalog import Catalog
from tidegate.transforms.base import IngestConfig
from tidegate.version import code_version, git_sha


def new_run_id(kind: str = "run") -> str:
    """`run-20261202T041500Z-1a2b3c` (or `replay-...`): sortable by start time, unique."""
    return datetime.now(UTC).strftime(f"{kind}-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def ingest_config(
    catalog: Catalog, lake: str, production: bool, pii_key_secret: str | None = None
) -> IngestConfig:
    """A fresh run's IngestConfig (new run id, this code's version and git sha, the lake's
    storage options)."""
    return IngestConfig(
        lake=lake,
        run_id=new_run_id(),
        catalog_path=str(catalog.path),
        code_version=code_version(),
        git_sha=git_sha(),
        production=production,
        storage_options=tuple(sorted((settings.storage_options() or {}).items())),
        pii_key_secret=pii_key_secret,
    )
