"""Delta Lake and polars: raw history, quarantine, ledger and aggregates tables.

Empty until the ingest issue. Imports no Beam, so it is tested with plain pytest on real
tables in `tmp_path`. The Arrow schema of each raw table is already derived from the
contracts (`tidegate.expectations.contracts.Contract.arrow_schema`).
"""
