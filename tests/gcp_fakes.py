"""Google APIs that cannot run here, served by real gRPC servers on loopback.

The client libraries under test are the real ones (request building, wire format, error
mapping); only Google's backend is replaced, by a handler per RPC. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc


@contextmanager
def grpc_service(
    service: str, methods: dict[str, tuple[Callable[..., Any], Any, Any]]
) -> Iterator[grpc.Channel]:
    """Serve `service` (e.g. "google.monitoring.v3.MetricService") with unary handlers
    {method: (handler(request, context), request proto-plus type, response type)}; yields a
    plaintext channel to it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.deserialize, response_serializer=resp.serialize
        )
        for name, (fn, req, resp) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(0)


class FakeSecretManager:
    """AccessSecretVersion over a dict of secret version name -> payload."""

    def __init__(self, secrets: dict[str, bytes]) -> None:
        self.secrets = secrets
        self.denied: set[str] = set()
        self.requests: list[str] = []

    def access(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.cloud.secretmanager_v1 import types

        self.requests.append(request.name)
        if request.name in self.denied:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "secretmanager.versions.access denied")
        if request.name not in self.secrets:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{request.name}] not found")
        return types.AccessSecretVersionResponse(
            name=request.name, payload={"data": self.secrets[request.name]}
        )


@contextmanager
def secret_manager(secrets: dict[str, bytes], monkeypatch: Any) -> Iterator[FakeSecretManager]:
    """A loopback Secret Manager, and `tidegate.lake.pii` pointed at it (its per-process cache cleared)."""
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )
    from google.cloud.secretmanager_v1.types import AccessSecretVersionRequest, AccessSecretVersionResponse

    import tidegate.lake.pii

    fake = FakeSecretManager(secrets)
    methods = {"AccessSecretVersion": (fake.access, AccessSecretVersionRequest, AccessSecretVersionResponse)}
    with grpc_service("google.cloud.secretmanager.v1.SecretManagerService", methods) as channel:
        client = secretmanager_v1.SecretManagerServiceClient(
            transport=SecretManagerServiceGrpcTransport(channel=channel)
        )
        monkeypatch.setattr(tidegate.lake.pii, "secret_manager_client", lambda: client)
        tidegate.lake.pii.fetch_secret.cache_clear()
        try:
            yield fake
        finally:
            tidegate.lake.pii.fetch_secret.cache_clear()
