"""A small Python client of the search service (what `nas submit/status/watch/...` use). It
imports grpc and the messages, not the service, so that the client commands start fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from raynas.common import ConfigError, NasError
from raynas.controller.api.messages import STATE_TO_PB, spec_to_message
from raynas.controller.service.limits import DEFAULT_PORT
from raynas.protos.nas.v1 import search_pb2 as pb
from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

TOKEN_ENV = "NAS_TOKEN"
SERVER_ENV = "NAS_SERVER"


class RemoteError(NasError):
    """The service refused or failed a call; carries the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        super().__init__(f"{code.name}: {details}")


def read_token(token_file: str | None) -> str | None:
    """The token from `token_file`, else from $NAS_TOKEN, else None."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ConfigError("token_file", f"file not found: {path}")
        token = path.read_text().strip()
        if not token:
            raise ConfigError("token_file", f"{path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


class SearchClient:
    def __init__(self, server: str | None = None, token: str | None = None, tls_ca: str | None = None,
                 timeout_s: float = 30.0):
        self.server = server or os.environ.get(SERVER_ENV) or f"localhost:{DEFAULT_PORT}"
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls_ca:
            if not Path(tls_ca).is_file():
                raise ConfigError("tls_ca", f"file not found: {tls_ca}")
            self._channel = grpc.secure_channel(self.server, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()))
        else:
            self._channel = grpc.insecure_channel(self.server)
        self._stub = pb_grpc.SearchServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, request):
        try:
            return getattr(self._stub, name)(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _remote(exc, self.server) from None

    def submit(self, spec: dict[str, Any], name: str = "") -> pb.Search:
        return self._call("SubmitSearch", pb.SubmitSearchRequest(spec=spec_to_message(spec), name=name))

    def get(self, search_id: str) -> pb.Search:
        return self._call("GetSearch", pb.GetSearchRequest(id=search_id))

    def list(self, page_size: int = 20, page_token: str = "", state: str | None = None) -> pb.ListSearchesResponse:
        return self._call("ListSearches", pb.ListSearchesRequest(
            page_size=page_size, page_token=page_token, state=STATE_TO_PB[state] if state else 0))

    def cancel(self, search_id: str) -> pb.Search:
        return self._call("CancelSearch", pb.CancelSearchRequest(id=search_id))

    def resume(self, search_id: str) -> pb.Search:
        return self._call("ResumeSearch", pb.ResumeSearchRequest(id=search_id))

    def delete(self, search_id: str) -> pb.Search:
        return self._call("DeleteSearch", pb.DeleteSearchRequest(id=search_id))

    def result(self, search_id: str) -> pb.SearchResult:
        return self._call("GetResult", pb.GetResultRequest(id=search_id))

    def watch(self, search_id: str, skip: int = 0) -> Iterator[pb.SearchEvent]:
        """Events until the search ends (no deadline: a search may run for days)."""
        stream = self._stub.WatchSearch(pb.WatchSearchRequest(id=search_id, skip_evaluations=skip),
                                        metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise _remote(exc, self.server) from None
        finally:
            stream.cancel()


def _remote(exc: grpc.RpcError, server: str) -> RemoteError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"cannot reach the search service at {server} ({details}); is `nas serve` running there?"
    return RemoteError(code, details)
