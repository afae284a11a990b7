# Reads the stream catalog (tidegate/infra/catalog.yaml): the same file `tidegate up` provisions the
# local emulator from and the pipeline reads its subscriptions from. No provider: this module
# only computes, so `terraform console` can evaluate it offline (tests/test_deploy.py does).

variable "catalog_path" {
  description = "Path to the stream catalog (tidegate/infra/catalog.yaml)."
  type        = string
}

locals {
  catalog = yamldecode(file(var.catalog_path))

  # Stream settings every stream inherits unless it says otherwise (tidegate/catalog.py: StreamSettings).
  builtin_defaults = {
    ack_deadline_seconds  = 10
    message_retention     = "7d"
    exactly_once_delivery = false
    max_payload_bytes     = 65536
    compatibility         = "FULL_TRANSITIVE"
    publish_schema        = false
  }
  defaults = merge(local.builtin_defaults, try(local.catalog.defaults, {}))

  # "7d" / "12h" / "30m" / "45s" -> seconds
  unit_seconds = { s = 1, m = 60, h = 3600, d = 86400 }

  # `contracts:` is relative to the catalog file, as in tidegate/catalog.py (or absolute)
  contracts_rel = try(local.catalog.contracts, "../expectations/contracts")
  contracts_dir = abspath(startswith(local.contracts_rel, "/") ? local.contracts_rel : "${dirname(var.catalog_path)}/${local.contracts_rel}")

  # a stream names one type (`event_type`) or several behind one subscription (`event_types`);
  # it is keyed by its first type
  merged = { for s in local.catalog.streams : try(s.event_type, s.event_types[0]) => merge(local.defaults, s) }

  streams = {
    for t, s in local.merged : t => merge(s, {
      retention_seconds = tonumber(regex("^([0-9]+)[smhd]$", s.message_retention)[0]) * local.unit_seconds[regex("[smhd]$", s.message_retention)]
      # the newest contract version, for an Avro schema on the topic when publish_schema is on
      latest_contract = format("%s/%s/v%d.avsc", local.contracts_dir, t, max([
        for f in fileset(local.contracts_dir, "${t}/v*.avsc") : tonumber(regex("v([0-9]+)\\.avsc$", f)[0])
      ]...))
    })
  }

  # each topic once (streams may share one), with the first stream that names it
  topics = { for topic, ss in { for t, s in local.streams : s.topic => merge(s, { event_type = t })... } : topic => ss[0] }

  dead_letter = merge({
    topic                 = "tidegate-dead-letter"
    subscription          = "tidegate-dead-letter-sub"
    max_delivery_attempts = 10
  }, try(local.catalog.dead_letter, {}))
}

output "topics" {
  description = "Each topic once (streams may share one), with the first stream that names it."
  value       = local.topics
}

output "streams" {
  description = "Streams by event type, defaults applied: topic, subscription, ack deadline, retention, exactly-once, schema."
  value       = local.streams
}

output "dead_letter" {
  description = "The dead-letter topic and subscription, and the delivery attempts before a message moves there."
  value       = local.dead_letter
}

output "project" {
  description = "The catalog's project id (locally any valid id; on GCP pass var.project instead)."
  value       = local.catalog.project
}
