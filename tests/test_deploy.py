"""Deployment, checked offline: the Terraform reads the same catalog as the local platform
(evaluated by terraform itself, without providers or credentials), grants no role broader than
stated, and the Dataflow jobs build offline."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tidegate.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "tidegate" / "infra" / "terraform"
WORKER_KEY = b"4f9675a20f457c946d9ede40695c601c577d833609ead57162b8cd5eb6b10cf2"  # a random key, as `secrets.token_hex(32)` makes one
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


ROOT_TF = sorted(p.name for p in TF.glob("*.tf"))  # the root module: main, variables, outputs, versions


def blocks(kind: str, *files: str) -> dict[str, Any]:
    """name -> body of every `variable`, `output` or `locals` entry in the given .tf files (default: all)."""
    out: dict[str, Any] = {}
    for f in files or ROOT_TF:
        for block in _unquote(hcl2.load((TF / f).open())).get(kind, []):
            out.update(block)
    return out


def data_sources(*files: str) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files or ROOT_TF:
        for block in _unquote(hcl2.load((TF / f).open())).get("data", []):
            for dtype, named in block.items():
                for name, body in named.items():
                    out[(dtype, name)] = body
    return out


def dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The `dynamic "<name>"` block of a resource (or nested block) body."""
    return next(d[name] for d in body.get("dynamic", []) if name in d)


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


# Lifecycle conditions that select live objects (the current version of a file a Delta table
# may still reference). Only `days_since_noncurrent_time` / `num_newer_versions` with_state
# ARCHIVED select noncurrent versions alone.
LIVE_OBJECT_CONDITIONS = {
    "age",
    "created_before",
    "custom_time_before",
    "days_since_custom_time",
    "matches_prefix",
    "matches_suffix",
    "matches_storage_class",
}


def test_buckets_are_private_and_nothing_deletes_live_delta_files() -> None:
    """Deleting objects by age inside the lake deletes _delta_log entries and data files a table
    still references ("No table metadata or protocol found in delta log"). The lake bucket only
    expires noncurrent versions; the staging bucket (not a Delta table) still expires by age."""
    r = resources("main.tf")
    for name in ("lake", "staging"):
        b = r[("google_storage_bucket", name)]
        assert b["uniform_bucket_level_access"] is True
        assert b["public_access_prevention"] == "enforced"
    lake_rules = r[("google_storage_bucket", "lake")].get("lifecycle_rule", [])
    assert lake_rules, "the lake bucket expires its noncurrent versions"
    for rule in lake_rules:
        cond = rule["condition"][0]
        assert rule["action"][0]["type"] == "Delete"
        assert not LIVE_OBJECT_CONDITIONS & set(cond), cond
        assert cond["with_state"] == "ARCHIVED"  # noncurrent versions only, never a live object
        assert cond["days_since_noncurrent_time"] == "${var.noncurrent_version_retention_days}"
    assert not any("lifecycle_rule" in d for d in r[("google_storage_bucket", "lake")].get("dynamic", []))
    assert blocks("variable")["noncurrent_version_retention_days"]["type"] == "number"
    staging = r[("google_storage_bucket", "staging")]["lifecycle_rule"][0]
    assert staging["condition"][0]["age"] == 7
    assert staging["action"][0]["type"] == "Delete"


def test_the_lake_bucket_keeps_object_versions() -> None:
    """An overwritten or deleted lake object (a vacuumed file, a mistaken delete) stays recoverable."""
    lake = resources("main.tf")[("google_storage_bucket", "lake")]
    assert lake["versioning"][0]["enabled"] is True


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
    ("google_kms_crypto_key_iam_member", "roles/cloudkms.cryptoKeyEncrypterDecrypter"),
    # The stream monitors' schedule (monitoring.tf): its own account may run the Cloud Run job
    # tidegate-monitor, granted on that job only (not project-wide); pinned by
    # test_the_monitor_invoker_may_run_that_one_job_and_nothing_else.
    ("google_cloud_run_v2_job_iam_member", "roles/run.invoker"),
    # The daily maintenance launch (maintenance.tf): its scheduler account creates Dataflow jobs
    # (the narrowest predefined role with dataflow.jobs.create) and runs them as the pipeline's
    # account (actAs on that one account, not project-wide). Both are pinned to that account by
    # test_the_scheduler_account_has_only_the_two_roles_it_needs.
    ("google_project_iam_member", "roles/dataflow.developer"),
    ("google_service_account_iam_member", "roles/iam.serviceAccountUser"),
}


def _roles(body: dict[str, Any]) -> set[str]:
    role = body["role"]
    if role == "${each.value}":  # for_each over a literal set of roles
        return set(json.loads(body["for_each"].removeprefix("${toset(").removesuffix(")}").replace("'", '"')))
    return {role}


def test_no_role_is_broader_than_stated() -> None:
    r = resources(*ROOT_TF)  # every file of the root module: a grant cannot hide in a new one
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
    # the key is only ever granted to Google's service agents, and only when CMEK is on
    kms = r[("google_kms_crypto_key_iam_member", "service_agents")]
    assert (
        kms["for_each"]
        == "${{for name, member in local.kms_agents : name => member if var.kms_key_name != null}}"
    )


# -- Terraform an auditor signs off (issue 14, outcome 4) ----------------------------------------


def test_data_access_to_storage_and_secrets_is_audited() -> None:
    """Data Access audit logs (off by default) for Cloud Storage (lake, quarantine, staging) and
    Secret Manager (the PII key): every read of the quarantine or of the key leaves a trace."""
    r = resources(*ROOT_TF)
    audited = {body["service"]: body for (t, _), body in r.items() if t == "google_project_iam_audit_config"}
    assert set(audited) >= {"storage.googleapis.com", "secretmanager.googleapis.com"}
    for service in ("storage.googleapis.com", "secretmanager.googleapis.com"):
        configs = audited[service]["audit_log_config"]
        assert {c["log_type"] for c in configs} == {"ADMIN_READ", "DATA_READ", "DATA_WRITE"}, service
        assert not any(c.get("exempted_members") for c in configs), "nobody is exempted, the pipeline neither"
        assert audited[service]["project"] == "${var.project}"


def _lake_condition(prefix: str) -> str:
    """The IAM condition granting reads of lake/<prefix>/, with the module's locals substituted."""
    local = blocks("locals")
    expr = local["lake_read_condition"][prefix]
    return expr.replace("${local.lake_objects}", local["lake_objects"]).replace(
        "${local.lake_prefix}", local["lake_prefix"]
    )


def test_analysts_read_only_raw_and_aggregates_and_auditors_the_quarantine() -> None:
    """No bucket-wide objectViewer on the lake: analysts get IAM conditions on raw/ and
    aggregates/; the quarantine is readable by the pipeline and var.quarantine_auditors only."""
    r = resources(*ROOT_TF)
    local = blocks("locals")
    objects = "projects/_/buckets/${google_storage_bucket.lake.name}/objects/lake"
    for prefix in ("raw", "aggregates", "quarantine"):
        cond = _lake_condition(prefix)
        assert cond == (
            f"resource.name.startsWith('{objects}/{prefix}/') || "
            f"api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('lake/{prefix}/')"
        )
    assert local["lake_prefix"] == "lake"
    assert blocks("output")["lake"]["value"] == "gs://${google_storage_bucket.lake.name}/lake"
    # conditional bucket grants need uniform bucket-level access
    assert r[("google_storage_bucket", "lake")]["uniform_bucket_level_access"] is True

    viewers = {
        name: body
        for (t, name), body in r.items()
        if t == "google_storage_bucket_iam_member" and body["role"] == "roles/storage.objectViewer"
    }
    assert set(viewers) == {"reader_lake", "auditor_quarantine"}
    for body in viewers.values():
        assert body["bucket"] == "${google_storage_bucket.lake.name}"
        assert body["condition"], "an unconditional objectViewer would open the whole bucket"
    analysts = viewers["reader_lake"]
    assert analysts["for_each"] == "${local.lake_reader_grants}"
    assert analysts["condition"][0]["expression"] == "${local.lake_read_condition[each.value.prefix]}"
    grants = local["lake_reader_grants"]
    assert '["raw", "aggregates"]' in grants
    assert "quarantine" not in grants
    assert "var.analyst_members" in local["lake_readers"]
    assert "google_service_account.reader.email" in local["lake_readers"]
    auditors = viewers["auditor_quarantine"]
    assert auditors["for_each"] == "${toset(var.quarantine_auditors)}"
    assert auditors["condition"][0]["expression"] == '${local.lake_read_condition["quarantine"]}'
    assert blocks("variable")["quarantine_auditors"]["default"] == []
    # besides them, only the pipeline's service account reads the lake (objectAdmin: it writes it)
    lake_grants = {
        name
        for (t, name), body in r.items()
        if t == "google_storage_bucket_iam_member" and body["bucket"] == "${google_storage_bucket.lake.name}"
    }
    assert lake_grants == {"reader_lake", "auditor_quarantine", "pipeline_lake"}
    assert r[("google_storage_bucket_iam_member", "pipeline_lake")]["member"] == (
        "serviceAccount:${google_service_account.pipeline.email}"
    )


def test_a_customer_managed_key_encrypts_everything_at_rest_when_set() -> None:
    """var.kms_key_name (default: Google-managed keys) reaches the buckets, the topics, the PII key
    secret and, through an output, the Dataflow job; the service agents may use the key."""
    r = resources(*ROOT_TF)
    var = blocks("variable")["kms_key_name"]
    assert var["default"] is None
    assert var["type"] == "string"
    on = "${var.kms_key_name == null ? [] : [var.kms_key_name]}"
    for name in ("lake", "staging"):
        enc = dynamic(r[("google_storage_bucket", name)], "encryption")
        assert enc["for_each"] == on
        assert enc["content"][0]["default_kms_key_name"] == "${encryption.value}"
    for name in ("stream", "dead_letter"):
        assert r[("google_pubsub_topic", name)]["kms_key_name"] == "${var.kms_key_name}"
    replication = r[("google_secret_manager_secret", "pii_key")]["replication"][0]
    assert dynamic(replication, "auto")["for_each"] == "${var.kms_key_name == null ? [1] : []}"
    managed = dynamic(replication, "user_managed")
    assert managed["for_each"] == on
    replica = managed["content"][0]["replicas"][0]
    assert replica["location"] == "${var.region}"
    assert replica["customer_managed_encryption"][0]["kms_key_name"] == "${user_managed.value}"
    # every resource the key encrypts waits for the agents' grant
    grant = "${google_kms_crypto_key_iam_member.service_agents}"
    for key in (
        ("google_storage_bucket", "lake"),
        ("google_storage_bucket", "staging"),
        ("google_pubsub_topic", "stream"),
        ("google_pubsub_topic", "dead_letter"),
        ("google_secret_manager_secret", "pii_key"),
    ):
        assert grant in r[key]["depends_on"], key
    kms = r[("google_kms_crypto_key_iam_member", "service_agents")]
    assert kms["crypto_key_id"] == "${var.kms_key_name}"
    assert kms["role"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    agents = blocks("locals")["kms_agents"]
    assert set(agents) == {"storage", "pubsub", "secretmanager", "dataflow", "compute"}
    assert "google_storage_project_service_account" in agents["storage"]
    assert ("google_storage_project_service_account", "this") in data_sources()
    assert "@gcp-sa-secretmanager.iam.gserviceaccount.com" in agents["secretmanager"]
    assert "@dataflow-service-producer-prod.iam.gserviceaccount.com" in agents["dataflow"]
    assert "@compute-system.iam.gserviceaccount.com" in agents["compute"]
    # the job is launched by `tidegate deploy dataflow`, not by terraform: the key is an output
    out = blocks("output")["dataflow_kms_key"]
    assert out["value"] == '${var.kms_key_name == null ? "" : var.kms_key_name}'
    assert "--dataflow_kms_key" in out["description"]


def test_dataflow_workers_get_private_ips_on_a_subnetwork_with_private_google_access() -> None:
    """var.subnetwork (or the one terraform creates, with Private Google Access and no route to
    the internet) is an output the launch passes with --subnetwork and --no_use_public_ips."""
    r = resources(*ROOT_TF)
    assert blocks("variable")["subnetwork"]["default"] is None
    created = "${var.subnetwork == null ? 1 : 0}"
    net = r[("google_compute_network", "workers")]
    assert net["count"] == created
    assert net["auto_create_subnetworks"] is False
    sub = r[("google_compute_subnetwork", "workers")]
    assert sub["count"] == created
    assert sub["private_ip_google_access"] is True
    assert sub["region"] == "${var.region}"
    fw = r[("google_compute_firewall", "workers_internal")]
    assert fw["direction"] == "INGRESS"
    assert fw["source_tags"] == ["dataflow"]
    assert fw["target_tags"] == ["dataflow"]
    assert "source_ranges" not in fw  # nothing from outside the workers
    # no external IPs, routers or NAT anywhere in the module
    assert not {t for t, _ in r} & {
        "google_compute_address",
        "google_compute_router_nat",
        "google_compute_router",
    }
    assert blocks("locals")["subnetwork"] == (
        "${var.subnetwork != null ? var.subnetwork : one(google_compute_subnetwork.workers[*].self_link)}"
    )
    out = blocks("output")["subnetwork"]
    assert out["value"] == "${local.subnetwork}"
    assert "--no_use_public_ips" in out["description"]


LOCK = TF / ".terraform.lock.hcl"


def test_the_provider_lock_is_committed_and_matches_the_pinned_version() -> None:
    """`terraform init` verifies the provider against these hashes instead of trusting whatever
    the registry serves: the file is committed (not gitignored) and pins the exact version."""
    required = blocks("terraform", "versions.tf")["required_providers"][0]["google"]
    assert required["source"] == "hashicorp/google"
    version = required["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "an exact version, the one the lock has hashes for"
    lock = _unquote(hcl2.load(LOCK.open()))
    providers = {name: body for block in lock["provider"] for name, body in block.items()}
    assert set(providers) == {"registry.terraform.io/hashicorp/google"}
    google = providers["registry.terraform.io/hashicorp/google"]
    assert google["version"] == version
    assert google["constraints"] == version
    hashes = google["hashes"]
    assert all(re.fullmatch(r"zh:[0-9a-f]{64}|h1:[A-Za-z0-9+/]{43}=", h) for h in hashes), hashes
    assert sum(h.startswith("zh:") for h in hashes) >= 10  # every platform's package
    assert any(h.startswith("h1:") for h in hashes)
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(LOCK.relative_to(ROOT))], cwd=ROOT, check=False
        )
        assert ignored.returncode == 1, ".terraform.lock.hcl must not be gitignored"


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
    assert opts.get("use_public_ips") is False  # private workers by default


def test_deploy_puts_workers_on_the_private_subnetwork_with_the_customer_key(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.json"
    key = "projects/acme-data/locations/europe-west1/keyRings/tidegate/cryptoKeys/lake"
    r = cli(
        *DEPLOY,
        "--streaming",
        "--subnetwork",
        "regions/europe-west1/subnetworks/tidegate-workers",
        "--dataflow-kms-key",
        key,
        "--dry-run",
        "--job-file",
        spec,
    )
    assert r.code == 0, r.text
    opts = json.loads(spec.read_text())["options"]
    assert opts["subnetwork"] == "regions/europe-west1/subnetworks/tidegate-workers"
    assert opts["use_public_ips"] is False
    assert opts["dataflow_kms_key"] == key


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


def test_deploy_dry_run_builds_the_view_replay_offline(cli, catalog, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--replay <view>`: the view's Beam rebuild (tidegate/pipelines/replay_view.py), built
    offline: each source read by file group and bucketed by key, one fold per bucket, one commit."""
    spec = tmp_path / "job.json"
    r = cli(*DEPLOY, "--replay", "order_state", "--dry-run", "--job-file", spec)
    assert r.code == 0, r.text
    job = json.loads(spec.read_text())
    assert job["type"] == "JOB_TYPE_BATCH"
    assert job["options"]["job_name"] == "tidegate-replay-order-state"
    assert "streaming" not in job["options"]
    steps = set(job["steps"])
    (view,) = [v for v in catalog.views if v.name == "order_state"]
    for e in view.events:
        assert f"FoldView/Groups/raw/{e.type}/Spread" in steps
        assert f"FoldView/BucketRows/raw/{e.type}" in steps
    for step in (
        "FoldView/GroupBuckets",
        "FoldView/FoldAndStage",
        "CommitView/CollectFiles",
        "CommitView/Commit",
    ):
        assert any(s == step or s.startswith(step + "/") for s in steps), step
    assert not any(s.startswith("ReplayAggregate") for s in steps)


def test_deploy_dry_run_builds_the_batch_verify_offline(cli, catalog, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole verify job for Dataflow, built offline (no credentials, nothing read from the
    lake): every check of the catalog's tables, and its one sink, the report in the lake."""
    spec = tmp_path / "job.json"
    r = cli(*DEPLOY, "--verify", "--dry-run", "--job-file", spec)
    assert r.code == 0, r.text
    job = json.loads(spec.read_text())
    assert job["type"] == "JOB_TYPE_BATCH"
    assert job["options"]["job_name"] == "tidegate-verify"
    assert "streaming" not in job["options"]
    assert re.fullmatch(
        r"gs://acme-lake/lake/_reports/verify/verify-\d{8}T\d{6}Z-[0-9a-f]{6}\.json", job["report"]
    )
    assert f"report: {job['report']}" in r.text
    steps = set(job["steps"])
    for t in catalog.event_types:
        for step in ("Groups/Spread", "DuplicateKeys/HashKeys", "DuplicateKeys/NameDuplicates"):
            assert f"ExactlyOnce/raw/{t}/{step}" in steps, step
    for a in catalog.aggregates:
        for step in ("PreAggregate", "MergePartials", "CompareWithTable", "ReadLedgerPairs", "JoinLatePairs"):
            assert f"AggregateParity/{a.name}/{step}" in steps, step
    for v in catalog.views:
        for e in v.events:
            assert f"ViewParity/{v.name}/BucketRows/raw/{e.type}" in steps
        assert f"ViewParity/{v.name}/FoldAndCompare" in steps
    assert {"WriteReport/FirstProblems", "WriteReport/Write"} <= steps


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
    with secret_manager({secret: WORKER_KEY}, monkeypatch) as fake_sm:
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
    assert WORKER_KEY.decode() not in repr(configs[0]) + json.dumps(opts, default=str)


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
        (["--streaming", "--verify"], "say which job"),
        (["--replay", "sessions_per_user", "--verify"], "say which job"),
        (["--verify", "--update"], "--update replaces a running streaming job; verify is a new batch job"),
        (["--replay", "sessions_per_user", "--update"], "--update replaces a running streaming job"),
        (["--replay", "nope"], "unknown aggregate 'nope'"),
        (["--replay", "order_state", "--since", "2026-11-26T00:00:00Z"], "order_state is a state view"),
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


# -- A reproducible, least-privilege image (issue 14, outcome 5) -------------------------------


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments): continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        word, _, rest = (buf + stripped).partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def _global_args() -> dict[str, str]:
    """ARG name -> default for the ARGs declared before the first FROM (the ones FROM lines see)."""
    args: dict[str, str] = {}
    for ins, rest in _instructions():
        if ins == "FROM":
            break
        if ins == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


DIGEST_REF = re.compile(
    r"(?P<name>[^:@\s]+):(?P<tag>[^@\s]+)@sha256:\$\{(?P<arg>[A-Z_]+)(?P<required>:\?[^}\s]+)?\}"
)


def test_base_images_are_pinned_by_digest() -> None:
    """Every FROM names its image by digest (a tag can be moved to other content; a digest cannot),
    through an ARG whose default is a real digest, or which is required (the build stops without
    one) when no digest of that tag could be verified. The tag beside it says which release."""
    args = _global_args()
    stages: set[str] = set()
    images = 0
    for ins, rest in _instructions():
        if ins == "COPY" and "--from=" in rest:
            source = rest.split("--from=")[1].split()[0]
            assert source in stages, f"COPY --from={source}: an image not pinned by a FROM stage"
        if ins != "FROM":
            continue
        words = rest.split()
        if words[0] in stages:
            continue
        images += 1
        ref = DIGEST_REF.fullmatch(words[0])
        assert ref, f"FROM {words[0]}: not pinned by digest (image:tag@sha256:${{ARG}})"
        assert ref["arg"] in args, f"{ref['arg']} must be a global ARG (declared before the first FROM)"
        tag = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ref["tag"])
        assert tag, ref["tag"]
        assert tag != "latest", ref["tag"]
        default = args[ref["arg"]]
        if ref["required"]:  # no default digest: fail closed, never fall back to the bare tag
            assert re.fullmatch(r"([0-9a-f]{64})?", default), default
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", default), f"{ref['arg']}={default!r} is not a sha256 digest"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    assert images >= 3  # the launcher, the build stage and the runtime
    text = DOCKERFILE.read_text()
    for arg in {m["arg"] for m in DIGEST_REF.finditer(text)}:
        assert re.search(rf"#[^\n]*\n(#[^\n]*\n|ARG [^\n]*\n)*ARG {arg}=", text), (
            f"ARG {arg}: say what it pins"
        )


def test_requirements_are_installed_with_the_locks_hashes() -> None:
    """pip installs exactly what uv.lock pins and checks every file against the lock's hash; the
    build tools (uv pinned exactly, hatchling) come with hashes too; nothing is resolved."""
    runs = [rest for ins, rest in _instructions() if ins == "RUN"]
    export = next(r for r in runs if "uv export" in r)
    assert "uv export --frozen --no-dev --no-emit-project" in export
    assert "--no-hashes" not in export
    installs = [cmd.strip() for r in runs for cmd in r.split("&&") if "pip install" in cmd]
    for cmd in installs:  # each one hash-checked, or the wheel the build stage just made (no deps)
        assert "--require-hashes" in cmd or cmd.endswith("--no-deps /tmp/dist/tidegate-*.whl"), cmd
    assert any("--require-hashes" in c and "-r /tmp/dist/requirements.txt" in c for c in installs)
    assert any("--require-hashes" in c and "-r /tmp/build-requirements.txt" in c for c in installs)
    build = [cmd for r in runs for cmd in r.split("&&") if "pip wheel" in cmd]
    assert build
    assert all("--no-build-isolation" in c and "--no-deps" in c for c in build)

    pins: dict[str, str] = {}
    hashes: dict[str, int] = {}
    reqs = (ROOT / "tidegate" / "infra" / "dataflow" / "build-requirements.txt").read_text()
    for line in reqs.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, version = line.split()[0].partition("==")
        pins[name] = version
        hashes[name] = len(re.findall(r"--hash=sha256:[0-9a-f]{64}", line))
    assert {"uv", "hatchling"} <= set(pins)
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values()), pins  # exact pins only
    assert all(n > 0 for n in hashes.values()), hashes
    project = (ROOT / "pyproject.toml").read_text()
    assert 'requires = ["hatchling' in project  # the backend pinned above is the project's

    uv = shutil.which("uv")
    if uv:  # the lock can give every requirement a hash (what --require-hashes will demand)
        exported = subprocess.run(
            [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        entries = [
            e for e in exported.replace("\\\n", " ").splitlines() if e and not e[0].isspace() and e[0] != "#"
        ]
        assert len(entries) > 50
        missing = [e.split()[0] for e in entries if "--hash=sha256:" not in e]
        assert not missing, missing


def test_the_image_runs_as_an_unprivileged_user() -> None:
    """The launcher and the workers run as uid 10001, not root; it may write only the launcher's
    log directory and Beam boot's virtualenv directory; boot runs the SDK on the installed packages."""
    ins = _instructions()
    last_from = max(i for i, (name, _) in enumerate(ins) if name == "FROM")
    final = ins[last_from:]
    users = [(i, rest) for i, (name, rest) in enumerate(final) if name == "USER"]
    assert users, "the runtime stage must switch to an unprivileged user"
    at, user = users[-1]
    uid, _, gid = user.partition(":")
    assert re.fullmatch(r"\d+", uid), "numeric, so a runtime can verify it is not root"
    assert uid != "0"
    assert gid != "0"
    assert all(name not in ("RUN", "USER") for name, _ in final[at + 1 :])  # nothing after runs as root
    setup = " ".join(rest for name, rest in final if name == "RUN" and "useradd" in rest)
    assert f"--uid {uid}" in setup
    assert "chown" in setup
    assert "/var/log/dataflow" in setup  # python_template_launcher writes its log there
    assert "/opt/apache/beam-venv" in setup
    env = " ".join(rest for name, rest in final if name == "ENV")
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env
    assert final[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    # the code is not the user's to change: no chown of /template or of the site-packages
    assert "/template" not in setup


def _dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is an exception, regex), matching like Docker's (moby/patternmatcher):
    a pattern is cleaned and taken from the context root, `*` and `?` stop at "/", `**` crosses
    directories, and it matches a path or any of its parent directories; the last match wins."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rx, i = "^", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                i += 2
                if pattern[i : i + 1] == "/":
                    i += 1
                rx += ".*" if i == len(pattern) else "(.*/)?"
                continue
            ch = pattern[i]
            if ch == "*":
                rx += "[^/]*"
            elif ch == "?":
                rx += "[^/]"
            elif ch == "[":
                end = pattern.index("]", i + 1)
                rx += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
                i = end
            else:
                rx += re.escape(ch)
            i += 1
        rules.append((exception, re.compile(rx + "$")))
    return rules


def build_context(root: Path) -> set[str]:
    """The files `docker build <root>` sends: every file under root that .dockerignore keeps."""
    rules = _dockerignore((root / ".dockerignore").read_text())
    kept: set[str] = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = (Path(dirpath) / f).relative_to(root).as_posix()
            parts = path.split("/")
            candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            ignored = False
            for exception, rx in rules:
                if any(rx.match(c) for c in candidates):
                    ignored = not exception
            if not ignored:
                kept.add(path)
    return kept


def test_the_build_context_leaves_state_secrets_and_caches_out(tmp_path: Path) -> None:
    """Terraform state and tfvars, .terraform/, the local lake and keys (.tidegate/), the
    virtualenv, git and caches never reach the image; what the Dockerfile copies does."""
    heavy = (".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".import_linter_cache")
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        repo,
        ignore=shutil.ignore_patterns(*heavy, ".tidegate", "__pycache__", ".terraform"),
        symlinks=True,
    )
    secrets = [
        "tidegate/infra/terraform/terraform.tfstate",
        "tidegate/infra/terraform/terraform.tfstate.backup",
        "tidegate/infra/terraform/prod.tfvars",
        "tidegate/infra/terraform/.terraform/x",
        "tidegate/infra/terraform/.terraform/providers/registry.terraform.io/hashicorp/google/terraform-provider",
        "tidegate/infra/old.tfstate",  # state anywhere, not only in the terraform directory
        "tidegate/infra/dataflow/ci.tfvars",
        "tidegate/infra/dataflow/.terraform/x",
        "tidegate/lake/.tidegate/pii.key",
        ".tidegate/x",
        ".tidegate/lake/raw/_delta_log/00000000000000000000.json",
        ".venv/bin/python",
        ".git/HEAD",
        ".git/config",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/cache/lastfailed",
        "tidegate/__pycache__/catalog.cpython-311.pyc",
        "tidegate/lake/x.pyc",
        ".env",
    ]
    for rel in secrets:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("secret")
    context = build_context(repo)
    leaked = [rel for rel in secrets if rel in context]
    assert not leaked, leaked
    assert not [p for p in context if p.startswith("tidegate/infra/terraform/")]
    for needed in (
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "tidegate/__init__.py",
        "tidegate/pipelines/flex_main.py",
        "tidegate/infra/catalog.yaml",
        "tidegate/infra/dataflow/build-requirements.txt",
    ):
        assert needed in context, needed
    assert any(p.startswith("tidegate/expectations/contracts/") for p in context)
    # every COPY source of the Dockerfile (not --from a stage) is in the context
    for ins, rest in _instructions():
        if ins != "COPY" or "--from=" in rest:
            continue
        for source in rest.split()[:-1]:
            if source.endswith("/"):
                assert any(p.startswith(source) for p in context), source
            else:
                assert source in context, source
    # nothing else at the top level: an allow-list, so a new local file stays out by default
    assert {p.split("/")[0] for p in context} == {"pyproject.toml", "uv.lock", "README.md", "tidegate"}


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


def test_the_entry_point_builds_a_view_replay_graph_offline(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`--mode replay --aggregate <view>`: the launcher plans the view replay on the lake (a local
    one here) and builds its graph; nothing runs."""
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
    argv = ["--mode", "replay", "--aggregate", "order_state", "--lake", str(lake), "--runner=DirectRunner"]
    flex_main.main(argv)
    (p,) = ran
    labels = {t.full_label for t in p.transforms_stack[0].parts}
    assert {"FoldView", "CommitView"} <= labels


# -- Maintenance on GCP (issue 16, outcome 3) ---------------------------------------------------


def _old_lake(catalog, registry, lake: Path) -> None:  # type: ignore[no-untyped-def]
    """A small lake written in two batches (two files per table partition), two messages quarantined."""
    from tests.test_batch import orders
    from tidegate.pipelines.local.batch import BatchRunner
    from tidegate.transforms.base import IngestConfig

    good = orders(catalog, registry, 6)
    broken = [
        type(m)(b"{", m.attributes, f"bad-{i}", m.publish_time, m.subscription)
        for i, m in enumerate(good[:2])
    ]
    runner = BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True)
    runner.run("b1", [*good[:3], broken[0]])
    runner.run("b2", [*good[3:], broken[1]])


def _files(uri: str) -> int:
    from deltalake import DeltaTable

    return len(DeltaTable(uri).file_uris())


def test_the_maintain_job_applies_retention_then_compacts_and_vacuums(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """What the scheduled job runs: `tidegate maintain`'s expire + compact + vacuum, audited as
    cloud-scheduler. The clock is moved 31 days on: the quarantine (30 days) expires, raw (400) stays."""
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from tidegate.lake.governance import audit_rows
    from tidegate.lake.tables import QUARANTINE, raw_uri
    from tidegate.pipelines import flex_main

    lake = tmp_path / "lake"
    _old_lake(catalog, registry, lake)
    raw = raw_uri(str(lake), "shop.order.placed")
    assert _files(raw) >= 2
    done = flex_main.maintain_lake(
        str(lake), str(catalog.path), retain_hours=0, now=datetime.now(UTC) + timedelta(days=31)
    )
    assert [(e["table"], e["rows"]) for e in done["expired"]] == [("quarantine", 2)]
    audit = audit_rows(str(lake))
    assert audit.select("action", "table", "rows", "actor").rows() == [
        ("expire", "quarantine", 2, "cloud-scheduler")
    ]
    assert pl.read_delta(QUARANTINE.uri(str(lake))).height == 0
    tables = {r["table"]: r for r in done["tables"]}
    compacted = tables["raw/shop.order.placed"]
    assert compacted["compacted_from"] >= 2
    assert compacted["files_after"] < compacted["files_before"]
    assert compacted["vacuumed"] >= 2  # retain_hours=0: the compacted-away files are gone
    assert pl.read_delta(raw).height == 6  # compaction never changes rows
    assert done["retain_hours"] == 0
    assert done["actor"] == "cloud-scheduler"


def test_the_template_runs_maintain_as_a_one_step_batch_job(
    catalog, registry, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """`--mode maintain` submits a job (a Flex Template launch must): one element, one step, run
    here on the DirectRunner against a local lake (the gs:// check is the one thing bypassed)."""
    from tidegate.lake.tables import raw_uri
    from tidegate.pipelines import flex_main

    lake = tmp_path / "lake"
    _old_lake(catalog, registry, lake)
    raw = raw_uri(str(lake), "shop.order.placed")
    assert _files(raw) >= 2
    monkeypatch.setattr("tidegate.pipelines.dataflow.DataflowTarget.check", lambda self: None)
    seen: list[list[str]] = []
    import apache_beam as beam

    real_run = beam.Pipeline.run

    def run(self: beam.Pipeline, *a: Any, **k: Any) -> Any:
        seen.append([t.full_label for t in self.transforms_stack[0].parts])
        return real_run(self, *a, **k)

    monkeypatch.setattr(beam.Pipeline, "run", run)
    flex_main.main(["--mode", "maintain", "--lake", str(lake), "--runner=DirectRunner"])
    assert seen == [["Lake", "ExpireCompactVacuum"]]
    assert _files(raw) == 1  # the worker's step did compact the table


def test_the_template_refuses_to_maintain_a_lake_off_gcs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import apache_beam as beam

    from tidegate.errors import TidegateError
    from tidegate.pipelines import flex_main

    ran: list[beam.Pipeline] = []
    monkeypatch.setattr(beam.Pipeline, "run", lambda self: ran.append(self))
    for lake in (str(tmp_path / "lake"), f"file://{tmp_path}/lake"):
        with pytest.raises(TidegateError, match="must be a gs://bucket/path URI for Dataflow"):
            flex_main.main(["--mode", "maintain", "--lake", lake, "--temp_location=gs://acme-dataflow/tmp"])
    assert ran == []
    with pytest.raises(TidegateError, match="must be a gs://bucket/path URI for Dataflow"):
        flex_main.main(
            ["--mode", "verify", "--lake", str(tmp_path), "--temp_location=gs://acme-dataflow/tmp"]
        )
    assert ran == []
    args = flex_main.parser().parse_args(["--mode", "maintain", "--lake", "gs://acme-lake/lake"])
    assert args.retain_hours == 168  # the documented time-travel window
    assert args.pii_key_secret is None  # maintenance reads no PII key


def test_the_template_metadata_accepts_every_mode_of_the_entry_point() -> None:
    from tidegate.pipelines.flex_main import parser

    meta = json.loads((ROOT / "tidegate" / "infra" / "dataflow" / "metadata.json").read_text())
    params = {p["name"]: p for p in meta["parameters"]}
    modes = params["mode"]["regexes"][0]
    (choices,) = [a.choices for a in parser()._actions if a.dest == "mode"]
    assert set(choices) == {"streaming", "replay", "maintain", "verify"}
    for mode in choices:
        assert re.fullmatch(modes, mode), mode
        assert f"{mode}:" in params["mode"]["helpText"], mode
    assert not re.fullmatch(modes, "maintenance")
    assert params["retain_hours"]["isOptional"] is True
    assert re.fullmatch(params["retain_hours"]["regexes"][0], "168")
    assert not re.fullmatch(params["retain_hours"]["regexes"][0], "-1")


def _maintenance() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    return resources(*ROOT_TF), blocks("locals")["maintain_launch"]["launchParameter"]


def test_a_daily_scheduler_job_launches_the_template_in_maintain_mode() -> None:
    r, launch = _maintenance()
    job = r[("google_cloud_scheduler_job", "maintain")]
    assert job["count"] == "${local.maintain_scheduled ? 1 : 0}"
    assert blocks("locals")["maintain_scheduled"] == "${var.flex_template_spec != null}"
    assert job["time_zone"] == "UTC"
    assert job["schedule"] == "${var.maintain_schedule}"
    schedule = blocks("variable")["maintain_schedule"]["default"]
    assert schedule == "17 3 * * *"
    minute, hour, dom, month, dow = schedule.split()
    assert minute.isdigit()
    assert hour.isdigit()
    assert (dom, month, dow) == ("*", "*", "*")  # once a day
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == (
        "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"
    )
    assert target["headers"] == {"Content-Type": "application/json"}
    assert target["body"] == "${base64encode(jsonencode(local.maintain_launch))}"
    # the launch: the template in maintain mode on the lake terraform made
    assert launch["containerSpecGcsPath"] == "${var.flex_template_spec}"
    assert launch["parameters"]["mode"] == "maintain"
    lake = launch["parameters"]["lake"].replace("${local.lake_prefix}", blocks("locals")["lake_prefix"])
    assert lake == blocks("output")["lake"]["value"]
    assert launch["parameters"]["retain_hours"] == "${tostring(var.maintain_retain_hours)}"
    assert blocks("variable")["maintain_retain_hours"]["default"] == 168
    assert launch["jobName"] == "tidegate-maintain"  # one at a time: Dataflow refuses a duplicate name
    assert set(launch["parameters"]) <= {
        p["name"]
        for p in json.loads((ROOT / "tidegate" / "infra" / "dataflow" / "metadata.json").read_text())[
            "parameters"
        ]
    }


def test_the_maintain_job_runs_like_the_streaming_job() -> None:
    """The pipeline's account, the private subnetwork without public IPs, the CMEK when set,
    tidegate's image on the workers, temp and staging files in the staging bucket."""
    _, launch = _maintenance()
    env = launch["environment"]
    assert env["serviceAccountEmail"] == "${google_service_account.pipeline.email}"
    assert env["subnetwork"] == "${local.subnetwork}" == blocks("output")["subnetwork"]["value"]
    assert env["ipConfiguration"] == "WORKER_IP_PRIVATE"
    assert env["kmsKeyName"] == "${var.kms_key_name}"  # what output dataflow_kms_key passes
    assert env["sdkContainerImage"] == "${var.flex_template_image}"
    staging = "gs://${google_storage_bucket.staging.name}"
    assert env["tempLocation"] == f"{staging}/tmp" == blocks("output")["temp_location"]["value"]
    assert env["stagingLocation"] == f"{staging}/staging"  # expired by the staging bucket's rule
    assert env["maxWorkers"] == 1
    job = resources(*ROOT_TF)[("google_cloud_scheduler_job", "maintain")]
    pre = job["lifecycle"][0]["precondition"][0]
    assert pre["condition"] == "${var.flex_template_image != null}"


def test_the_scheduler_account_has_only_the_two_roles_it_needs() -> None:
    """Its OAuth token calls the Dataflow API; it may launch jobs (dataflow.developer on the
    project) and run them as the pipeline's account (serviceAccountUser on that account), nothing else."""
    r, _ = _maintenance()
    sa = r[("google_service_account", "scheduler")]
    assert sa["count"] == "${local.maintain_scheduled ? 1 : 0}"
    email = "${google_service_account.scheduler[0].email}"
    token = r[("google_cloud_scheduler_job", "maintain")]["http_target"][0]["oauth_token"][0]
    assert token["service_account_email"] == email
    assert token["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    member = f"serviceAccount:{email}"
    grants = {
        (t, name): body
        for (t, name), body in r.items()
        if t.endswith("_iam_member") and "google_service_account.scheduler" in str(body.get("member", ""))
    }
    assert {(t, b["role"]) for (t, _), b in grants.items()} == {
        ("google_project_iam_member", "roles/dataflow.developer"),
        ("google_service_account_iam_member", "roles/iam.serviceAccountUser"),
    }
    assert all(b["member"] == member for b in grants.values())
    acts_as = grants[("google_service_account_iam_member", "scheduler_acts_as_pipeline")]
    assert acts_as["service_account_id"] == "${google_service_account.pipeline.name}"  # that account only
    # and these roles go to nobody else
    for (t, _), body in r.items():
        if t.endswith("_iam_member") and body.get("role") in (
            "roles/dataflow.developer",
            "roles/iam.serviceAccountUser",
        ):
            assert body["member"] == member, body


# -- Stream monitors on GCP (issue 17, outcome 2) -------------------------------------------------


def _hcl_string(value: str) -> str:
    """An HCL string as terraform reads it (python-hcl2 keeps the escapes)."""
    return value.replace('\\"', '"')


def test_a_log_based_metric_counts_each_breach_tidegate_monitor_logs() -> None:
    """The metric's filter and label extractors read exactly the structured line `tidegate monitor`
    writes for a new breach (tidegate.ops.monitors.Breach.log_line)."""
    from datetime import UTC, datetime

    from tidegate.ops.monitors import LOG_EVENT, Breach

    metric = resources(*ROOT_TF)[("google_logging_metric", "monitor_breaches")]
    assert _hcl_string(metric["filter"]) == f'jsonPayload.message="{LOG_EVENT}"'
    descriptor = metric["metric_descriptor"][0]
    assert (descriptor["metric_kind"], descriptor["value_type"]) == ("DELTA", "INT64")  # a count
    labels = {label["key"] for label in descriptor["labels"]}
    assert labels == {"monitor", "event_type"}
    assert metric["label_extractors"] == {k: f"EXTRACT(jsonPayload.{k})" for k in labels}
    t = datetime(2026, 12, 2, 10, 5, tzinfo=UTC)
    line = json.loads(
        Breach(
            "volume", "drop", "shop.order.placed", t, t, 0.0, 20.0, 4.0, "a drop", t, "monitor-x"
        ).log_line()
    )
    assert line["message"] == LOG_EVENT
    assert line["severity"] == "WARNING"
    assert (line["monitor"], line["event_type"], line["window_start"]) == (
        "volume",
        "shop.order.placed",
        "2026-12-02T10:05:00Z",
    )


def test_an_alert_policy_fires_on_any_breach_and_notifies_the_channels_given() -> None:
    r = resources(*ROOT_TF)
    policy = r[("google_monitoring_alert_policy", "monitor_breaches")]
    (condition,) = policy["conditions"]
    threshold = condition["condition_threshold"][0]
    metric_type = "logging.googleapis.com/user/${google_logging_metric.monitor_breaches.name}"
    assert _hcl_string(threshold["filter"]) == (
        f'metric.type="{metric_type}" AND resource.type="${{var.monitor_resource_type}}"'
    )
    assert r[("google_logging_metric", "monitor_breaches")]["name"] == "tidegate_monitor_breaches"
    assert (threshold["comparison"], threshold["threshold_value"], threshold["duration"]) == (
        "COMPARISON_GT",
        0,
        "0s",
    )
    (aggregation,) = threshold["aggregations"]
    assert aggregation["per_series_aligner"] == "ALIGN_SUM"
    assert set(aggregation["group_by_fields"]) == {"metric.label.monitor", "metric.label.event_type"}
    assert policy["notification_channels"] == "${var.monitor_notification_channels}"
    variables = blocks("variable")
    assert variables["monitor_notification_channels"]["default"] == []  # optional: none by default
    assert variables["monitor_resource_type"]["default"] == "cloud_run_job"
    assert policy["documentation"][0]["mime_type"] == "text/markdown"


def _monitor_job() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    r = resources(*ROOT_TF)
    return r, r[("google_cloud_run_v2_job", "monitor")]["template"][0]["template"][0]


def test_a_cloud_run_job_runs_tidegate_monitor_on_the_lake() -> None:
    """What evaluates the monitors on GCP (the streaming job does not): `tidegate monitor --lake
    <output lake> --json` in tidegate's image, created once the image is known."""
    r, task = _monitor_job()
    job = r[("google_cloud_run_v2_job", "monitor")]
    assert job["count"] == "${local.monitor_scheduled ? 1 : 0}"
    assert blocks("locals")["monitor_scheduled"] == "${var.flex_template_image != null}"
    assert (job["name"], job["location"]) == ("tidegate-monitor", "${var.region}")
    assert job["template"][0]["task_count"] == 1
    (container,) = task["containers"]
    assert container["image"] == "${var.flex_template_image}"  # the Flex Template's image
    assert container["command"] == ["tidegate"]  # not Beam's boot, the image's entrypoint
    args = container["args"]
    assert args[:2] == ["monitor", "--lake"]
    assert "--json" in args
    lake = args[2].replace("${local.lake_prefix}", blocks("locals")["lake_prefix"])
    assert lake == blocks("output")["lake"]["value"]
    assert task["max_retries"] == 0
    # shorter than the interval of the default schedule: two runs never record the same breach twice
    timeout = int(task["timeout"].removesuffix("s"))
    assert 0 < timeout < 300


def test_the_monitor_job_runs_as_the_pipeline_on_the_private_subnetwork_with_the_cmek() -> None:
    r, task = _monitor_job()
    assert task["service_account"] == "${google_service_account.pipeline.email}"
    assert task["encryption_key"] == "${var.kms_key_name}"  # null: Google-managed keys
    (vpc,) = task["vpc_access"]
    assert vpc["egress"] == "ALL_TRAFFIC"  # out through the subnetwork only (Private Google Access)
    assert vpc["network_interfaces"][0]["subnetwork"] == "${local.monitor_subnetwork}"
    local = blocks("locals")
    assert "local.subnetwork" in local["monitor_subnetwork_path"]  # the workers' subnetwork
    assert r[("google_compute_subnetwork", "workers")]["private_ip_google_access"] is True
    assert not any("connector" in v for v in task["vpc_access"])  # direct VPC egress, no connector
    # with CMEK, Cloud Run's service agent may use the key (and only then)
    agent = r[("google_kms_crypto_key_iam_member", "run_agent")]
    assert agent["count"] == "${local.monitor_scheduled && var.kms_key_name != null ? 1 : 0}"
    assert agent["crypto_key_id"] == "${var.kms_key_name}"
    assert agent["member"].endswith("@serverless-robot-prod.iam.gserviceaccount.com")
    assert (
        "${google_kms_crypto_key_iam_member.run_agent}"
        in r[("google_cloud_run_v2_job", "monitor")]["depends_on"]
    )


@needs_terraform
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "https://www.googleapis.com/compute/v1/projects/acme-net/regions/europe-west1/subnetworks/dataflow",
            "projects/acme-net/regions/europe-west1/subnetworks/dataflow",
        ),
        (
            "regions/europe-west1/subnetworks/dataflow",
            "projects/acme-data/regions/europe-west1/subnetworks/dataflow",
        ),
        (
            "projects/acme-net/regions/europe-west1/subnetworks/dataflow",
            "projects/acme-net/regions/europe-west1/subnetworks/dataflow",
        ),
    ],
)
def test_the_monitor_job_names_the_subnetwork_as_cloud_run_takes_it(
    tmp_path: Path, given: str, expected: str
) -> None:
    """var.subnetwork's forms (self link, regions/R/subnetworks/S) become projects/P/regions/R/...:
    the module's own expressions, evaluated by terraform console."""
    local = blocks("locals")
    module = tmp_path / "subnet"
    module.mkdir()
    (module / "main.tf").write_text(
        'variable "subnetwork" { type = string }\nvariable "project" { type = string }\n'
        "locals {\n  subnetwork = var.subnetwork\n"
        f"  monitor_subnetwork_path = {local['monitor_subnetwork_path'][2:-1]}\n"
        f"  monitor_subnetwork = {local['monitor_subnetwork'][2:-1]}\n}}\n"
    )
    out = terraform(
        ["console", "-no-color", f"-var=subnetwork={given}", "-var=project=acme-data"],
        module,
        stdin="local.monitor_subnetwork\n",
    )
    assert json.loads(out.strip()) == expected


def test_cloud_scheduler_runs_the_monitor_job_every_five_minutes() -> None:
    r, _ = _monitor_job()
    job = r[("google_cloud_scheduler_job", "monitor")]
    assert job["count"] == "${local.monitor_scheduled ? 1 : 0}"
    assert job["time_zone"] == "UTC"
    assert job["schedule"] == "${var.monitor_schedule}"
    assert blocks("variable")["monitor_schedule"]["default"] == "*/5 * * * *"
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == (
        "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}"
        "/jobs/${google_cloud_run_v2_job.monitor[0].name}:run"
    )
    token = target["oauth_token"][0]  # Google APIs take OAuth tokens, not OIDC
    assert token["service_account_email"] == "${google_service_account.monitor_invoker[0].email}"
    assert token["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert "oidc_token" not in target


def test_the_monitor_invoker_may_run_that_one_job_and_nothing_else() -> None:
    r, _ = _monitor_job()
    assert r[("google_service_account", "monitor_invoker")]["count"] == "${local.monitor_scheduled ? 1 : 0}"
    member = "serviceAccount:${google_service_account.monitor_invoker[0].email}"
    grants = {(t, n): b for (t, n), b in r.items() if t.endswith("_iam_member") and b.get("member") == member}
    assert list(grants) == [("google_cloud_run_v2_job_iam_member", "monitor_invoker")]
    grant = grants[("google_cloud_run_v2_job_iam_member", "monitor_invoker")]
    assert grant["role"] == "roles/run.invoker"
    assert grant["name"] == "${google_cloud_run_v2_job.monitor[0].name}"  # that job, not the project
    assert grant["location"] == "${google_cloud_run_v2_job.monitor[0].location}"
    # run.invoker goes to nobody else
    for (t, _), body in r.items():
        if t.endswith("_iam_member") and body.get("role") == "roles/run.invoker":
            assert body["member"] == member, body


def test_the_alert_policy_watches_the_monitor_jobs_logs() -> None:
    """The log lines come from a Cloud Run job: the policy's resource type must say so while the
    module runs that job (a precondition refuses anything else)."""
    r, _ = _monitor_job()
    policy = r[("google_monitoring_alert_policy", "monitor_breaches")]
    assert blocks("variable")["monitor_resource_type"]["default"] == "cloud_run_job"
    pre = policy["lifecycle"][0]["precondition"][0]
    assert pre["condition"] == '${!local.monitor_scheduled || var.monitor_resource_type == "cloud_run_job"}'
