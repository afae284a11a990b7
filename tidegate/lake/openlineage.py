"""OpenLineage run events for ingest runs, their micro-batches and replays (openlineage-python).

Where events go:
- `TIDEGATE_OPENLINEAGE_URL=http://marquez:5000` -> the HTTP transport (OpenLineage's
  `/api/v1/lineage`, e.g. Marquez);
- otherwise a file transport: one JSON event per line in `<lake>/_openlineage/events.jsonl`
  (a local lake), or `$TIDEGATE_HOME/openlineage/events.jsonl` when the lake is an object store;
- `TIDEGATE_OPENLINEAGE=off` -> none.
Emitting never fails ingestion: a transport error is logged and the data path goes on.

What they say (OpenLineage naming conventions):
- job namespace `tidegate`, jobs `ingest` (a run), `ingest.batch` (each micro-batch, with a
  `parent` facet pointing at its run) and `replay.<aggregate>`;
- inputs: the Pub/Sub subscriptions, `pubsub` / `subscription:<project>:<subscription>`;
  for a replay, the raw table it read;
- outputs: Delta tables, `file` / `<absolute path>` locally, `gs://<bucket>` / `<path>` on GCS,
  with the facets `schema`, `outputStatistics` (rows, bytes, files of the commit),
  `dataQualityAssertions` (the GX expectations of the batch, per event type) and `version` (the
  Delta table version committed);
- `ownership` on every dataset the catalog gives an owner (a stream's subscription and raw table,
  an aggregate by its source stream; tidegate.lake.lineage.table_owner): owners
  `team:<team>` (type `MAINTAINER`) and, when the catalog names a contact, the contact
  (`mailto:<address>` for an e-mail address; type `CONTACT`). The tables every stream shares
  (quarantine, ledgers) carry none;
- run ids are UUIDs derived from tidegate's run / batch ids (`run_uuid`), and every Delta commit
  carries `tidegate_run_id`: either side leads to the other (`run_uuid(commit["tidegate_run_id"])`);
- job `monitor` (`tidegate monitor`, tidegate.ops.monitors): its run facet `tidegateMonitors`
  lists the breaches the evaluation found (`emit(..., monitors=[...])`, each a breach as
  `Breach.as_dict()` gives it, plus `new`: whether this run recorded it), its output the
  `_monitors` table.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidegate import settings
from tidegate.catalog import Catalog, Owner, load_catalog
from tidegate.errors import TidegateError
from tidegate.lake.lineage import table_owner
from tidegate.lake.tables import LakeTables
from tidegate.version import code_version, git_sha

log = logging.getLogger(__name__)

NAMESPACE = "tidegate"
PRODUCER = "https://github.com/tidegate/tidegate"
_UUID_NS = uuid.UUID("6f1c8d2e-7a3b-4c5d-9e0f-1a2b3c4d5e6f")


def run_uuid(tidegate_id: str) -> str:
    """The OpenLineage run id (a UUID) of a tidegate run or batch id: deterministic both ways."""
    return str(uuid.uuid5(_UUID_NS, tidegate_id))


def dataset_name(uri: str) -> tuple[str, str]:
    """A Delta table location as an OpenLineage (namespace, name)."""
    if uri.startswith("gs://"):
        bucket, _, path = uri.removeprefix("gs://").partition("/")
        return f"gs://{bucket}", "/" + path
    if "://" in uri and not uri.startswith("file://"):
        scheme, _, rest = uri.partition("://")
        host, _, path = rest.partition("/")
        return f"{scheme}://{host}", "/" + path
    return "file", str(Path(uri.removeprefix("file://")).absolute())


def subscription_dataset(project: str, subscription: str) -> tuple[str, str]:
    return "pubsub", f"subscription:{project}:{subscription}"


@dataclass
class OutputTable:
    uri: str
    version: int | None
    rows: int
    files: int | None = None
    bytes: int | None = None
    schema: Any = None  # pyarrow.Schema
    assertions: list[dict[str, Any]] | None = None  # expectation, column, success


def dataset_owners(lake: str, catalog: Catalog) -> tuple[dict[tuple[str, str], Owner], dict[str, Owner]]:
    """Who owns what tidegate emits: per Delta table as an OpenLineage (namespace, name), and
    per subscription name (the project is the run's, so a subscription is matched by name)."""
    tables = {
        dataset_name(spec.uri(lake)): owner
        for spec in LakeTables(lake, catalog).specs()
        if (owner := table_owner(catalog, spec)) is not None
    }
    subscriptions = {s.subscription: s.owner for s in catalog.streams if s.owner is not None}
    return tables, subscriptions


def _catalog_or_none() -> Catalog | None:
    """The catalog this process would load without --catalog ($TIDEGATE_CATALOG, else the
    shipped one), for an emitter nobody handed one; None if it does not load."""
    try:
        return load_catalog()
    except TidegateError as exc:
        log.warning("OpenLineage events carry no ownership: the catalog does not load (%s)", exc)
        return None


class LineageEmitter:
    """Builds and sends run events; one per process (ingest run or replay).

    `catalog` gives the datasets their owners (the ownership facet); without one, the catalog
    that loads by default ($TIDEGATE_CATALOG, else the shipped one)."""

    def __init__(self, lake: str, *, home: Path | None = None, catalog: Catalog | None = None) -> None:
        # openlineage: loaded only when lineage events are emitted
        from openlineage.client import OpenLineageClient

        self.enabled = os.environ.get("TIDEGATE_OPENLINEAGE", "").lower() not in ("off", "0", "false")
        self.client: Any = None
        self.target = "off"
        self.table_owners: dict[tuple[str, str], Owner] = {}
        self.subscription_owners: dict[str, Owner] = {}
        if not self.enabled:
            return
        catalog = catalog if catalog is not None else _catalog_or_none()
        if catalog is not None:
            self.table_owners, self.subscription_owners = dataset_owners(lake, catalog)
        url = os.environ.get("TIDEGATE_OPENLINEAGE_URL")
        if url:
            from openlineage.client.transport.http import (
                HttpConfig,
                HttpTransport,
            )

            self.client = OpenLineageClient(
                transport=HttpTransport(HttpConfig(url=url, timeout=5.0, retry={"total": 2}))
            )
            self.target = url
            return
        from openlineage.client.transport.file import (
            FileConfig,
            FileTransport,
        )

        if "://" in lake and not lake.startswith("file://"):
            folder = (home or settings.home()) / "openlineage"
        else:
            folder = Path(lake.removeprefix("file://")) / "_openlineage"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "events.jsonl"
        self.client = OpenLineageClient(
            transport=FileTransport(FileConfig(log_file_path=str(path), append=True))
        )
        self.target = str(path)

    # -- events ----------------------------------------------------------------------------------

    def owner(self, namespace: str, name: str) -> Owner | None:
        """The owner of an emitted dataset (a Delta table of this lake or a subscription), if any."""
        if namespace == "pubsub" and name.startswith("subscription:"):
            return self.subscription_owners.get(name.rsplit(":", 1)[-1])
        return self.table_owners.get((namespace, name))

    def emit(
        self,
        state: str,
        job: str,
        run_id: str,
        *,
        parent: tuple[str, str] | None = None,
        inputs: Iterable[tuple[str, str]] = (),
        outputs: Iterable[OutputTable] = (),
        error: str | None = None,
        tidegate_run_id: str | None = None,
        monitors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """`monitors`: breaches of the stream monitors, sent as the run facet `tidegateMonitors`
        (an empty list says the monitors were evaluated and found nothing; None: no facet)."""
        if self.client is None:
            return
        try:
            self.client.emit(
                self._event(state, job, run_id, parent, inputs, outputs, error, tidegate_run_id, monitors)
            )
        except Exception as exc:  # noqa: BLE001 - lineage must never stop the data
            log.warning("OpenLineage %s event for %s not sent: %s", state, job, exc)

    def _event(
        self,
        state: str,
        job: str,
        run_id: str,
        parent: tuple[str, str] | None,
        inputs: Iterable[tuple[str, str]],
        outputs: Iterable[OutputTable],
        error: str | None,
        tidegate_run_id: str | None,
        monitors: Sequence[Mapping[str, Any]] | None = None,
    ) -> Any:
        # openlineage: loaded only when lineage events are emitted
        from openlineage.client.event_v2 import (
            InputDataset,
            Job,
            OutputDataset,
            Run,
            RunEvent,
            RunState,
        )
        from openlineage.client.facet_v2 import (
            data_quality_assertions_dataset,
            dataset_version_dataset,
            error_message_run,
            output_statistics_output_dataset,
            ownership_dataset,
            parent_run,
            schema_dataset,
        )

        def ownership(namespace: str, name: str) -> dict[str, Any]:
            owner = self.owner(namespace, name)
            if owner is None:
                return {}
            owners = [ownership_dataset.Owner(name=f"team:{owner.team}", type="MAINTAINER")]
            if owner.contact:
                contact = owner.contact
                if "@" in contact and ":" not in contact:
                    contact = f"mailto:{contact}"
                owners.append(ownership_dataset.Owner(name=contact, type="CONTACT"))
            return {"ownership": ownership_dataset.OwnershipDatasetFacet(owners=owners)}

        run_facets: dict[str, Any] = {}
        if parent is not None:
            parent_job, parent_id = parent
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=run_uuid(parent_id)),
                job=parent_run.Job(namespace=NAMESPACE, name=parent_job),
            )
        if error is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error, programmingLanguage="python"
            )
        outs = []
        for o in outputs:
            ns, name = dataset_name(o.uri)
            facets: dict[str, Any] = ownership(ns, name)
            if o.version is not None:
                facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                    datasetVersion=str(o.version)
                )
            if o.schema is not None:
                facets["schema"] = schema_dataset.SchemaDatasetFacet(
                    fields=[
                        schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type))
                        for f in o.schema
                    ]
                )
            if o.assertions:
                facets["dataQualityAssertions"] = (
                    data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
                        assertions=[
                            data_quality_assertions_dataset.Assertion(
                                assertion=a["expectation"], success=bool(a["success"]), column=a.get("column")
                            )
                            for a in o.assertions
                        ]
                    )
                )
            out_facets: dict[str, Any] = {
                "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=o.rows, size=o.bytes, fileCount=o.files
                )
            }
            outs.append(OutputDataset(namespace=ns, name=name, facets=facets, outputFacets=out_facets))
        ins = [InputDataset(namespace=ns, name=name, facets=ownership(ns, name)) for ns, name in inputs]
        run_id_uuid = run_uuid(run_id)
        if tidegate_run_id is not None:
            run_facets["tidegate"] = _tidegate_facet(tidegate_run_id)
        if monitors is not None:
            run_facets["tidegateMonitors"] = _monitors_facet(monitors)
        return RunEvent(
            eventType=getattr(RunState, state),
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=run_id_uuid, facets=run_facets),
            job=Job(namespace=NAMESPACE, name=job),
            inputs=ins,
            outputs=outs,
            producer=PRODUCER,
        )


def _tidegate_facet(run_id: str) -> Any:
    """Custom run facet: tidegate's own run id, code version and git sha (the same values as
    the Delta commits' tidegate_run_id / tidegate_version / tidegate_git_sha)."""
    # openlineage: loaded only when lineage events are emitted
    import attr
    from openlineage.client.generated.base import (
        RunFacet,
    )

    @attr.define
    class TidegateRunFacet(RunFacet):
        runId: str
        codeVersion: str
        gitSha: str

        @staticmethod
        def _get_schema() -> str:
            return "https://github.com/tidegate/tidegate/blob/main/docs/reading.md#openlineage"

    return TidegateRunFacet(runId=run_id, codeVersion=code_version(), gitSha=git_sha())


def _monitors_facet(breaches: Sequence[Mapping[str, Any]]) -> Any:
    """Custom run facet: the breaches of tidegate's stream monitors (tidegate.ops.monitors), each
    with its breach_id, monitor, kind, event_type, column, window_start/end, observed, expected,
    threshold and message, as the `_monitors` table holds them."""
    # openlineage: loaded only when lineage events are emitted
    import attr
    from openlineage.client.generated.base import (
        RunFacet,
    )

    @attr.define
    class TidegateMonitorsRunFacet(RunFacet):
        breaches: list[dict[str, Any]]

        @staticmethod
        def _get_schema() -> str:
            return "https://github.com/tidegate/tidegate/blob/main/docs/monitors.md#openlineage"

    return TidegateMonitorsRunFacet(breaches=[dict(b) for b in breaches])
