"""Beam pipelines: wiring and options only (the composites live in `tidegate/transforms/`).

Empty until the ingest issue: local micro-batch mode on Beam's in-process runner and
streaming mode behind `ReadFromPubSub` will both be wired here from the stream catalog.
"""
