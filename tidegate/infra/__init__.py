"""What starts and provisions tidegate's world.

- `catalog.yaml`: the stream catalog, the single source of truth (see docs/catalog.md);
- `emulator`: the Cloud SDK Pub/Sub emulator on a loopback port (`tidegate up` / `down`);
- `gcs_emulator`: a private GCS emulator (fake-gcs-server plus a fixing proxy) for gs:// lakes
  in tests and benches;
- `pubsub`: clients and idempotent provisioning from the catalog.
Terraform for real GCP (generated from the same catalog) arrives with the deployment issue.
"""
