variable "project" {
  description = "GCP project id to deploy into."
  type        = string
}

variable "region" {
  description = "Region for Dataflow, the buckets and Artifact Registry, e.g. europe-west1."
  type        = string
}

variable "catalog_path" {
  description = "The stream catalog: topics, subscriptions and their settings come from it."
  type        = string
  default     = "../catalog.yaml"
}

variable "lake_bucket" {
  description = "Name of the GCS bucket holding the Delta lake (gs://<lake_bucket>/lake)."
  type        = string
}

variable "staging_bucket" {
  description = "Name of the GCS bucket for Dataflow staging, temp files and Flex Template specs."
  type        = string
}

variable "artifact_repository" {
  description = "Artifact Registry (Docker) repository id for the Flex Template image."
  type        = string
  default     = "tidegate"
}

variable "quarantine_retention_days" {
  description = "Quarantined messages (encrypted originals) are deleted from the lake bucket after this many days."
  type        = number
  default     = 90
}

variable "analyst_members" {
  description = "Extra principals (e.g. group:analysts@example.com) allowed to read the lake, besides the read-only service account."
  type        = list(string)
  default     = []
}
