output "lake" {
  description = "Pass as --lake to tidegate (ingest, replay, verify, deploy)."
  value       = "gs://${google_storage_bucket.lake.name}/lake"
}

output "temp_location" {
  description = "Pass as --temp-location to `tidegate deploy dataflow`."
  value       = "gs://${google_storage_bucket.staging.name}/tmp"
}

output "image_repository" {
  description = "Where `docker push` puts the Flex Template image."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "pipeline_service_account" {
  description = "Pass as --service-account to `tidegate deploy dataflow`."
  value       = google_service_account.pipeline.email
}

output "reader_service_account" {
  description = "Read-only identity for notebooks."
  value       = google_service_account.reader.email
}

output "subscriptions" {
  description = "Subscription per event type."
  value       = { for t, s in google_pubsub_subscription.stream : t => s.id }
}

output "pii_key_secret" {
  description = "Secret Manager secret version the workers read the PII key from (`tidegate deploy dataflow --pii-key-secret`, the default)."
  value       = "${google_secret_manager_secret.pii_key.id}/versions/latest"
}

output "subnetwork" {
  description = "Pass as --subnetwork (and --no_use_public_ips) to the Dataflow launch: the workers' subnetwork, private IPs only (docs/deploy.md)."
  value       = local.subnetwork
}

output "dataflow_kms_key" {
  description = "Pass as --dataflow_kms_key to the Dataflow launch when not empty: the CMEK for the job's state (var.kms_key_name)."
  value       = var.kms_key_name == null ? "" : var.kms_key_name
}

output "quarantine_retention_days" {
  description = "How long `tidegate maintain` keeps quarantined rows (a Delta delete + vacuum, never a bucket lifecycle rule)."
  value       = var.quarantine_retention_days
}

output "maintain_job" {
  description = "The Cloud Scheduler job launching the daily maintenance (run it now: gcloud scheduler jobs run tidegate-maintain --location <region>); empty until flex_template_spec is set."
  value       = try(google_cloud_scheduler_job.maintain[0].name, "")
}

output "scheduler_service_account" {
  description = "The identity the maintenance launch runs as (roles/dataflow.developer, serviceAccountUser on the pipeline's account); empty until flex_template_spec is set."
  value       = try(google_service_account.scheduler[0].email, "")
}
