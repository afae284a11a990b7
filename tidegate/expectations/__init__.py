"""Event contracts and data-quality rules (imports no Beam).

- `contracts`: versioned Avro payload contracts, plain-JSON validation, Arrow/Delta schemas;
- `compat`: compatibility modes between versions (`tidegate contracts check`);
- `envelope`: CloudEvents 1.0 over Pub/Sub, binary and structured mode;
- `suites`: Great Expectations suites (value rules), validated per batch;
- `checks`: the three stages over a batch: every message ends valid or rejected with reasons.
"""
