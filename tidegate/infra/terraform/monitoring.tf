# -- Stream monitors on GCP: a breach becomes a metric an alert policy watches --------------------
#
# `tidegate monitor` (tidegate/ops/monitors.py, docs/monitors.md) records each new breach of a
# stream monitor in the lake's _monitors table and writes it once as a structured log line on
# stderr: {"severity": "WARNING", "message": "tidegate_monitor_breach", "monitor": ...,
# "event_type": ..., "window_start": ...}. Where it runs (a scheduled Cloud Run job, GKE, a VM
# with the Ops Agent), Cloud Logging reads that line as jsonPayload. The log-based metric below
# counts those entries by monitor and event type; the alert policy opens an incident when any
# is counted. Say where the command runs with var.monitor_resource_type.

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

  documentation {
    mime_type = "text/markdown"
    content   = "A tidegate stream monitor breached (labels: monitor, event_type). `tidegate status` and `tidegate monitor` list the breaches with what was observed against which baseline; docs/monitors.md says what each monitor means and how to tune it."
  }
}
