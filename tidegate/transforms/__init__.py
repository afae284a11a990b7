"""Beam composite transforms (ReadEvents, DecodeEnvelope, ValidateContract, ...).

Empty until the ingest issue. They will be thin adapters over the pure functions of
`tidegate.expectations.checks` (envelope -> contract -> GX suite), which already exist and are tested.
"""
