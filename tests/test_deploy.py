"""Deployment, checked offline: the Terraform reads the same catalog as the local platform
(evaluated by terraform itself, without providers or credentials), grants no role broader than
stated, and the Dataflow jobs build offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tidegate.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "tidegate" / "infra" / "terraform"
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="terraform is not installed (see README: Deploying)"
)


def _unquote(value: Any) -> Any:
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def resources(*files: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource in the given .tf files."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        doc = _unquote(hcl2.load((TF / f).open()))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    out[(rtype, name)] = body
    return out


def terraform(args: list[str], cwd: Path, stdin: str | None = None) -> str:
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": "/dev/null",
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
    }
    r = subprocess.run(
        [TERRAFORM or "terraform", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "Error" not in r.stderr, r.stderr  # terraform console reports some errors with exit 0
    return r.stdout


def evaluate_catalog(tmp_path: Path, catalog_path: Path, expr: str) -> Any:
    """What tidegate/infra/terraform/catalog computes from a catalog, evaluated by terraform console."""
    module = tmp_path / "catalog-module"
    if not module.exists():
        shutil.copytree(TF / "catalog", module, ignore=shutil.ignore_patterns(".terraform*"))
        terraform(["init", "-backend=false", "-input=false", "-no-color"], module)
    out = terraform(
        ["console", "-no-color", f"-var=catalog_path={catalog_path}"], module, stdin=f"jsonencode({expr})\n"
    )
    return json.loads(json.loads(out.strip()))


@needs_terraform
def test_terraform_is_formatted() -> None:
    terraform(["fmt", "-check", "-recursive", "-diff", str(TF)], ROOT)


@needs_terraform
@pytest.mark.parametrize("which", ["shipped", "custom", "shared"])
def test_terraform_derives_every_stream_from_the_catalog(tmp_path: Path, which: str) -> None:
    if which == "shipped":
        path = ROOT / "tidegate" / "infra" / "catalog.yaml"
    elif which == "custom":  # defaults overridden, per-stream settings, a schema on one topic
        path = tmp_path / "catalog.yaml"
        path.write_text(
            f"project: acme-data\ncontracts: {ROOT / 'tidegate' / 'expectations' / 'contracts'}\n"
            "defaults: {ack_deadline_seconds: 120, message_retention: 12h, exactly_once_delivery: true}\n"
            "dead_letter: {topic: dlq, subscription: dlq-sub, max_delivery_attempts: 7}\n"
            "streams:\n"
            "  - {event_type: shop.order.placed, topic: orders, subscription: orders-sub}\n"
            "  - {event_type: shop.page.viewed, topic: views, subscription: views-sub, ack_deadline_seconds: 30,"
            " message_retention: 3d, publish_schema: true}\n"
        )
    else:  # several types behind one subscription, and two streams on one topic
        path = tmp_path / "catalog.yaml"
        path.write_text(
            f"project: acme-data\ncontracts: {ROOT / 'tidegate' / 'expectations' / 'contracts'}\n"
            "streams:\n"
            "  - {event_types: [shop.order.placed, shop.payment.captured], topic: checkout, subscription: checkout-sub}\n"
            "  - {event_type: shop.page.viewed, topic: checkout, subscription: views-sub}\n"
        )
    catalog = load_catalog(path)
    streams = evaluate_catalog(tmp_path, path, "local.streams")
    assert set(streams) == {s.event_type for s in catalog.streams}  # every stream: a subscription
    topics = evaluate_catalog(tmp_path, path, "local.topics")
    assert set(topics) == {s.topic for s in catalog.streams}  # every topic once
    for s in catalog.streams:
        tf = streams[s.event_type]
        assert (tf["topic"], tf["subscription"]) == (s.topic, s.subscription)
        assert tf["ack_deadline_seconds"] == s.ack_deadline_seconds
        assert tf["retention_seconds"] == s.message_retention_seconds
        assert tf["exactly_once_delivery"] == s.exactly_once_delivery
        assert tf["publish_schema"] == s.publish_schema
        latest = max(int(p.stem[1:]) for p in (catalog.contracts_dir / s.event_type).glob("v*.avsc"))
        assert Path(tf["latest_contract"]) == catalog.contracts_dir / s.event_type / f"v{latest}.avsc"
    dead = evaluate_catalog(tmp_path, path, "local.dead_letter")
    assert (dead["topic"], dead["subscription"], dead["max_delivery_attempts"]) == (
        catalog.dead_letter.topic,
        catalog.dead_letter.subscription,
        catalog.dead_letter.max_delivery_attempts,
    )


def test_every_catalog_resource_is_created_per_stream_with_its_dead_letter_policy() -> None:
    r = resources("main.tf")
    assert r[("google_pubsub_topic", "stream")]["for_each"] == "${local.topics}"  # a shared topic once
    assert r[("google_pubsub_subscription", "stream")]["for_each"] == "${local.streams}"
    sub = r[("google_pubsub_subscription", "stream")]
    assert sub["ack_deadline_seconds"] == "${each.value.ack_deadline_seconds}"
    assert sub["enable_exactly_once_delivery"] == "${each.value.exactly_once_delivery}"
    dlp = sub["dead_letter_policy"][0]
    assert dlp["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dlp["max_delivery_attempts"] == "${local.dead_letter.max_delivery_attempts}"
    topic = r[("google_pubsub_topic", "stream")]
    assert topic["dynamic"][0]["schema_settings"]["for_each"] == "${each.value.publish_schema ? [1] : []}"


def test_buckets_are_private_and_quarantine_expires() -> None:
    r = resources("main.tf")
    for name in ("lake", "staging"):
        b = r[("google_storage_bucket", name)]
        assert b["uniform_bucket_level_access"] is True
        assert b["public_access_prevention"] == "enforced"
    rule = r[("google_storage_bucket", "lake")]["lifecycle_rule"][0]
    assert rule["condition"][0]["matches_prefix"] == ["lake/quarantine/"]
    assert rule["condition"][0]["age"] == "${var.quarantine_retention_days}"
    assert rule["action"][0]["type"] == "Delete"


ALLOWED = {
    # (resource type, role): the only grants the deployment makes
    ("google_project_iam_member", "roles/dataflow.worker"),
    ("google_project_iam_member", "roles/logging.logWriter"),
    ("google_project_iam_member", "roles/monitoring.metricWriter"),
    ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
    ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
    ("google_storage_bucket_iam_member", "roles/storage.objectAdmin"),
    ("google_storage_bucket_iam_member", "roles/storage.objectViewer"),
    ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader"),
    ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor"),
}


def _roles(body: dict[str, Any]) -> set[str]:
    role = body["role"]
    if role == "${each.value}":  # for_each over a literal set of roles
        return set(json.loads(body["for_each"].removeprefix("${toset(").removesuffix(")}").replace("'", '"')))
    return {role}


def test_no_role_is_broader_than_stated() -> None:
    r = resources("main.tf")
    grants = {
        (t, role)
        for (t, _), body in r.items()
        if t.endswith(("_iam_member", "_iam_binding", "_iam_policy"))
        for role in _roles(body)
    }
    assert grants <= ALLOWED, grants - ALLOWED
    assert not any(t.endswith(("_iam_binding", "_iam_policy")) for t, _ in r)  # never replace others' grants
    pipeline = "serviceAccount:${google_service_account.pipeline.email}"
    reader_grants = {
        (t, b["role"])
        for (t, _), b in r.items()
        if t.endswith("_iam_member") and "reader" in str(b.get("member", "")) + str(b.get("for_each", ""))
    }
    assert reader_grants == {("google_storage_bucket_iam_member", "roles/storage.objectViewer")}
    subscriber = r[("google_pubsub_subscription_iam_member", "pipeline_subscriber")]
    assert subscriber["for_each"] == "${google_pubsub_subscription.stream}"  # its subscriptions only
    assert subscriber["member"] == pipeline
    assert (
        r[("google_storage_bucket_iam_member", "pipeline_lake")]["bucket"]
        == "${google_storage_bucket.lake.name}"
    )


@pytest.mark.emulator
def test_the_whole_flow_runs_on_a_lake_uri_not_a_local_path(
    cli, pubsub_emulator, catalog, project, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The lake as a URI (file://, the way gs:// reaches delta-rs and polars): nothing may assume
    a local path. Ingest, aggregates, replay, verify, lineage and maintain all go through it."""
    from tests.test_ingest import produce
    from tidegate.infra.pubsub import provision

    provision(catalog, pubsub_emulator.address, project)
    produce(pubsub_emulator, catalog, project, tmp_path / "warm.jsonl", count=300, seed=4)
    lake = f"file://{tmp_path}/lake with space"
    cat_file = tmp_path / "catalog.yaml"
    cat_file.write_text(
        catalog.path.read_text()
        .replace("project: local-lake", f"project: {project}")
        .replace(
            "contracts: ../expectations/contracts",
            f"contracts: {ROOT / 'tidegate' / 'expectations' / 'contracts'}",
        )
    )
    monkeypatch.setenv("TIDEGATE_STORAGE_OPTIONS", "allow_unsafe_rename=false")  # passed through untouched
    common = ["--lake", lake, "--catalog", str(cat_file)]
    r = cli(
        "ingest", "--until-idle", "0.5", "--max-wait", "0.5", "--emulator", pubsub_emulator.address, *common
    )
    assert r.code == 0, r.text
    manifest = tmp_path / "m.jsonl"
    produce(
        pubsub_emulator, catalog, project, manifest, count=600, seed=5, late_rate=0.05, out_of_order_rate=0.1
    )
    r = cli(
        "ingest", "--until-idle", "0.5", "--max-wait", "0.5", "--emulator", pubsub_emulator.address, *common
    )
    assert r.code == 0, r.text
    r = cli("replay", "sessions_per_user", *common)
    assert r.code == 0, r.text
    r = cli("verify", "--manifest", str(manifest), *common)
    assert r.code == 0, r.text
    assert "✓ aggregates/sessions_per_user: equals a recompute from raw" in r.text
    r = cli("lineage", "aggregates/sessions_per_user", *common)
    assert r.code == 0, r.text
    assert "replay" in r.text
    first = next(row for row in map(json.loads, manifest.read_text().splitlines()) if row["expect"] == "raw")
    r = cli("lineage", f"raw/{first['type']}", "--row", first["ce_id"], *common)
    assert r.code == 0, r.text
    assert first["ce_id"] in r.text
    r = cli("maintain", *common)
    assert r.code == 0, r.text
    assert not (Path(str(tmp_path)) / "file:").exists()  # no directory named after the scheme
    assert (tmp_path / "lake with space" / "aggregates" / "sessions_per_user" / "_delta_log").is_dir()


# -- tidegate deploy dataflow ------------------------------------------------------------------

DEPLOY = [
    "deploy",
    "dataflow",
    "--project",
    "acme-data",
    "--region",
    "europe-west1",
    "--lake",
    "gs://acme-lake/lake",
    "--temp-location",
    "gs://acme-dataflow/tmp",
]


def test_deploy_dry_run_builds_the_streaming_job_offline(cli, catalog, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.json"
    r = cli(*DEPLOY, "--streaming", "--max-workers", "7", "--dry-run", "--job-file", spec)
    assert r.code == 0, r.text
    assert "JOB_TYPE_STREAMING" in r.text
    job = json.loads(spec.read_text())
    opts = job["options"]
    assert opts["streaming"] is True
    assert opts["autoscaling_algorithm"] == "THROUGHPUT_BASED"
    assert opts["max_num_workers"] == 7
    assert opts["job_name"] == "tidegate-ingest"
    for a in catalog.aggregates:
        assert f"WriteAggregates/{a.name}/Upsert" in job["steps"]


def test_deploy_dry_run_builds_the_batch_replay_offline(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.json"
    r = cli(
        *DEPLOY,
        "--replay",
        "sessions_per_user",
        "--since",
        "2026-11-26T00:00:00Z",
        "--dry-run",
        "--job-file",
        spec,
    )
    assert r.code == 0, r.text
    job = json.loads(spec.read_text())
    assert job["type"] == "JOB_TYPE_BATCH"
    assert job["options"]["job_name"] == "tidegate-replay-sessions-per-user"
    assert "streaming" not in job["options"]
    for step in (
        "ReplayAggregate/ReadAndPreAggregate",
        "ReplayAggregate/MergePartials",
        "WriteReplayed/WriteAggregate",
        "WriteReplayed/WriteLateLedger",
    ):
        assert step in job["steps"]


class _Submitted:
    def job_id(self) -> str:
        return "2026-11-26_12_00_00-1234567890"


def test_deploy_launches_and_prints_the_console_url(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """GCP cannot run here: the submission itself is the one thing replaced."""
    import apache_beam as beam

    seen: list[list[str]] = []

    def submit(self: beam.Pipeline) -> _Submitted:
        seen.append(self._options.get_all_options(drop_default=True))  # type: ignore[arg-type]
        return _Submitted()

    monkeypatch.setattr(beam.Pipeline, "run", submit)
    import google.auth
    from apache_beam.io.gcp import gcsio
    from google.auth.credentials import AnonymousCredentials

    import tidegate.pipelines.dataflow
    from tests.gcp_fakes import secret_manager

    configs: list[Any] = []
    build = tidegate.pipelines.dataflow.build_streaming

    def recording(p: Any, catalog: Any, target: Any, config: Any) -> None:
        configs.append(config)
        build(p, catalog, target, config)

    monkeypatch.setattr(tidegate.pipelines.dataflow, "build_streaming", recording)
    secret = "projects/acme-data/secrets/tidegate-pii-key/versions/latest"

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "acme-data"))
    # Beam asks GCS about the temp bucket's soft-delete policy while validating the options
    monkeypatch.setattr(gcsio.GcsIO, "is_soft_delete_enabled", lambda self, path: False)
    for var, value in (
        ("NO_GCE_CHECK", "True"),
        ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ("GCE_METADATA_IP", "127.0.0.1:9"),
        ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9"),  # any other GCS call: loopback, refused
    ):
        monkeypatch.setenv(var, value)  # nothing may look for GCP beyond loopback
    with secret_manager({secret: b"p" * 64}, monkeypatch) as fake_sm:
        r = cli(
            *DEPLOY,
            "--streaming",
            "--update",
            "--image",
            "europe-west1-docker.pkg.dev/acme-data/tidegate/tidegate:abc",
            "--service-account",
            "tidegate-pipeline@acme-data.iam.gserviceaccount.com",
        )
        assert r.code == 0, r.text
        assert "updated Dataflow job tidegate-ingest" in r.text
        assert (
            "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-11-26_12_00_00-1234567890?project=acme-data"
            in r.text
        )
    opts = seen[0]
    assert opts["update"] is True
    assert opts["sdk_container_image"].endswith("tidegate:abc")
    assert opts["service_account_email"].startswith("tidegate-pipeline@")
    assert "dry_run" not in opts
    # The workers get the PII key's secret name (the launch checked it can be read), never the key.
    assert fake_sm.requests == [secret]
    assert configs[0].production is True
    assert configs[0].pii_key_secret == secret
    assert "p" * 64 not in repr(configs[0]) + json.dumps(opts, default=str)


def test_deploy_without_credentials_says_how_to_get_them(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for var, value in (
        ("NO_GCE_CHECK", "True"),
        ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ("GCE_METADATA_IP", "127.0.0.1:9"),
    ):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent-gcloud-config")
    r = cli(*DEPLOY, "--streaming")
    assert r.code == 2
    assert "no Google credentials" in r.text
    assert "gcloud auth application-default login" in r.text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "say which job: --streaming"),
        (["--streaming", "--replay", "sessions_per_user"], "say which job"),
        (["--replay", "sessions_per_user", "--update"], "--update replaces a running streaming job"),
        (["--replay", "nope"], "unknown aggregate 'nope'"),
    ],
)
def test_deploy_mistakes_say_what_to_do(cli, extra: list[str], expected: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(*DEPLOY, *extra, "--dry-run")
    assert r.code == 2
    assert expected in r.text


def test_deploy_refuses_a_lake_or_temp_location_off_gcs(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli(*[a if a != "gs://acme-lake/lake" else "/tmp/lake" for a in DEPLOY], "--streaming", "--dry-run")
    assert r.code == 2
    assert "must be a gs://bucket/path URI for Dataflow" in r.text
    r = cli(
        *[a if a != "gs://acme-dataflow/tmp" else "gs://X/tmp" for a in DEPLOY], "--streaming", "--dry-run"
    )
    assert r.code == 2
    assert "is not a gs://bucket/path location" in r.text


# -- the Flex Template --------------------------------------------------------------------------

DOCKERFILE = ROOT / "tidegate" / "infra" / "dataflow" / "Dockerfile"


def test_the_image_uses_the_beam_version_the_lock_pins() -> None:
    import tomllib

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    beam_version = next(p["version"] for p in lock["package"] if p["name"] == "apache-beam")
    text = DOCKERFILE.read_text()
    assert f"ARG BEAM_VERSION={beam_version}" in text
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in text
    assert "uv export --frozen" in text  # the lock's exact versions, no resolution at build time
    py = text.split("ARG PYTHON_VERSION=")[1].split()[0]
    assert py in ("3.11", "3.12")  # what pyproject's requires-python allows
    entry = text.split("FLEX_TEMPLATE_PYTHON_PY_FILE=")[1].split()[0]
    assert (ROOT / entry.removeprefix("/template/")).is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"COPY {package}/ {package}/" in text


def test_template_parameters_are_the_entry_points_options() -> None:
    from tidegate.pipelines.flex_main import parser

    meta = json.loads((ROOT / "tidegate" / "infra" / "dataflow" / "metadata.json").read_text())
    options = {a.dest for a in parser()._actions if a.dest != "help"}
    params = {p["name"] for p in meta["parameters"]}
    assert params == options
    for p in meta["parameters"]:
        assert len(p["helpText"]) > 30
        for rx in p.get("regexes", []):
            __import__("re").compile(rx)


def test_the_entry_point_builds_a_replay_graph_offline(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The launcher's code path up to submission (planning reads the lake: a local one here)."""
    import apache_beam as beam

    from tests.test_projection import commit_raw, order
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.pipelines import flex_main

    catalog = load_catalog()
    lake = tmp_path / "lake"
    commit_raw(
        str(lake), ContractRegistry.from_catalog(catalog), "shop.order.placed", [order(1, 5), order(2, 70)]
    )
    ran: list[beam.Pipeline] = []
    monkeypatch.setattr(beam.Pipeline, "run", lambda self: ran.append(self))
    monkeypatch.setattr("tidegate.pipelines.dataflow.DataflowTarget.check", lambda self: None)
    flex_main.main(
        [
            "--mode",
            "replay",
            "--aggregate",
            "revenue_per_currency_1m",
            "--lake",
            str(lake),
            "--runner=DirectRunner",
        ]
    )
    assert len(ran) == 1
