"""PII protection: keyed tokens for the lake, encryption for quarantined originals.

Contract fields marked `"pii": true` are replaced by a keyed HMAC-SHA256 token before any
row is written: `pii_` + 32 hex chars (128 bits). The same value always gives the same token
under the same key, so analysts can still count and join customers, but nobody without the
key can recover or confirm an e-mail address (unlike a plain hash, a dictionary attack needs
the key).

Quarantined messages keep their original bytes for forensics and replay, but only
encrypted (Fernet: AES-128-CBC + HMAC-SHA256, key derived from the same secret with HKDF),
and only up to `tidegate.lake.rows.QUARANTINE_MAX_ORIGINAL_BYTES` (1 MiB: above, size and SHA-256 only);
the human-readable `payload_preview` has PII fields tokenized and anything that looks like an
e-mail address masked.

The key comes from, in this order: `TIDEGATE_PII_KEY` (the secret itself, >= 32
characters); `TIDEGATE_PII_KEY_FILE` (a file holding it, e.g. a mounted secret); a Secret
Manager secret version (`projects/P/secrets/S/versions/latest`), named by
`TIDEGATE_PII_KEY_SECRET` or passed in (`IngestConfig.pii_key_secret`: how Dataflow workers,
which do not see the launcher's environment, get it; `tidegate deploy dataflow` passes the
secret's *name*, never the key, and Terraform grants the pipeline's service account
`secretAccessor` on that one secret only). Fetched once per process. Without any of them, a
fixed development key is used with a warning, and `TIDEGATE_ENV=production` (or
`--production`) refuses to run. `key_id` (first 12 hex of SHA-256 of the key) goes into
lineage so tokens made under different keys are never compared by mistake.

    TIDEGATE_PII_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))') tidegate ingest ...
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.api_core import exceptions as gexc

from tidegate.errors import ConfigError

KEY_ENV = "TIDEGATE_PII_KEY"
KEY_FILE_ENV = "TIDEGATE_PII_KEY_FILE"
KEY_SECRET_ENV = "TIDEGATE_PII_KEY_SECRET"  # noqa: S105 - the name of a variable, not a secret
ENV_ENV = "TIDEGATE_ENV"
DEV_KEY = b"tidegate-development-key-do-not-use-in-production"
# Bounded repeats (RFC 5321 limits): an unbounded local part backtracks quadratically on
# long runs of word characters (an oversize payload of "xxxx..." took 0.1 s per message).
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,255}\.[A-Za-z]{2,24}")
_PREVIEW_CHARS = 2000


@dataclass(frozen=True)
class PiiProtector:
    key: bytes
    development: bool = False

    @cached_property
    def key_id(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:12]

    @cached_property
    def _fernet(self) -> Fernet:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tidegate-quarantine").derive(
            self.key
        )
        return Fernet(base64.urlsafe_b64encode(derived))

    def token(self, value: Any) -> str | None:
        if value is None:
            return None
        digest = hmac.new(self.key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
        return f"pii_{digest[:32]}"

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        return self._fernet.decrypt(token)

    def mask_text(self, text: str) -> str:
        """Replace anything that looks like an e-mail address by its token."""
        return _EMAIL_RE.sub(lambda m: self.token(m.group(0)) or "", text)

    def redact(self, value: Any, pii_fields: Iterable[str]) -> Any:
        """Tokenize PII fields (top level) and mask e-mail-like strings anywhere."""
        fields = set(pii_fields)
        if isinstance(value, dict):
            return {
                k: (self.token(v) if k in fields and v is not None else self.redact(v, ()))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact(v, ()) for v in value]
        if isinstance(value, str):
            return self.mask_text(value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "…")
        return value

    def preview(self, data: bytes, parsed: Any = None, pii_fields: Iterable[str] = ()) -> str:
        """A PII-safe, readable excerpt of a payload for the quarantine table."""
        if parsed is not None:
            text = json.dumps(self.redact(parsed, pii_fields), ensure_ascii=False, default=str)
        else:
            text = self.mask_text(data[: _PREVIEW_CHARS * 2].decode("utf-8", errors="replace"))
        return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"


def is_production(flag: bool = False) -> bool:
    """Production if asked for (--production) or TIDEGATE_ENV=production."""
    return flag or os.environ.get(ENV_ENV, "").lower() in ("prod", "production")


def secret_manager_client() -> Any:
    """Secret Manager's client with Application Default Credentials."""
    # GCP only: never loaded offline
    from google.cloud import secretmanager_v1

    return secretmanager_v1.SecretManagerServiceClient()


SECRET_ID = "tidegate-pii-key"  # noqa: S105 - the secret's id (tidegate/infra/terraform), not its value


def worker_secret(project: str, explicit: str | None, production: bool) -> str | None:
    """The secret version Dataflow workers read the key from: the one asked for, else (in
    production) the one tidegate/infra/terraform provides in `project`."""
    if explicit:
        return explicit
    return f"projects/{project}/secrets/{SECRET_ID}/versions/latest" if production else None


_SECRET_RE = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")


@functools.lru_cache(maxsize=4)
def fetch_secret(name: str) -> bytes:
    """The payload of a Secret Manager secret version, once per process per name."""

    if not _SECRET_RE.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a Secret Manager secret version",
            hint="e.g. projects/acme-data/secrets/tidegate-pii-key/versions/latest",
        )
    try:
        response = secret_manager_client().access_secret_version(request={"name": name}, timeout=30)
    except gexc.PermissionDenied:
        raise ConfigError(
            f"not allowed to read the PII key secret {name}",
            hint="grant roles/secretmanager.secretAccessor on that secret (tidegate/infra/terraform does, to the pipeline's service account)",
        ) from None
    except gexc.NotFound:
        raise ConfigError(
            f"the PII key secret {name} does not exist (or has no enabled version)",
            hint=f"add one: python -c 'import secrets; print(secrets.token_hex(32))' | gcloud secrets versions add {name.split('/')[3]} --data-file=-",
        ) from None
    return bytes(response.payload.data).strip()


def load_protector(
    production: bool | None = None, secret: str | None = None
) -> tuple[PiiProtector, str | None]:
    """The protector for this process and a warning to show, if any. `secret`: a Secret
    Manager secret version to read the key from (after the two environment variables)."""
    production = is_production(bool(production))
    key: bytes | None = None
    secret = secret or os.environ.get(KEY_SECRET_ENV) or None
    if os.environ.get(KEY_ENV):
        key = os.environ[KEY_ENV].encode()
    elif os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV])
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{KEY_FILE_ENV}={path} cannot be read: {exc}") from None
    elif secret:
        key = fetch_secret(secret)
    if key is not None:
        if len(key) < 32:
            raise ConfigError(
                f"the PII key must be at least 32 characters (got {len(key)})",
                hint="generate one: python -c 'import secrets; print(secrets.token_hex(32))'",
            )
        return PiiProtector(key), None
    if production:
        raise ConfigError(
            "production mode needs a PII key: refusing to tokenize with the development key",
            hint=f"set {KEY_ENV}, {KEY_FILE_ENV} or {KEY_SECRET_ENV} (a secret of >= 32 characters)",
        )
    return (
        PiiProtector(DEV_KEY, development=True),
        f"no {KEY_ENV} set: tokenizing PII with the public development key (fine locally, never in production)",
    )
