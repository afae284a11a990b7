"""What the operator's commands do, above the lake and Pub/Sub: the CLI parses, calls one of
these and renders what it returns (docs/architecture.md, "Layers").

- `status`: per table rows/versions/last commit, the ledger's totals, subscription backlogs.
"""
