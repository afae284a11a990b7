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
  description = "How long quarantined rows are kept. Not a bucket lifecycle rule (deleting Delta files by age corrupts the table): `tidegate maintain` expires them with a Delta delete + vacuum (output `quarantine_retention_days`)."
  type        = number
  default     = 90
}

variable "noncurrent_version_retention_days" {
  description = "The lake bucket keeps object versions: an overwritten or deleted object (a vacuumed Delta file, a rewritten checkpoint) stays recoverable this many days, then its noncurrent version is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "analyst_members" {
  description = "Extra principals (e.g. group:analysts@example.com) allowed to read the lake's raw/ and aggregates/ (IAM conditions on the object prefix), besides the read-only service account. Not the quarantine."
  type        = list(string)
  default     = []
}

variable "quarantine_auditors" {
  description = "Principals (e.g. group:lake-auditors@example.com) allowed to read the quarantine (lake/quarantine/), besides the pipeline's service account. Their reads are in the Data Access audit logs."
  type        = list(string)
  default     = []
}

variable "kms_key_name" {
  description = "CMEK: a Cloud KMS key (projects/P/locations/<region>/keyRings/R/cryptoKeys/K, in var.region) for the buckets, the Pub/Sub topics, the PII key secret and the Dataflow job (output `dataflow_kms_key`). null: Google-managed keys. Decide before the first apply: the secret's replication cannot change later."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "subnetwork" {
  description = "Subnetwork for the Dataflow workers, which get no public IPs (self link, or regions/REGION/subnetworks/NAME; a Shared VPC one needs the full URL). It needs Private Google Access. null: terraform creates network `tidegate` with subnetwork `tidegate-workers`."
  type        = string
  default     = null
}

variable "subnetwork_cidr" {
  description = "IP range of the subnetwork terraform creates when var.subnetwork is null."
  type        = string
  default     = "10.128.0.0/20"
}

variable "flex_template_spec" {
  description = "The Flex Template's spec file, gs://<staging_bucket>/templates/tidegate.json (`gcloud dataflow flex-template build`, docs/deploy.md). Set it (and flex_template_image) to schedule the daily maintenance job; null: no schedule."
  type        = string
  default     = null

  validation {
    condition     = var.flex_template_spec == null || can(regex("^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]/.+\\.json$", var.flex_template_spec))
    error_message = "flex_template_spec must be a gs://bucket/path.json location."
  }
}

variable "flex_template_image" {
  description = "The image the Flex Template was built with (<image_repository>/tidegate:<tag>): the maintenance job's workers run it, and the Cloud Run job tidegate-monitor (created once this is set) runs `tidegate monitor` in it."
  type        = string
  default     = null
}

variable "maintain_schedule" {
  description = "When the maintenance job runs (cron, time zone UTC): retention, compaction and vacuum once a day."
  type        = string
  default     = "17 3 * * *"
}

variable "maintain_retain_hours" {
  description = "The maintenance job's vacuum keeps files younger than this (the removed-file window; `tidegate maintain --retain-hours`)."
  type        = number
  default     = 168

  validation {
    condition     = var.maintain_retain_hours >= 24
    error_message = "maintain_retain_hours must be at least 24: a shorter window can vacuum files a running reader or writer still needs."
  }
}

variable "monitor_notification_channels" {
  description = "Notification channels (projects/P/notificationChannels/ID) of the stream-monitor alert policy (monitoring.tf). Empty: incidents open in the Cloud Monitoring console only."
  type        = list(string)
  default     = []
}

variable "monitor_resource_type" {
  description = "The monitored resource type of the log entries `tidegate monitor` writes, i.e. where it runs: cloud_run_job (the Cloud Run job tidegate-monitor this module creates with flex_template_image; required then), k8s_container (GKE), gce_instance (a VM with the Ops Agent)."
  type        = string
  default     = "cloud_run_job"
}

variable "monitor_schedule" {
  description = "When the Cloud Run job tidegate-monitor runs `tidegate monitor` (cron, time zone UTC). Keep runs at least 5 minutes apart: the job's timeout (240 s) is what keeps two runs from overlapping."
  type        = string
  default     = "*/5 * * * *"
}
