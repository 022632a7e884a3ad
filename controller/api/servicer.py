"""The gRPC edge of the search service: translates `nas.v1` messages to and from
`SearchManager` calls, tells callers apart by their bearer token, and maps the project's
errors to status codes. No search logic lives here.

The server is grpc's asyncio server: a WatchSearch stream is a coroutine waiting on its
search's files, not a thread. Unary manager calls (SQLite, validation) run in a small thread
pool, and watchers' log reads in a pool of their own, so that no number of watchers can hold the
threads that GetSearch, SubmitSearch and the others need (health checks run on the event loop
itself). A watcher sends what one read gave before it reads again, so a client that stops
reading holds one chunk of its search's log in the server, not the log. Any error that is not one
of the project's is logged with an incident number and answered INTERNAL with that number only,
never with its text.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raynas.common import Busy, ConfigError, NasError, NotFound, NotReady
from raynas.controller.api.messages import (
    STATE_FROM_PB,
    STATE_TO_PB,
    evaluation_to_message,
    event_to_message,
    result_to_message,
    search_to_message,
    spec_from_message,
    spec_to_message,
    struct_to_dict,
)
from raynas.controller.cluster import metrics
from raynas.controller.service.access import Client, Tokens, private_file
from raynas.controller.service.limits import MAX_WATCHERS
from raynas.controller.service.manager import SearchManager
from raynas.controller.service.registry import SearchRecord, bounded_error
from raynas.protos.nas.v1 import search_pb2 as pb
from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: Requests are specs and ids; anything near this size is a mistake, not a search.
MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 16 << 20
#: ListSearches pages stay under this many bytes (clients receive 4 MiB by default).
MAX_PAGE_BYTES = 1 << 20
#: Threads that run unary manager calls (the event loop never blocks on SQLite or files).
CALL_THREADS = 8
#: Threads that read watchers' logs: their reads share a parse cache, so few threads keep up, and
#: what they cost the other calls is bounded by them.
READ_THREADS = 2
#: Evaluation messages kept for the watchers of the same searches.
EVALUATION_CACHE = 4096
#: How often the watchers' pace is set; the event loop's lag and the share of a CPU the server may
#: use at most while watchers send (what keeps unary calls and health checks answering promptly).
PACE_TICK_S = 0.01
PACE_LAG_S = 0.002
PACE_CPU_SHARE = 0.5
_HEALTH_PREFIX = f"/{HEALTH_SERVICE_NAME}/"

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


def _incident(method: str, exc: BaseException) -> str:
    """Log an unexpected error in full and return what the client may see of it."""
    incident = secrets.token_hex(4)
    log.error("%s failed (incident %s)", method, incident, exc_info=exc)
    return f"internal error in {method} (incident {incident} in the server's log)"


def _handled(method: Callable) -> Callable:
    """One place that turns errors into status codes: the project's own with their message,
    anything else as INTERNAL with an incident number (its text may hold internals)."""

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except NasError as exc:
            # Messages may quote the request (an unknown name, say): cut, however large it was.
            await context.abort(_status_of(exc), bounded_error(str(exc)))
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            await context.abort(grpc.StatusCode.INTERNAL, _incident(method.__name__, exc))

    @functools.wraps(method)
    async def stream(self, request, context):
        try:
            async for message in method(self, request, context):
                yield message
        except NasError as exc:
            await context.abort(_status_of(exc), bounded_error(str(exc)))
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            await context.abort(grpc.StatusCode.INTERNAL, _incident(method.__name__, exc))

    return stream if inspect.isasyncgenfunction(method) else unary


def _state_filter(value: int) -> str | None:
    if value == pb.STATE_UNSPECIFIED:
        return None
    if value not in STATE_FROM_PB:
        raise ConfigError("state", f"unknown state {value}", sorted(pb.State.keys()))
    return STATE_FROM_PB[value]


def _authorization(metadata) -> str:
    values = [value for key, value in metadata or () if key == "authorization"]
    # Two authorization headers are a confused or hostile client: neither is believed.
    return values[0] if len(values) == 1 and isinstance(values[0], str) else ""


class Pacer:
    """Lets watchers send only as many messages as the server can take beside everything else.

    Every message a watcher sends costs the event loop that also answers unary calls and health
    checks, and the GIL their threads need; a few hundred watchers catching up on a long log would
    keep both busy and every other call waiting. So each message waits for a token, and every tick
    (PACE_TICK_S) hands out more while the loop's lag stays under PACE_LAG_S and the process used
    less than PACE_CPU_SHARE of a CPU in the tick, half as many when not (additive increase,
    multiplicative decrease, like TCP's congestion window). Tokens go to waiting watchers in the
    order they asked, so all of them progress. A watcher whose client stopped reading waits in its
    write, holding no token."""

    MIN, MAX, STEP = 8, 100_000, 16

    def __init__(self):
        self.per_tick = self.MIN
        self._tokens = 0
        self._waiting: deque[asyncio.Future] = deque()

    async def take(self) -> None:
        if self._tokens and not self._waiting:
            self._tokens -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        await turn

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start, cpu = loop.time(), time.process_time()
            await asyncio.sleep(PACE_TICK_S)
            took = loop.time() - start
            late = took - PACE_TICK_S > PACE_LAG_S or time.process_time() - cpu > PACE_CPU_SHARE * took
            self.per_tick = max(self.MIN, self.per_tick // 2) if late else min(self.MAX, self.per_tick + self.STEP)
            self._tokens = self.per_tick  # unused tokens do not pile up into a burst
            while self._tokens and self._waiting:
                turn = self._waiting.popleft()
                if not turn.done():  # a watcher that went away meanwhile
                    turn.set_result(None)
                    self._tokens -= 1


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, manager: SearchManager, tokens: Tokens, *, max_watchers: int = MAX_WATCHERS,
                 max_watchers_per_client: int | None = None):
        if max_watchers_per_client is not None and max_watchers_per_client < 1:
            raise ConfigError("max_watchers_per_client", f"must be at least 1, got {max_watchers_per_client}")
        self.manager = manager
        self.tokens = tokens
        self.max_watchers = max_watchers
        self.max_watchers_per_client = min(max_watchers, max_watchers_per_client or max_watchers)
        self.watchers = 0
        self._watching: dict[str, int] = {}
        #: Streams open per search (by its namespace), for the `nas_watchers` gauge.
        self._watched: dict[str, int] = {}
        self._calls = futures.ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="nas-call")
        self._reads = futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="nas-watch")
        self._cache_lock = threading.Lock()
        self._evaluations: OrderedDict[tuple, pb.Evaluation] = OrderedDict()
        self.pacer = Pacer()

    def close(self) -> None:
        for pool in (self._reads, self._calls):
            pool.shutdown(wait=True, cancel_futures=True)

    def _evaluation(self, search_id: str, record: dict[str, Any], space: str) -> pb.Evaluation:
        """The message of one logged evaluation, built once for all the watchers of its search that
        send it (a logged evaluation never changes; the conversion is most of a watcher's cost).
        Evaluation ids and times repeat across searches: the search's id is part of the key."""
        key = (search_id, record.get("id"), record.get("finished_at"))
        with self._cache_lock:
            msg = self._evaluations.get(key)
        if msg is None:
            msg = evaluation_to_message(record, space)
            with self._cache_lock:
                self._evaluations[key] = msg
                while len(self._evaluations) > EVALUATION_CACHE:
                    self._evaluations.popitem(last=False)
        return msg

    def _events(self, watch) -> list[pb.SearchEvent]:
        evaluation = functools.partial(self._evaluation, watch.id)
        return [event_to_message(watch.id, e, watch.space, evaluation) for e in watch.poll()]

    async def _run(self, fn: Callable, *args: Any, pool: futures.Executor | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool or self._calls, functools.partial(fn, *args))

    def _caller(self, context) -> Client:
        client = self.tokens.identify(_authorization(context.invocation_metadata()))
        if client is None:  # TokenAuth let the call through, so only a bug gets here
            raise NasError("the caller has no identity")
        return client

    @_handled
    async def SubmitSearch(self, request, context):
        caller = self._caller(context)
        spec = spec_from_message(request.spec)
        # The message holds only the fields the client set: `given`.
        return search_to_message(await self._run(self.manager.submit, spec, request.name, caller, list(spec)))

    @_handled
    async def GetSearch(self, request, context):
        return search_to_message(await self._run(self.manager.get, request.id, self._caller(context)))

    @_handled
    async def ListSearches(self, request, context):
        def size(record: SearchRecord) -> int:
            return search_to_message(record, with_spec=False).ByteSize()

        page, token = await self._run(
            functools.partial(self.manager.list, request.page_size, request.page_token, _state_filter(request.state),
                              self._caller(context), size_of=size, max_bytes=MAX_PAGE_BYTES))
        return pb.ListSearchesResponse(searches=[search_to_message(r, with_spec=False) for r in page],
                                       next_page_token=token)

    @_handled
    async def WatchSearch(self, request, context):
        caller = self._caller(context)
        if self.watchers >= self.max_watchers:
            raise Busy(f"the service already streams to its maximum of {self.max_watchers} watchers; retry later")
        if self._watching.get(caller.name, 0) >= self.max_watchers_per_client:
            raise Busy(f"you already have {self.max_watchers_per_client} watch streams open, your share of the "
                       f"service's {self.max_watchers}; close one")
        self.watchers += 1
        self._watching[caller.name] = self._watching.get(caller.name, 0) + 1
        watch = None
        try:
            watch = await self._run(self.manager.watch, request.id, request.skip_evaluations, caller)
            self._count_watch(watch.namespace, 1)
            while not self.manager.closed:
                messages = await self._run(self._events, watch, pool=self._reads) if watch.pending() else []
                # Each send waits for the client to take it: a stalled client holds this chunk only.
                for message in messages:
                    await self.pacer.take()
                    yield message
                if watch.done:
                    return
                if not watch.behind:
                    await asyncio.sleep(self.manager.watch_poll_s)
        finally:
            self.watchers -= 1
            self._watching[caller.name] -= 1
            if watch is not None:
                self._count_watch(watch.namespace, -1)

    def _count_watch(self, namespace: str, change: int) -> None:
        count = self._watched.get(namespace, 0) + change
        if count:
            self._watched[namespace] = count
        else:
            self._watched.pop(namespace, None)
        metrics.report_watchers(namespace, count)

    @_handled
    async def CancelSearch(self, request, context):
        return search_to_message(await self._run(self.manager.cancel, request.id, self._caller(context)))

    @_handled
    async def ResumeSearch(self, request, context):
        return search_to_message(await self._run(self.manager.resume, request.id, self._caller(context)))

    @_handled
    async def DeleteSearch(self, request, context):
        return search_to_message(await self._run(self.manager.delete, request.id, self._caller(context)))

    @_handled
    async def GetResult(self, request, context):
        return result_to_message(await self._run(self.manager.result, request.id, self._caller(context)))


class TokenAuth(grpc.aio.ServerInterceptor):
    """Every call but health checks needs `authorization: Bearer <token>` with a known token."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_HEALTH_PREFIX):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None or self.tokens.identify(_authorization(details.invocation_metadata)) is not None:
            return handler
        return _refusal(handler)


class SafeDecoding(grpc.aio.ServerInterceptor):
    """Requests whose bytes are not a message of their type are answered INVALID_ARGUMENT;
    left to grpc, they would be UNKNOWN with the parser's exception text."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        return _decoding_guarded(handler)


_UNDECODABLE = object()


def _decoding_guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer

    def safe_decode(raw: bytes):
        try:
            return decode(raw) if decode else raw
        except Exception:  # noqa: BLE001 - whatever the parser raises, the bytes are not a request
            return _UNDECODABLE

    async def refuse(context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message of its type")

    if not handler.response_streaming:
        async def unary(request, context):
            if request is _UNDECODABLE:
                await refuse(context)
            return await handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=safe_decode,
                                                   response_serializer=handler.response_serializer)

    behavior = handler.unary_stream

    async def stream(request, context):
        if request is _UNDECODABLE:
            await refuse(context)
        if inspect.isasyncgenfunction(behavior):
            async for message in behavior(request, context):
                yield message
        else:  # a streaming handler that writes through context.write (the health service's Watch)
            await behavior(request, context)

    return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=safe_decode,
                                                response_serializer=handler.response_serializer)


_DENIED = ("missing or wrong token: send 'authorization: Bearer <token>' "
           "(nas: --token-file FILE or NAS_TOKEN)")


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)
        yield  # unreachable: makes this a streaming handler

    kind = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    make = kind[bool(handler.request_streaming), bool(handler.response_streaming)]
    return make(deny_stream if handler.response_streaming else deny,
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


@dataclass(frozen=True)
class TLS:
    cert: str
    key: str

    def credentials(self) -> grpc.ServerCredentials:
        paths = {"tls_cert": self.cert, "tls_key": self.key}
        for name, path in paths.items():
            if not Path(path).is_file():
                raise ConfigError(name, f"file not found: {path}")
        private_file("tls_key", Path(self.key))
        return grpc.ssl_server_credentials([(Path(self.key).read_bytes(), Path(self.cert).read_bytes())])


class Server:
    """The running server: its event loop runs in a thread of its own, so callers (the
    CLI, tests, benchmarks) stay plain blocking code."""

    def __init__(self, manager: SearchManager, tokens: Tokens, address: str, tls: TLS | None, max_watchers: int,
                 max_watchers_per_client: int | None, health_poll_s: float):
        self.manager = manager
        self.servicer = SearchServicer(manager, tokens, max_watchers=max_watchers,
                                       max_watchers_per_client=max_watchers_per_client)
        self.health_poll_s = health_poll_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(tokens, address, tls), self._loop).result()
        except BaseException:
            self._close_loop()
            raise
        # What the process holds by now (torch and the registries, imported by the manager) lives as long
        # as it does: kept out of the collector's full passes, which otherwise walk it all and stall every
        # call for ~100 ms at a time while watchers allocate their messages.
        gc.freeze()

    async def _start(self, tokens: Tokens, address: str, tls: TLS | None) -> int:
        self._server = grpc.aio.server(
            interceptors=[TokenAuth(tokens), SafeDecoding()],
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                     ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                     # Refuse a port another server already holds instead of sharing it with it.
                     ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_SearchServiceServicer_to_server(self.servicer, self._server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME),
                                            self._server)
        try:
            bound = (self._server.add_secure_port(address, tls.credentials()) if tls
                     else self._server.add_insecure_port(address))
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise ConfigError("port", f"cannot listen on {address} (in use?)")
        await self._server.start()
        self._tasks = [asyncio.get_running_loop().create_task(task) for task in (self._follow_health(),
                                                                                  self.servicer.pacer.run())]
        return bound

    async def _follow_health(self) -> None:
        """Health follows the manager: NOT_SERVING while it has lost its cluster."""
        shown = None
        while True:
            status = (health_pb2.HealthCheckResponse.SERVING if self.manager.healthy
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            if status != shown:
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, status)
                shown = status
            await asyncio.sleep(self.health_poll_s)

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop answering calls; running searches go on (their runners are independent)."""
        async def shutdown():
            for task in self._tasks:
                task.cancel()
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result()
        self._close_loop()
        self.servicer.close()
        self.manager.close()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def serve(manager: SearchManager, tokens: Tokens | str, *, host: str = "127.0.0.1", port: int = 0,
          tls: TLS | None = None, max_watchers: int = MAX_WATCHERS, max_watchers_per_client: int | None = None,
          health_poll_s: float = 0.5) -> Server:
    """Start the gRPC server (port 0: any free port) and return it with its bound port.
    `tokens` is the clients' tokens, or one token (single-token mode); each client may hold
    `max_watchers_per_client` of the `max_watchers` streams (default: all of them)."""
    if isinstance(tokens, str):
        tokens = Tokens.single(tokens)
    return Server(manager, tokens, f"{host}:{port}", tls, max_watchers, max_watchers_per_client, health_poll_s)


__all__ = ["STATE_FROM_PB", "STATE_TO_PB", "Server", "SearchServicer", "TLS", "TokenAuth", "event_to_message", "serve",
           "spec_from_message", "spec_to_message", "struct_to_dict"]
