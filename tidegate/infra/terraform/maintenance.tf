# -- Maintenance on GCP: what `tidegate maintain` does, daily ----------------------------------
#
# Cloud Scheduler calls the Dataflow API's flexTemplates:launch with the Flex Template in
# mode=maintain: a one-step batch job that applies the catalog's retention (each deletion an
# _audit row by "cloud-scheduler"), compacts every table and vacuums files older than the
# removed-file window (tidegate/pipelines/flex_main.py). It runs as the pipeline's service account,
# on the workers' private subnetwork, with the CMEK when set: like the streaming job.
#
# Created once the template exists (docs/deploy.md, step 3): set var.flex_template_spec and
# var.flex_template_image, then apply again. Needs the Cloud Scheduler API
# (gcloud services enable cloudscheduler.googleapis.com; this module enables no API).

locals {
  maintain_scheduled = var.flex_template_spec != null

  # The body of the launch request (REST: projects.locations.flexTemplates.launch).
  maintain_launch = {
    launchParameter = {
      # Dataflow refuses a second job of this name while one runs: runs never overlap.
      jobName              = "tidegate-maintain"
      containerSpecGcsPath = var.flex_template_spec
      parameters = {
        mode         = "maintain"
        lake         = "gs://${google_storage_bucket.lake.name}/${local.lake_prefix}" # output `lake`
        retain_hours = tostring(var.maintain_retain_hours)
      }
      environment = {
        serviceAccountEmail   = google_service_account.pipeline.email
        sdkContainerImage     = var.flex_template_image # the workers run tidegate's image
        tempLocation          = "gs://${google_storage_bucket.staging.name}/tmp"
        stagingLocation       = "gs://${google_storage_bucket.staging.name}/staging"
        subnetwork            = local.subnetwork
        ipConfiguration       = "WORKER_IP_PRIVATE" # no public IPs, launcher VM included
        kmsKeyName            = var.kms_key_name    # null: Google-managed keys
        numWorkers            = 1                   # one element, one step: one worker
        maxWorkers            = 1
        additionalExperiments = ["use_runner_v2"]
      }
    }
  }
}

# The identity Cloud Scheduler calls the Dataflow API as. It can launch jobs (dataflow.developer)
# and run them as the pipeline's service account (serviceAccountUser on that account only); it
# reads no data itself: the job's workers do, as the pipeline's account.
resource "google_service_account" "scheduler" {
  count        = local.maintain_scheduled ? 1 : 0
  account_id   = "tidegate-scheduler"
  display_name = "tidegate scheduler (launches the daily maintenance job)"
}

resource "google_project_iam_member" "scheduler_dataflow" {
  count   = local.maintain_scheduled ? 1 : 0
  project = var.project
  role    = "roles/dataflow.developer"
  member  = "serviceAccount:${google_service_account.scheduler[0].email}"
}

resource "google_service_account_iam_member" "scheduler_acts_as_pipeline" {
  count              = local.maintain_scheduled ? 1 : 0
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.scheduler[0].email}"
}

resource "google_cloud_scheduler_job" "maintain" {
  count            = local.maintain_scheduled ? 1 : 0
  name             = "tidegate-maintain"
  description      = "Daily: tidegate's retention, compaction and vacuum of ${local.lake_prefix} (Flex Template, mode=maintain)."
  region           = var.region
  schedule         = var.maintain_schedule
  time_zone        = "UTC"
  attempt_deadline = "180s" # the launch call only: it returns once the job is queued

  retry_config {
    retry_count          = 2 # a failed launch call; a duplicate launch is refused by the job name
    min_backoff_duration = "60s"
  }

  http_target {
    http_method = "POST"
    uri         = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode(local.maintain_launch))

    oauth_token {
      service_account_email = google_service_account.scheduler[0].email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  lifecycle {
    precondition {
      condition     = var.flex_template_image != null
      error_message = "flex_template_image (the image the template was built with) is required with flex_template_spec."
    }
  }

  depends_on = [
    google_project_iam_member.scheduler_dataflow,
    google_service_account_iam_member.scheduler_acts_as_pipeline,
  ]
}
