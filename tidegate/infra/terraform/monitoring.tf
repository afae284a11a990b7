# -- Stream monitors on GCP: a breach becomes a metric an alert policy watches --------------------
#
# `tidegate monitor` (tidegate/ops/monitors.py, docs/monitors.md) records each new breach of a
# stream monitor in the lake's _monitors table and writes it once as a structured log line on
# stderr: {"severity": "WARNING", "message": "tidegate_monitor_breach", "monitor": ...,
# "event_type": ..., "window_start": ...}. On GCP it runs as the Cloud Run job below, every five
# minutes (the streaming Dataflow job does not evaluate monitors); Cloud Logging reads that line
# as jsonPayload of resource type cloud_run_job. The log-based metric below counts those entries
# by monitor and event type; the alert policy opens an incident when any is counted. Run it
# elsewhere instead (GKE, a VM with the Ops Agent) and say so with var.monitor_resource_type.

locals {
  # Created with the image (docs/deploy.md, step 3: set var.flex_template_image, apply again).
  monitor_scheduled = var.flex_template_image != null

  # Direct VPC egress takes a subnetwork's name or projects/P/regions/R/subnetworks/S: the same
  # subnetwork as the Dataflow workers (local.subnetwork), as a self link or regions/R/... path.
  monitor_subnetwork_path = trimprefix(local.subnetwork, "https://www.googleapis.com/compute/v1/")
  monitor_subnetwork      = startswith(local.monitor_subnetwork_path, "regions/") ? "projects/${var.project}/${local.monitor_subnetwork_path}" : local.monitor_subnetwork_path
}

# `tidegate monitor --lake <output lake> --json`, in tidegate's image (the Flex Template's: the
# `tidegate` console script is installed; the entrypoint, Beam's boot, is overridden). As the
# pipeline's service account (it reads the lake and writes _monitors), on the workers' private
# subnetwork: all egress goes through it, and Private Google Access is its only way out (Cloud
# Storage), like the workers. With the CMEK when set.
resource "google_cloud_run_v2_job" "monitor" {
  count               = local.monitor_scheduled ? 1 : 0
  name                = "tidegate-monitor"
  location            = var.region
  deletion_protection = false # nothing in it but configuration: terraform recreates it

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.pipeline.email
      max_retries     = 0                # the next run is five minutes away
      timeout         = "240s"           # shorter than the schedule's interval: two runs never overlap
      encryption_key  = var.kms_key_name # null: Google-managed keys

      containers {
        image   = var.flex_template_image
        command = ["tidegate"]
        args    = ["monitor", "--lake", "gs://${google_storage_bucket.lake.name}/${local.lake_prefix}", "--json"] # output `lake`

        resources {
          limits = {
            cpu    = "1"
            memory = "2Gi"
          }
        }
      }

      vpc_access {
        network_interfaces {
          subnetwork = local.monitor_subnetwork
        }
        egress = "ALL_TRAFFIC" # no route but Private Google Access: nothing leaves for the internet
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.run_agent]
}

# CMEK: Cloud Run's service agent encrypts the job's container image copy with the key.
resource "google_kms_crypto_key_iam_member" "run_agent" {
  count         = local.monitor_scheduled && var.kms_key_name != null ? 1 : 0
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this.number}@serverless-robot-prod.iam.gserviceaccount.com"
}

# The identity Cloud Scheduler calls the Cloud Run Admin API as: it may run this one job
# (roles/run.invoker on it) and nothing else. Not tidegate-scheduler (maintenance.tf), which can
# launch Dataflow jobs as the pipeline's account: this one needs no more than a start button.
resource "google_service_account" "monitor_invoker" {
  count        = local.monitor_scheduled ? 1 : 0
  account_id   = "tidegate-monitor-invoker"
  display_name = "tidegate monitor invoker (runs the tidegate-monitor Cloud Run job)"
}

resource "google_cloud_run_v2_job_iam_member" "monitor_invoker" {
  count    = local.monitor_scheduled ? 1 : 0
  project  = var.project
  location = google_cloud_run_v2_job.monitor[0].location
  name     = google_cloud_run_v2_job.monitor[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.monitor_invoker[0].email}"
}

resource "google_cloud_scheduler_job" "monitor" {
  count            = local.monitor_scheduled ? 1 : 0
  name             = "tidegate-monitor"
  description      = "Every 5 minutes: tidegate's stream monitors on ${local.lake_prefix} (Cloud Run job tidegate-monitor)."
  region           = var.region
  schedule         = var.monitor_schedule
  time_zone        = "UTC"
  attempt_deadline = "60s" # the run call only: it returns once the execution has started

  retry_config {
    retry_count = 0 # a missed run is made up by the next one
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}/jobs/${google_cloud_run_v2_job.monitor[0].name}:run"

    oauth_token {
      service_account_email = google_service_account.monitor_invoker[0].email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.monitor_invoker]
}

resource "google_logging_metric" "monitor_breaches" {
  name        = "tidegate_monitor_breaches"
  description = "Breaches of tidegate's stream monitors (one log entry per breach, when it is first recorded)."
  filter      = "jsonPayload.message=\"tidegate_monitor_breach\""

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "tidegate monitor breaches"

    labels {
      key         = "monitor"
      value_type  = "STRING"
      description = "volume, freshness, quarantine_rate or null_rate"
    }
    labels {
      key         = "event_type"
      value_type  = "STRING"
      description = "the event type whose stream breached, e.g. shop.order.placed"
    }
  }

  label_extractors = {
    monitor    = "EXTRACT(jsonPayload.monitor)"
    event_type = "EXTRACT(jsonPayload.event_type)"
  }
}

resource "google_monitoring_alert_policy" "monitor_breaches" {
  display_name          = "tidegate: a stream monitor breached"
  combiner              = "OR"
  notification_channels = var.monitor_notification_channels # none by default: incidents show in the console

  conditions {
    display_name = "tidegate_monitor_breach logged"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.monitor_breaches.name}\" AND resource.type=\"${var.monitor_resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0 # any breach
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.monitor", "metric.label.event_type"] # one incident per stream and monitor
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s" # a breach is recorded once: its incident closes itself after a day
  }

  lifecycle {
    precondition {
      # the job above logs as a Cloud Run job: another type would leave its breaches unalerted
      condition     = !local.monitor_scheduled || var.monitor_resource_type == "cloud_run_job"
      error_message = "monitor_resource_type must be cloud_run_job while this module runs tidegate monitor as the Cloud Run job tidegate-monitor (flex_template_image is set)."
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A tidegate stream monitor breached (labels: monitor, event_type). `tidegate status` and `tidegate monitor` list the breaches with what was observed against which baseline; docs/monitors.md says what each monitor means and how to tune it."
  }
}
