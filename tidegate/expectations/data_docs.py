"""GX Data Docs (static HTML) from the results stored in `<lake>/_quality` (`tidegate docs`).

Each (batch, event type) of the `_quality` table becomes one GX validation result, built with
GX's own classes from the stored per-expectation outcomes and the expectation's configuration in
the suite (`tidegate/expectations/contracts/<type>/suite.json`), put into a file-based GX context's
validation store, and rendered by GX (`build_data_docs`). Nothing is re-validated: the docs show
what ingestion found at the time.

Offline: the pages are plain files (`<out>/gx/uncommitted/data_docs/local_site/index.html`);
GX's templates link their CSS/JS from public CDNs, so without network they show unstyled but
complete.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.suites import load_suite_dict


def _suite_name(event_type: str) -> str:
    return event_type.replace(".", "_")  # GX's file store splits names on dots


def build_data_docs(rows: list[dict[str, Any]], registry: ContractRegistry, out: Path) -> Path:
    """Render `_quality` rows (dicts) into GX Data Docs under `out`; returns index.html."""
    # GX takes seconds to import: loaded only where a suite runs through it
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.run_identifier import (
        RunIdentifier,
    )
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    out.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(out))
    configs: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for event_type, contracts in registry.types.items():
        if contracts.suite_path is None:
            continue
        for e in load_suite_dict(contracts.suite_path).get("expectations", []):
            configs[(event_type, e["type"], e.get("kwargs", {}).get("column"))] = e
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["batch_id"], r["event_type"]), []).append(r)
    for (batch_id, event_type), outcomes in sorted(groups.items()):
        results = []
        for o in outcomes:
            conf = configs.get((event_type, o["expectation"], o["column"]))
            kwargs = dict(conf["kwargs"]) if conf else ({"column": o["column"]} if o["column"] else {})
            results.append(
                ExpectationValidationResult(
                    success=bool(o["success"]),
                    expectation_config=ExpectationConfiguration(type=o["expectation"], kwargs=kwargs),
                    result={
                        "element_count": int(o["element_count"]),
                        "unexpected_count": int(o["unexpected_count"]),
                        "unexpected_percent": float(o["unexpected_percent"]),
                        "missing_count": 0,
                    },
                )
            )
        passed = sum(1 for o in outcomes if o["success"])
        when = outcomes[0]["validated_at"]
        run = RunIdentifier(
            run_name=batch_id, run_time=when.isoformat() if isinstance(when, datetime) else str(when)
        )
        suite = _suite_name(event_type)
        result = ExpectationSuiteValidationResult(
            success=passed == len(outcomes),
            results=results,
            suite_name=suite,
            statistics={
                "evaluated_expectations": len(outcomes),
                "successful_expectations": passed,
                "unsuccessful_expectations": len(outcomes) - passed,
                "success_percent": 100.0 * passed / len(outcomes),
            },
            meta={
                "run_id": run,
                "tidegate_run_id": outcomes[0]["run_id"],
                "suite_fingerprint": outcomes[0].get("suite_fingerprint"),
            },
        )
        key = ValidationResultIdentifier(
            ExpectationSuiteIdentifier(name=suite), run, event_type.replace(".", "_")
        )
        context.validation_results_store.set(key, result)
    context.build_data_docs()
    return out / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
