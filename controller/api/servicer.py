"""The gRPC edge of the search service: translates `nas.v1` messages to and from
`SearchManager` calls and maps the project's errors to status codes. No search
logic lives here."""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import math
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raynas.common import Busy, ConfigError, NasError, NotFound, NotReady
from raynas.controller.runtime.rundir import EVALUATIONS, PLOT, RESULT, SPEC
from raynas.controller.service.manager import SearchManager
from raynas.controller.service.registry import SearchRecord
from raynas.protos.nas.v1 import search_pb2 as pb
from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
#: Requests are specs and ids; anything near this size is a mistake, not a search.
MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 16 << 20
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_STRUCT_FIELDS = tuple(f.name for f in pb.SearchSpec.DESCRIPTOR.fields if f.message_type is not None)

# -- messages <-> plain data ------------------------------------------------------------

STATE_TO_PB = {name: pb.State.Value(f"STATE_{name.upper()}") for name in
               ("pending", "running", "succeeded", "failed", "cancelled", "interrupted")}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def _integral(value: Any) -> Any:
    """JSON (and Struct) has one number type; options such as num_layers=8 must stay ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        # Through JSON first: numpy scalars and tuples become plain values; a diverged
        # child's NaN loss becomes null, which every JSON client can read.
        s.update(_finite(json.loads(json.dumps(data, default=str))))
    return s


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    return _integral(json_format.MessageToDict(s))


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def spec_to_message(spec: dict[str, Any]) -> pb.SearchSpec:
    msg = pb.SearchSpec()
    for name, value in spec.items():
        if name in _STRUCT_FIELDS:
            getattr(msg, name).CopyFrom(_struct(value))
        elif value is not None:
            setattr(msg, name, value)
    return msg


def spec_from_message(msg: pb.SearchSpec) -> dict[str, Any]:
    """Only the fields the client set: the rest take SearchSpec's defaults."""
    data: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None:
            if msg.HasField(f.name):
                data[f.name] = struct_to_dict(getattr(msg, f.name))
        elif msg.HasField(f.name):
            data[f.name] = getattr(msg, f.name)
    return data


def evaluation_to_message(record: dict[str, Any], space: str) -> pb.Evaluation:
    msg = pb.Evaluation(id=record["id"], index=record["index"],
                        architecture=pb.Architecture(space=space, arch=record["arch"]),
                        status=record.get("status", "ok"), reason=record.get("reason") or "",
                        metrics=_struct(record.get("metrics")))
    reward = record.get("reward")
    if reward is not None and not math.isnan(reward):
        msg.reward = reward
    if record.get("finished_at") is not None:
        msg.finished_at.CopyFrom(_time(record["finished_at"]))
    return msg


def search_to_message(record: SearchRecord, with_spec: bool = True) -> pb.Search:
    msg = pb.Search(id=record.id, state=STATE_TO_PB[record.state], run_dir=record.run_dir,
                    ray_namespace=record.ray_namespace, evaluations_done=record.evaluations_done,
                    evaluations_failed=record.evaluations_failed, error=record.error)
    if with_spec:
        msg.spec.CopyFrom(spec_to_message(record.spec))
    for name in ("created_at", "started_at", "finished_at"):
        if getattr(record, name) is not None:
            getattr(msg, name).CopyFrom(_time(getattr(record, name)))
    if record.best:
        msg.best.CopyFrom(evaluation_to_message(record.best, record.spec["space"]))
    return msg


def result_to_message(record: SearchRecord) -> pb.SearchResult:
    result, space, run = record.result, record.spec["space"], Path(record.run_dir)
    top = [evaluation_to_message({**t, "index": int(t["id"][1:])}, space) for t in result.get("top_k", [])]
    msg = pb.SearchResult(
        search_id=record.id, state=STATE_TO_PB[record.state], top_k=top, evaluations=result["evaluations"],
        failed=result["failed"], wall_time_s=result.get("wall_time_s", 0.0), run_dir=record.run_dir,
        artifacts={"result": str(run / RESULT), "evaluations": str(run / EVALUATIONS), "spec": str(run / SPEC),
                   "plot": str(run / PLOT), "checkpoints": str(run / "checkpoint")},
        summary=_struct(result))
    if top:
        msg.best.CopyFrom(top[0])
    return msg


def event_to_message(search_id: str, event: dict[str, Any], space: str) -> pb.SearchEvent:
    msg = pb.SearchEvent(search_id=search_id)
    msg.time.GetCurrentTime()
    kind = event["kind"]
    if kind == "state":
        msg.state_change.CopyFrom(pb.StateChange(state=STATE_TO_PB[event["state"]], error=event["error"]))
    elif kind in ("evaluation", "new_best"):
        getattr(msg, kind).CopyFrom(evaluation_to_message(event["record"], space))
    else:
        monitors = {k: v for k, v in event.items() if k not in ("kind", "run", "epoch")}
        msg.one_shot_epoch.CopyFrom(pb.OneShotEpoch(run=event.get("run", 0), epoch=event.get("epoch", 0),
                                                    monitors=_struct(monitors)))
    return msg


# -- the servicer ---------------------------------------------------------------------------

_CODES: tuple[tuple[type, grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (Busy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (NasError, grpc.StatusCode.INTERNAL),
)


def _status_of(exc: NasError) -> grpc.StatusCode:
    return next(code for kind, code in _CODES if isinstance(exc, kind))


def _domain_errors(method: Callable) -> Callable:
    """One place that turns the project's errors into status codes."""

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except NasError as exc:
            context.abort(_status_of(exc), str(exc))

    @functools.wraps(method)
    def stream(self, request, context):
        try:
            yield from method(self, request, context)
        except NasError as exc:
            context.abort(_status_of(exc), str(exc))

    return stream if inspect.isgeneratorfunction(method) else unary


def _state_filter(value: int) -> str | None:
    if value == pb.STATE_UNSPECIFIED:
        return None
    if value not in STATE_FROM_PB:
        raise ConfigError("state", f"unknown state {value}", sorted(pb.State.keys()))
    return STATE_FROM_PB[value]


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, manager: SearchManager):
        self.manager = manager

    @_domain_errors
    def SubmitSearch(self, request, context):
        return search_to_message(self.manager.submit(spec_from_message(request.spec), request.name))

    @_domain_errors
    def GetSearch(self, request, context):
        return search_to_message(self.manager.get(request.id))

    @_domain_errors
    def ListSearches(self, request, context):
        page, token = self.manager.list(request.page_size, request.page_token, _state_filter(request.state))
        return pb.ListSearchesResponse(searches=[search_to_message(r, with_spec=False) for r in page],
                                       next_page_token=token)

    @_domain_errors
    def WatchSearch(self, request, context):
        space = self.manager.get(request.id).spec["space"]
        for event in self.manager.watch(request.id, request.skip_evaluations, active=context.is_active):
            yield event_to_message(request.id, event, space)

    @_domain_errors
    def CancelSearch(self, request, context):
        return search_to_message(self.manager.cancel(request.id))

    @_domain_errors
    def ResumeSearch(self, request, context):
        return search_to_message(self.manager.resume(request.id))

    @_domain_errors
    def GetResult(self, request, context):
        return result_to_message(self.manager.result(request.id))


class TokenAuth(grpc.ServerInterceptor):
    """Every call but health checks needs `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(_HEALTH_PREFIX):
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        return _refusal(handler)


def _refusal(handler):
    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong token: send 'authorization: Bearer <token>' "
                      "(nas: --token-file FILE or NAS_TOKEN)")

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        deny, handler.request_deserializer if handler else None, handler.response_serializer if handler else None)


@dataclass(frozen=True)
class TLS:
    cert: str
    key: str

    def credentials(self) -> grpc.ServerCredentials:
        paths = {"tls_cert": self.cert, "tls_key": self.key}
        for name, path in paths.items():
            if not Path(path).is_file():
                raise ConfigError(name, f"file not found: {path}")
        return grpc.ssl_server_credentials([(Path(self.key).read_bytes(), Path(self.cert).read_bytes())])


@dataclass
class Server:
    server: grpc.Server
    port: int
    manager: SearchManager
    health: health.HealthServicer

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop answering calls; running searches go on (their runners are independent)."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.manager.close()


def serve(manager: SearchManager, token: str, *, host: str = "[::]", port: int = 0, tls: TLS | None = None,
          max_workers: int = 32) -> Server:
    """Start the gRPC server (port 0: any free port) and return it with its bound port."""
    if not token:
        raise ConfigError("token", "empty token", "a non-empty secret from --token-file or NAS_TOKEN")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[TokenAuth(token)],
        options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                 ("grpc.max_send_message_length", MAX_RESPONSE_BYTES)],
    )
    pb_grpc.add_SearchServiceServicer_to_server(SearchServicer(manager), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise ConfigError("port", f"cannot listen on {address} (in use?)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(server, bound, manager, health_servicer)


__all__ = ["Server", "SearchServicer", "TLS", "TokenAuth", "serve", "spec_from_message", "spec_to_message"]
