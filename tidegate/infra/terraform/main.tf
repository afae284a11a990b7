# tidegate on GCP, from the stream catalog. Offline checks: tests/test_deploy.py; the order of
# commands from an empty project to a running job: docs/deploy.md.

module "catalog" {
  source       = "./catalog"
  catalog_path = var.catalog_path
}

data "google_project" "this" {}

locals {
  streams     = module.catalog.streams
  topics      = module.catalog.topics
  dead_letter = module.catalog.dead_letter
  # Pub/Sub's own service agent moves poison messages to the dead-letter topic: it needs to
  # publish there and to acknowledge on the source subscriptions.
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # The lake is gs://<lake_bucket>/<lake_prefix> (output `lake`): raw/, aggregates/, quarantine/,
  # _ledger/ ... are Delta tables under it (tidegate/lake/tables.py).
  lake_prefix = "lake"

  # Reading one prefix of the lake bucket: get the objects under it (resource.name) and list them
  # (a list request carries its prefix as objectListPrefix; resource.name is then the bucket's).
  # Conditional bucket grants need uniform bucket-level access (set on the bucket).
  lake_objects = "projects/_/buckets/${google_storage_bucket.lake.name}/objects/${local.lake_prefix}"
  lake_read_condition = {
    raw        = "resource.name.startsWith('${local.lake_objects}/raw/') || api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('${local.lake_prefix}/raw/')"
    aggregates = "resource.name.startsWith('${local.lake_objects}/aggregates/') || api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('${local.lake_prefix}/aggregates/')"
    quarantine = "resource.name.startsWith('${local.lake_objects}/quarantine/') || api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('${local.lake_prefix}/quarantine/')"
  }

  # Analysts (the read-only service account and var.analyst_members): raw and aggregates, one
  # conditional grant per (member, prefix). Static keys: the reader's email is known after apply.
  lake_readers = merge(
    { reader = "serviceAccount:${google_service_account.reader.email}" },
    { for m in var.analyst_members : m => m },
  )
  lake_reader_grants = {
    for pair in setproduct(keys(local.lake_readers), ["raw", "aggregates"]) :
    "${pair[0]}/${pair[1]}" => { member = local.lake_readers[pair[0]], prefix = pair[1] }
  }

  # CMEK (var.kms_key_name): the Google-managed service agents that encrypt and decrypt with the key
  # on our behalf. Cloud Storage's agent is looked up (the lookup also creates it); Secret Manager's
  # must exist first: `gcloud beta services identity create --service=secretmanager.googleapis.com`.
  kms_agents = {
    storage       = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"
    pubsub        = local.pubsub_agent
    secretmanager = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-secretmanager.iam.gserviceaccount.com"
    # Dataflow: its service agent and Compute Engine's (worker disks, Streaming Engine state)
    dataflow = "serviceAccount:service-${data.google_project.this.number}@dataflow-service-producer-prod.iam.gserviceaccount.com"
    compute  = "serviceAccount:service-${data.google_project.this.number}@compute-system.iam.gserviceaccount.com"
  }

  # Where the Dataflow workers run (private IPs only): the given subnetwork, or the one below.
  subnetwork = var.subnetwork != null ? var.subnetwork : one(google_compute_subnetwork.workers[*].self_link)
}

data "google_storage_project_service_account" "this" {}

# -- Audit: every read and write of data leaves a trace ------------------------------------------
#
# Data Access audit logs are off by default (except BigQuery's). These turn them on for Cloud
# Storage (the lake, quarantine included, and the staging bucket) and Secret Manager (the PII key):
# who read or wrote which object or secret version, when, from where. Each resource is
# authoritative for its service's audit config in this project (it replaces one set elsewhere);
# nobody is exempted. Cost: one log entry per object request (Cloud Logging ingestion).

resource "google_project_iam_audit_config" "storage" {
  project = var.project
  service = "storage.googleapis.com"
  audit_log_config {
    log_type = "ADMIN_READ"
  }
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

resource "google_project_iam_audit_config" "secretmanager" {
  project = var.project
  service = "secretmanager.googleapis.com"
  audit_log_config {
    log_type = "ADMIN_READ"
  }
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

# -- CMEK (optional): var.kms_key_name encrypts the buckets, topics, the PII key secret and the
# Dataflow job's state (pass output `dataflow_kms_key` to the launch) ----------------------------

resource "google_kms_crypto_key_iam_member" "service_agents" {
  for_each      = { for name, member in local.kms_agents : name => member if var.kms_key_name != null }
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}

# -- Pub/Sub ---------------------------------------------------------------------------------

resource "google_pubsub_schema" "contract" {
  for_each   = { for topic, s in local.topics : topic => s if s.publish_schema }
  name       = "${each.value.topic}-contract"
  type       = "AVRO"
  definition = file(each.value.latest_contract)
}

resource "google_pubsub_topic" "stream" {
  for_each                   = local.topics
  name                       = each.key
  message_retention_duration = "${each.value.retention_seconds}s"
  kms_key_name               = var.kms_key_name
  labels                     = { app = "tidegate", event_type = replace(each.value.event_type, ".", "_") }

  dynamic "schema_settings" {
    for_each = each.value.publish_schema ? [1] : []
    content {
      schema   = google_pubsub_schema.contract[each.key].id
      encoding = "JSON"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "dead_letter" {
  name         = local.dead_letter.topic
  kms_key_name = var.kms_key_name
  labels       = { app = "tidegate" }

  depends_on = [google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_subscription" "stream" {
  for_each                     = local.streams
  name                         = each.value.subscription
  topic                        = google_pubsub_topic.stream[each.value.topic].id
  ack_deadline_seconds         = each.value.ack_deadline_seconds
  message_retention_duration   = "${each.value.retention_seconds}s"
  enable_exactly_once_delivery = each.value.exactly_once_delivery
  labels                       = { app = "tidegate" }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = local.dead_letter.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  expiration_policy {
    ttl = "" # never expires
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  name                       = local.dead_letter.subscription
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  labels                     = { app = "tidegate" }

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_forwarder" {
  for_each     = google_pubsub_subscription.stream
  subscription = each.value.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# -- Storage ---------------------------------------------------------------------------------

resource "google_storage_bucket" "lake" {
  name                        = var.lake_bucket
  location                    = var.region
  uniform_bucket_level_access = true # required by the conditional (per-prefix) grants below
  public_access_prevention    = "enforced"
  labels                      = { app = "tidegate" }

  # Every overwritten or deleted object (a rewritten checkpoint, a file `tidegate maintain` vacuums,
  # a mistaken delete) stays recoverable as a noncurrent version.
  versioning {
    enabled = true
  }

  # The only deletion rule on this bucket: noncurrent versions, after var.noncurrent_version_retention_days.
  # Never an age rule on live objects: every prefix here is a Delta table, and deleting by age
  # removes _delta_log entries and data files the table still references, which breaks it ("No
  # table metadata or protocol found in delta log"). Rows expire through Delta itself (delete +
  # vacuum, `tidegate maintain`), which only removes files no live version references.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle {
    precondition {
      condition     = var.kms_key_name == null || try(split("/", var.kms_key_name)[3] == var.region, false)
      error_message = "kms_key_name must be a key in the buckets' and the Dataflow job's region (projects/P/locations/<region>/keyRings/R/cryptoKeys/K)."
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.service_agents]
}

# Dataflow's staging and temp files: not a Delta table, so they expire by age.
resource "google_storage_bucket" "staging" {
  name                        = var.staging_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = { app = "tidegate" }

  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = ["tmp/", "staging/"]
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.service_agents]
}

resource "google_artifact_registry_repository" "images" {
  repository_id = var.artifact_repository
  location      = var.region
  format        = "DOCKER"
  description   = "tidegate Flex Template images"
  labels        = { app = "tidegate" }
}

# -- Identities: least privilege -------------------------------------------------------------

resource "google_service_account" "pipeline" {
  account_id   = "tidegate-pipeline"
  display_name = "tidegate pipeline (Dataflow workers)"
}

resource "google_service_account" "reader" {
  account_id   = "tidegate-reader"
  display_name = "tidegate lake reader (notebooks, analysts)"
}

# The only project-level grants: what every Dataflow worker needs to run and report.
resource "google_project_iam_member" "pipeline_project" {
  for_each = toset(["roles/dataflow.worker", "roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project
  role     = each.value
  member   = "serviceAccount:${google_service_account.pipeline.email}"
}

# Subscriber on its own subscriptions only (not on the dead-letter one, not project-wide).
resource "google_pubsub_subscription_iam_member" "pipeline_subscriber" {
  for_each     = google_pubsub_subscription.stream
  subscription = each.value.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "pipeline_lake" {
  bucket = google_storage_bucket.lake.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "pipeline_staging" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_artifact_registry_repository_iam_member" "pipeline_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.pipeline.email}"
}

# The PII key (tidegate/lake/pii.py): Terraform makes the secret and decides who may read it, never its
# value (that would put the key into the Terraform state). Add the value once:
#   python -c 'import secrets; print(secrets.token_hex(32))' | \
#     gcloud secrets versions add tidegate-pii-key --data-file=-
#
# With var.kms_key_name the secret is replicated in var.region only, encrypted with that (regional)
# key; Secret Manager's automatic replication would need a global key. Replication cannot change
# on an existing secret: choose kms_key_name before the first apply (turning it on later replaces
# the secret, and the key value must be added again).
resource "google_secret_manager_secret" "pii_key" {
  secret_id = "tidegate-pii-key"
  replication {
    dynamic "auto" {
      for_each = var.kms_key_name == null ? [1] : []
      content {}
    }
    dynamic "user_managed" {
      for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
      content {
        replicas {
          location = var.region
          customer_managed_encryption {
            kms_key_name = user_managed.value
          }
        }
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.service_agents]
}

# The workers (and the Flex Template launcher, same account) read that one secret, nothing else.
resource "google_secret_manager_secret_iam_member" "pipeline_pii_key" {
  secret_id = google_secret_manager_secret.pii_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.pipeline.email}"
}

# Analysts read raw and aggregates, nothing else: no bucket-wide objectViewer, one grant per
# (member, prefix) with an IAM condition on the object name. The quarantine (every rejected
# message, encrypted PII included), the ledgers and the staging bucket stay out of reach. Never
# grant analysts a storage role on the project: it would bypass these conditions.
resource "google_storage_bucket_iam_member" "reader_lake" {
  for_each = local.lake_reader_grants
  bucket   = google_storage_bucket.lake.name
  role     = "roles/storage.objectViewer"
  member   = each.value.member

  condition {
    title       = "tidegate-lake-${each.value.prefix}"
    description = "read and list ${local.lake_prefix}/${each.value.prefix}/ only"
    expression  = local.lake_read_condition[each.value.prefix]
  }
}

# The quarantine: read by the pipeline (objectAdmin above) and by the auditors named in
# var.quarantine_auditors, nobody else. Every read shows in the Data Access logs.
resource "google_storage_bucket_iam_member" "auditor_quarantine" {
  for_each = toset(var.quarantine_auditors)
  bucket   = google_storage_bucket.lake.name
  role     = "roles/storage.objectViewer"
  member   = each.value

  condition {
    title       = "tidegate-lake-quarantine"
    description = "read and list ${local.lake_prefix}/quarantine/ only"
    expression  = local.lake_read_condition["quarantine"]
  }
}

# -- Network: Dataflow workers without public IPs --------------------------------------------
#
# Workers get internal IPs only (launch with the subnetwork below and no public IPs: docs/deploy.md).
# They reach Pub/Sub, Cloud Storage, Secret Manager and Artifact Registry through Private Google
# Access; no external IP and no Cloud NAT, so no way out to the internet (the image carries every
# dependency). Bring your own subnetwork (e.g. a Shared VPC one) with var.subnetwork; otherwise
# this one is created.

resource "google_compute_network" "workers" {
  count                   = var.subnetwork == null ? 1 : 0
  name                    = "tidegate"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "workers" {
  count                    = var.subnetwork == null ? 1 : 0
  name                     = "tidegate-workers"
  region                   = var.region
  network                  = google_compute_network.workers[0].id
  ip_cidr_range            = var.subnetwork_cidr
  private_ip_google_access = true
}

# Worker to worker only (Dataflow's shuffle and streaming ports), nothing from outside.
resource "google_compute_firewall" "workers_internal" {
  count       = var.subnetwork == null ? 1 : 0
  name        = "tidegate-dataflow-internal"
  network     = google_compute_network.workers[0].id
  direction   = "INGRESS"
  source_tags = ["dataflow"]
  target_tags = ["dataflow"]

  allow {
    protocol = "tcp"
    ports    = ["12345-12346"]
  }
}
