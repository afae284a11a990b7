"""A realistic, deliberately messy CloudEvents producer for the sample shop domain.

`generate()` is pure and deterministic: the same catalog, seed and start time give the same
messages, byte for byte. `publish()` sends them with the official client, paced to a rate
if asked, and returns what was sent by kind plus one manifest row per message (with the
Pub/Sub message id, so even an event published without its ce-id can be reconciled).

    tidegate produce --count 10000 --invalid-rate 0.02 --duplicate-rate 0.01 --seed 7 \
        --manifest .tidegate/manifest.jsonl

Kinds of message (the `kind` column of the manifest):

| kind                   | what is sent                                          | lands in   |
|------------------------|-------------------------------------------------------|------------|
| valid                  | a well-formed event (binary mode, some structured)    | raw        |
| duplicate              | an earlier valid event published again, same ce-id    | raw (once) |
| out_of_order           | valid, event time shifted back by up to --out-of-order-max | raw   |
| late                   | valid, event time shifted back by --late-by           | raw        |
| malformed_json         | truncated / garbled JSON body                         | quarantine |
| missing_required_field | a required payload field removed                      | quarantine |
| wrong_type             | a payload field of the wrong JSON type                | quarantine |
| out_of_range           | a numeric value outside the suite's range             | quarantine |
| not_in_set             | a currency / country not in the suite's set           | quarantine |
| unknown_type           | ce-type the catalog does not know                     | quarantine |
| unknown_version        | ce-dataschema naming a version that does not exist    | quarantine |
| missing_id / missing_time | ce-id / ce-time attribute left out                 | quarantine |
| bad_time               | ce-time that is not RFC 3339                          | quarantine |
| non_utf8               | payload encoded in Latin-1 (invalid UTF-8)            | quarantine |
| oversize               | payload larger than the stream's max_payload_bytes    | quarantine |
"""

from tidegate.producer.events import EXPECTED_RULE, FAULT_KINDS, OutgoingMessage, ProduceConfig, generate
from tidegate.producer.publish import PublishReport, publish

__all__ = [
    "EXPECTED_RULE",
    "FAULT_KINDS",
    "OutgoingMessage",
    "ProduceConfig",
    "PublishReport",
    "generate",
    "publish",
]
