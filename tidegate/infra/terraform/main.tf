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
  labels                     = { app = "tidegate", event_type = replace(each.value.event_type, ".", "_") }

  dynamic "schema_settings" {
    for_each = each.value.publish_schema ? [1] : []
    content {
      schema   = google_pubsub_schema.contract[each.key].id
      encoding = "JSON"
    }
  }
}

resource "google_pubsub_topic" "dead_letter" {
  name   = local.dead_letter.topic
  labels = { app = "tidegate" }
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
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = { app = "tidegate" }

  versioning {
    enabled = false # Delta keeps its own history; object versions would only add cost
  }

  lifecycle_rule {
    condition {
      age            = var.quarantine_retention_days
      matches_prefix = ["lake/quarantine/"]
    }
    action {
      type = "Delete"
    }
  }
}

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
resource "google_secret_manager_secret" "pii_key" {
  secret_id = "tidegate-pii-key"
  replication {
    auto {}
  }
}

# The workers (and the Flex Template launcher, same account) read that one secret, nothing else.
resource "google_secret_manager_secret_iam_member" "pipeline_pii_key" {
  secret_id = google_secret_manager_secret.pii_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.pipeline.email}"
}

# Read-only: the lake bucket's objects, nothing else.
resource "google_storage_bucket_iam_member" "reader_lake" {
  for_each = toset(concat(["serviceAccount:${google_service_account.reader.email}"], var.analyst_members))
  bucket   = google_storage_bucket.lake.name
  role     = "roles/storage.objectViewer"
  member   = each.value
}
