"""PII protection: keyed tokens for the lake, encryption for quarantined originals, keys that
cannot be mistaken and can be rotated.

**Tokens.** Contract fields marked `"pii"` (and, per the catalog, ce-subject and the query
strings of URL fields) are replaced before any row is written by a deterministic token:
`pii_<key version>_<base64url>`, the AES-SIV encryption (RFC 5297, no nonce: deterministic) of
the value padded to a 16-byte multiple (so a token shows the value's length only to 16 bytes).
The same value of the same *class* under the same key version always gives the same token, so
analysts can count and join customers; without the key nobody can recover or confirm a value
(no dictionary attack, unlike a plain hash). With the key, `tidegate keys retokenize` can move
tokens to a new key version, which a one-way HMAC could not.

**Classes.** Each token is made with a subkey of its class, so a value is joinable only with
the same class: a contract field's class is its name (`"pii": true`) or the one it names
(`"pii": "email"`: every field of that class, in any table, joins); `subject` (ce-subject),
`url_query` (values in URL query strings), `text` (e-mail addresses masked in free text).
`tidegate contracts list` shows each field's class.

**Subkeys.** Every key derives, with HKDF-SHA256 and a distinct label (domain separation), one
subkey per token class, one for the quarantine's encryption (Fernet: AES-128-CBC +
HMAC-SHA256) and one for the key id. The key id written into every commit
(`tidegate_pii_key_id`, with `tidegate_pii_key_version`) is an HMAC of a fixed label under the
key, never a hash of the key itself, so reading the lake does not let anyone test guessed keys.

**Key ring and rotation.** The key material is either one secret (version 1) or a key ring, a
JSON document `{"current": 2, "keys": {"1": "...", "2": "..."}}`. New tokens and new
encryptions use `current`; every version stays usable to decrypt (MultiFernet) and to
re-tokenize. `tidegate keys rotate` adds a version; `tidegate keys retokenize` moves a lake's
tokens and encrypted originals to the current version (docs/security.md).

**Where the key comes from**, in this order: `TIDEGATE_PII_KEY` (the secret or ring itself);
`TIDEGATE_PII_KEY_FILE` (a file holding it, e.g. a mounted secret); a Secret Manager secret
version named by `TIDEGATE_PII_KEY_SECRET` or passed in (`IngestConfig.pii_key_secret`: how
Dataflow workers get it; `tidegate deploy dataflow` passes the secret's *name*, never the key).
Fetched once per process.

**The development key** (public, in this file) is used only when no key is given and nothing
points at production. Production is: `--production` or `TIDEGATE_ENV=production`, `--gcp`, or
a lake that is not on the local disk (gs://, so every Dataflow job). There a missing key, the
development key's bytes, a key under 32 characters or a low-entropy one (e.g. `"a"*32`) is
refused.

    TIDEGATE_PII_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))') tidegate ingest ...
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import os
import re
import secrets as _secrets
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.api_core import exceptions as gexc

from tidegate.errors import ConfigError

KEY_ENV = "TIDEGATE_PII_KEY"
KEY_FILE_ENV = "TIDEGATE_PII_KEY_FILE"
KEY_SECRET_ENV = "TIDEGATE_PII_KEY_SECRET"  # noqa: S105 - the name of a variable, not a secret
ENV_ENV = "TIDEGATE_ENV"
DEV_KEY = b"tidegate-development-key-do-not-use-in-production"
MIN_KEY_CHARS = 32
MIN_KEY_BITS = 100  # estimated (length x Shannon entropy per character): 64 hex chars ~ 250
# token classes that are not contract fields
SUBJECT = "subject"
URL_QUERY = "url_query"
TEXT = "text"
_TOKEN_RE = re.compile(r"pii_([0-9]{1,6})_([A-Za-z0-9_-]{22,})")
# Bounded repeats (RFC 5321 limits): an unbounded local part backtracks quadratically on
# long runs of word characters (an oversize payload of "xxxx..." took 0.1 s per message).
# Any non-space, non-delimiter character counts in the local part (non-ASCII included), and a
# host without a dot (root@localhost) too: masking too much beats leaking.
_EMAIL_RE = re.compile(r"[^\s\"'<>(),;:@\[\]\\]{1,64}@[^\s\"'<>(),;:@\[\]\\]{1,255}")
_PREVIEW_CHARS = 2000


def key_problem(key: bytes) -> str | None:
    """Why `key` must not protect a production lake, or None."""
    if hmac.compare_digest(key, DEV_KEY):
        return "it is the public development key"
    if len(key) < MIN_KEY_CHARS:
        return f"it has {len(key)} characters; at least {MIN_KEY_CHARS} are needed"
    counts = Counter(key)
    per_char = abs(sum(n / len(key) * math.log2(n / len(key)) for n in counts.values()))
    bits = per_char * len(key)
    if bits < MIN_KEY_BITS:
        return f"it looks low-entropy (about {bits:.0f} bits estimated; at least {MIN_KEY_BITS} needed)"
    return None


@dataclass(frozen=True)
class KeyRing:
    """Key versions (version -> secret) and the one new tokens and encryptions use."""

    keys: tuple[tuple[int, bytes], ...]
    current: int

    @classmethod
    def single(cls, key: bytes) -> KeyRing:
        return cls(((1, key),), 1)

    @classmethod
    def parse(cls, raw: bytes, where: str) -> KeyRing:
        """One secret (version 1) or a JSON ring `{"current": N, "keys": {"N": "secret", ...}}`."""
        text = raw.strip()
        if not text.startswith(b"{"):
            return cls.single(text)
        try:
            doc = json.loads(text)
            keys = tuple(sorted((int(v), str(k).encode()) for v, k in doc["keys"].items()))
            current = int(doc["current"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"the PII key ring in {where} is not valid",
                hint='a ring is {"current": 2, "keys": {"1": "<secret>", "2": "<secret>"}}; '
                "`tidegate keys rotate` writes one",
            ) from None
        if not keys or current not in dict(keys):
            raise ConfigError(f"the PII key ring in {where} has no key for its current version {current}")
        return cls(keys, current)

    def secret(self, version: int) -> bytes:
        try:
            return dict(self.keys)[version]
        except KeyError:
            raise ConfigError(
                f"key version {version} is not in the PII key ring (it has {', '.join(str(v) for v, _ in self.keys)})",
                hint="rotation keeps every version in the ring: restore the ring that made these tokens",
            ) from None

    def rotated(self) -> KeyRing:
        """A ring with a new random key as its current version; the older ones stay."""
        version = max(v for v, _ in self.keys) + 1
        return KeyRing((*self.keys, (version, _secrets.token_hex(32).encode())), version)

    def to_json(self) -> str:
        return json.dumps({"current": self.current, "keys": {str(v): k.decode() for v, k in self.keys}})


@functools.lru_cache(maxsize=256)
def _derive(secret: bytes, label: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=64, salt=b"tidegate", info=f"tidegate/{label}".encode()
    ).derive(secret)


@functools.lru_cache(maxsize=256)
def _siv(secret: bytes, token_class: str) -> AESSIV:
    return AESSIV(_derive(secret, f"token/{token_class}"))


def _pad(data: bytes) -> bytes:
    n = 16 - len(data) % 16
    return data + bytes([n]) * n


def _unpad(data: bytes) -> bytes:
    return data[: -data[-1]]


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """URL-safe base64 without padding (base64.urlsafe_b64encode's result, one call less)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PiiProtector:
    key: bytes | KeyRing
    development: bool = False
    ring: KeyRing = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ring = self.key if isinstance(self.key, KeyRing) else KeyRing.single(self.key)
        object.__setattr__(self, "ring", ring)

    @property
    def key_version(self) -> int:
        return self.ring.current

    @cached_property
    def key_id(self) -> str:
        """An id of the current key for lineage: an HMAC of a fixed label under it, so it names
        the key without letting anyone test a guess at it."""
        return hmac.new(self.ring.secret(self.ring.current), b"tidegate/key-id", hashlib.sha256).hexdigest()[
            :12
        ]

    @cached_property
    def _fernet(self) -> MultiFernet:
        current = self.ring.current
        ordered = [current, *(v for v, _ in reversed(self.ring.keys) if v != current)]
        return MultiFernet(
            [
                Fernet(base64.urlsafe_b64encode(_derive(self.ring.secret(v), "quarantine")[:32]))
                for v in ordered
            ]
        )

    @cached_property
    def _sealers(self) -> dict[str, Any]:
        """token class -> the AES-SIV encrypt of the current key version (the ring is frozen):
        looking the key up for every token cost ~0.4 us of ~3 us, on every PII value."""
        return {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_sealers", None)  # bound methods of Rust objects: rebuilt on first use
        return state

    @cached_property
    def _token_prefix(self) -> str:
        return f"pii_{self.ring.current}_"

    def token(self, value: Any, token_class: str = TEXT) -> str | None:
        """The token of `value` in `token_class` under the current key version (None stays None)."""
        if value is None:
            return None
        seal = self._sealers.get(token_class)
        if seal is None:
            seal = self._sealers[token_class] = _siv(self.ring.secret(self.ring.current), token_class).encrypt
        return self._token_prefix + _b64(seal(_pad(str(value).encode("utf-8")), None))

    def detokenize(self, token: str, token_class: str) -> str:
        """The value behind a token of `token_class` (any key version of the ring)."""
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            raise ValueError("not a tidegate token")
        siv = _siv(self.ring.secret(int(m.group(1))), token_class)
        return _unpad(siv.decrypt(_unb64(m.group(2)), None)).decode("utf-8")

    def retokenize(self, token: str | None, token_class: str) -> str | None:
        """The same value's token under the current key version."""
        if token is None or token.startswith(f"pii_{self.ring.current}_"):
            return token
        return self.token(self.detokenize(token, token_class), token_class)

    def retokenize_text(self, text: str | None, classes: Iterable[str]) -> str | None:
        """Every token inside `text` moved to the current key version; its class is found by
        trying `classes` (AES-SIV refuses a wrong subkey)."""
        if not text or "pii_" not in text:
            return text
        tried = [TEXT, SUBJECT, URL_QUERY, *classes]

        def move(m: re.Match[str]) -> str:
            if int(m.group(1)) == self.ring.current:
                return m.group(0)
            for c in dict.fromkeys(tried):
                try:
                    return self.token(self.detokenize(m.group(0), c), c) or ""
                except (InvalidTag, ValueError, ConfigError):
                    continue
            return m.group(0)

        return _TOKEN_RE.sub(move, text)

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        return self._fernet.decrypt(token)

    def encrypted_with_current(self, token: bytes) -> bool:
        """Whether an encrypted original was made with the current key version."""
        current = Fernet(
            base64.urlsafe_b64encode(_derive(self.ring.secret(self.ring.current), "quarantine")[:32])
        )
        try:
            current.decrypt(token)
        except InvalidToken:
            return False
        return True

    def reencrypt(self, token: bytes) -> bytes:
        """An encrypted original moved to the current key version."""
        return self._fernet.rotate(token)

    def mask_text(self, text: str) -> str:
        """Replace anything that looks like an e-mail address by its token."""
        if "@" not in text:  # nothing the pattern could match; its scan costs ~2 us a string
            return text
        return _EMAIL_RE.sub(lambda m: self.token(m.group(0), TEXT) or "", text)

    def mask_url(self, url: Any) -> Any:
        """A URL with every query-string value (and any user:password@) tokenized: the path,
        which aggregates group by, stays readable."""
        if not isinstance(url, str) or ("?" not in url and "@" not in url):
            return url
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.token(url, URL_QUERY)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{self.token(userinfo, URL_QUERY)}@{host}"
        query = urlencode(
            [(k, self.token(v, URL_QUERY)) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
            safe="",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    def redact(self, value: Any, pii_fields: Mapping[str, str] | Iterable[str]) -> Any:
        """Tokenize PII fields (by name, at any depth, whatever their value's shape) and mask
        e-mail-like strings everywhere else."""
        classes = dict(pii_fields) if isinstance(pii_fields, Mapping) else {f: f for f in pii_fields}
        return self._redact(value, classes)

    def _redact(self, value: Any, classes: dict[str, str]) -> Any:
        if isinstance(value, dict):
            return {
                k: (
                    self.token(
                        v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str), classes[k]
                    )
                    if k in classes and v is not None
                    else self._redact(v, classes)
                )
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._redact(v, classes) for v in value]
        if isinstance(value, str):
            return self.mask_text(value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "…")
        return value

    def preview(
        self,
        parsed: Any,
        pii_fields: Mapping[str, str] | Iterable[str] = (),
        declared: Collection[str] | None = None,
        structured: bool = False,
    ) -> str | None:
        """A PII-safe, readable excerpt of a parsed payload for the quarantine table; None for
        a payload that could not be parsed (its bytes are kept encrypted, never previewed).

        `declared`: the payload fields the event's contracts know. Any other field's value is
        withheld (its name stays): nobody declared whether it is personal data, and the
        rejection is often *because* a producer added it (`unexpected_field`). `structured`:
        `parsed` is a structured-mode event, whose payload is its `data`."""
        if parsed is None:
            return None
        if declared is not None:
            if structured and isinstance(parsed, dict) and isinstance(parsed.get("data"), dict):
                parsed = {**parsed, "data": _withhold_undeclared(parsed["data"], declared)}
            elif not structured and isinstance(parsed, dict):
                parsed = _withhold_undeclared(parsed, declared)
        text = json.dumps(self.redact(parsed, pii_fields), ensure_ascii=False, default=str)
        return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"


WITHHELD = "(withheld: not in the contract)"


def _withhold_undeclared(payload: dict[str, Any], declared: Collection[str]) -> dict[str, Any]:
    return {k: (v if k in declared else WITHHELD) for k, v in payload.items()}


@dataclass(frozen=True)
class PiiPolicy:
    """What is personal data in one event type's rows: payload fields and their token classes
    (the contracts' "pii" marks, any version), whether ce-subject is, and which payload fields
    hold URLs whose query strings are (the catalog's `pii_attributes` and `pii_url_fields`)."""

    classes: Mapping[str, str] = field(default_factory=dict)
    subject: bool = True
    url_fields: tuple[str, ...] = ()
    # the payload fields any version of the contracts declares (None: not known); a quarantine
    # preview withholds the value of every other field (PiiProtector.preview)
    declared: frozenset[str] | None = None

    def preview_classes(self) -> dict[str, str]:
        """Field -> class for previews: URL fields are tokenized whole there."""
        return {**dict.fromkeys(self.url_fields, URL_QUERY), **self.classes}


def pii_policies(catalog: Any, registry: Any) -> dict[str, PiiPolicy]:
    """Every event type's PiiPolicy (catalog.Catalog, expectations.contracts.ContractRegistry).
    A URL field the type's contracts do not have is a catalog mistake, reported here."""
    out: dict[str, PiiPolicy] = {}
    for stream in catalog.streams:
        for event_type in stream.types:
            contracts = registry.types[event_type]
            classes: dict[str, str] = {}
            names: set[str] = set()
            for c in contracts.versions.values():
                classes.update(c.pii_classes)
                names.update(c.field_names)
            missing = [f for f in stream.pii_url_fields if f not in names]
            if missing:
                raise ConfigError(
                    f"{event_type}: pii_url_fields names {', '.join(missing)}, not a field of its contracts",
                    hint=f"its fields: {', '.join(sorted(names))}",
                )
            out[event_type] = PiiPolicy(
                classes, "subject" in stream.pii_attributes, tuple(stream.pii_url_fields), frozenset(names)
            )
    return out


def all_pii(policies: Mapping[str, PiiPolicy]) -> PiiPolicy:
    """The union of every type's policy: for a message whose type is unknown (a field is
    declared if some type declares it)."""
    classes: dict[str, str] = {}
    urls: list[str] = []
    declared: set[str] = set()
    for p in policies.values():
        classes.update(p.classes)
        urls += p.url_fields
        declared |= p.declared or set()
    return PiiPolicy(classes, True, tuple(dict.fromkeys(urls)), frozenset(declared))


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


def is_remote_lake(lake: str | None) -> bool:
    """A lake that is not on this machine's disk (gs://, s3://, ...): production by definition."""
    return lake is not None and "://" in lake and not lake.startswith("file://")


def _key_material(secret: str | None) -> tuple[bytes, str] | None:
    """The key (or ring) given to this process and where it came from, or None."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode(), KEY_ENV
    if os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV])
        try:
            return path.read_bytes(), f"{KEY_FILE_ENV}={path}"
        except OSError as exc:
            raise ConfigError(f"{KEY_FILE_ENV}={path} cannot be read: {exc}") from None
    if secret:
        return fetch_secret(secret), secret
    return None


def load_protector(
    production: bool | None = None,
    secret: str | None = None,
    *,
    lake: str | None = None,
    gcp: bool = False,
) -> tuple[PiiProtector, str | None]:
    """The protector for this process and a warning to show, if any.

    `secret`: a Secret Manager secret version to read the key from (after the two environment
    variables). Production (the development key and weak keys refused) is `production`,
    `TIDEGATE_ENV=production`, `gcp` (real Pub/Sub) or a `lake` that is not local."""
    why = (
        "--production / TIDEGATE_ENV=production"
        if is_production(bool(production))
        else "--gcp reads real Pub/Sub"
        if gcp
        else f"the lake {lake} is not on this machine"
        if is_remote_lake(lake)
        else None
    )
    secret = secret or os.environ.get(KEY_SECRET_ENV) or None
    given = _key_material(secret)
    if given is not None:
        raw, where = given
        ring = KeyRing.parse(raw, where)
        problems = [(v, p) for v, k in ring.keys if (p := key_problem(k)) is not None]
        short = [(v, p) for v, p in problems if "characters" in p]
        if short or (why and problems):
            v, p = (short or problems)[0]
            raise ConfigError(
                f"the PII key from {where} (version {v}) cannot be used"
                + (f" in production ({why})" if why and not short else "")
                + f": {p}",
                hint="generate one: python -c 'import secrets; print(secrets.token_hex(32))'",
            )
        warning = f"the PII key from {where} is weak: {problems[0][1]}" if problems else None
        return PiiProtector(
            ring, development=hmac.compare_digest(ring.secret(ring.current), DEV_KEY)
        ), warning
    if why:
        raise ConfigError(
            f"a PII key is required here ({why}): refusing to tokenize with the public development key",
            hint=f"set {KEY_ENV}, {KEY_FILE_ENV} or {KEY_SECRET_ENV} (a random secret of >= {MIN_KEY_CHARS} "
            "characters: python -c 'import secrets; print(secrets.token_hex(32))')",
        )
    return (
        PiiProtector(DEV_KEY, development=True),
        f"no {KEY_ENV} set: tokenizing PII with the public development key (fine locally, never in production)",
    )
