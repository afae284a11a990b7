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
