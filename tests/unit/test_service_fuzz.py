"""SubmitSearch against a few thousand random and mutated requests, on loopback: every one is
answered OK or with a documented status code (docs/service.md), the server's memory stays
within MEMORY_BOUND of where it started, and health checks and GetSearch still answer
afterwards. Bounded in count (REQUESTS) and time (SECONDS); the launcher starts nothing, so
accepted searches cost a registry row and a folder."""

import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raynas.controller.api.servicer import serve, spec_to_message
from raynas.controller.service.manager import SearchManager
from raynas.controller.service.registry import RUNNING
from raynas.protos.nas.v1 import search_pb2 as pb

TOKEN = "fuzz-token"
REQUESTS, SECONDS = 3000, 240
MEMORY_BOUND = 256 << 20
#: What SubmitSearch may answer an authenticated client (docs/service.md).
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}

VALID = [
    {"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local", "evaluations": 50},
    {"space": "macro", "strategy": "rl", "evaluations": 8, "controllers": 2, "children": 2,
     "space_options": {"num_layers": 4}, "evaluator_options": {"epochs": 1, "channels": 8}},
    {"space": "darts", "strategy": "random", "dataset": "digits", "evaluator_options": {"layers": 2, "batch_size": 32}},
    {"space": "nb201", "strategy": "darts", "evaluator": "table", "proxy_dataset": True,
     "strategy_options": {"epochs": 2, "channels": 4}},
    {"space": "rnn", "strategy": "evolution", "dataset": "ptb", "space_options": {"steps": 4}},
]
FIELDS = {f.name: f for f in pb.SearchSpec.DESCRIPTOR.fields}


class IdleLauncher:
    """Accepts every search and runs none of them."""

    def nodes(self): return None
    def start(self, record, resume): return record.id
    def find(self, record): return None
    def status(self, handle): return RUNNING, ""
    def stuck(self, spec): return None
    def cancel(self, handle): pass
    def kill(self, handle): pass
    def release(self, handle): pass
    def healthy(self): return True


def _number(rng: random.Random) -> float:
    return rng.choice([0, 1, -1, 2, 7, 64, 65, 1000, 10**6, 2**31 - 1, -2**31, 2**53, 1e308, -1e308, 0.5, -0.0,
                       math.nan, math.inf, -math.inf, rng.uniform(-1e6, 1e6)])


def _text(rng: random.Random) -> str:
    return rng.choice(["", "nb201", "macro", "rl", "train", "table", "ray", "local", "digits", "cifar10", "none",
                       "../../etc/passwd", "/etc", "a\0b", "é" * 300, "x" * rng.choice([1, 65, 257, 5000, 100_000]),
                       "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(1, 40)))])


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return _number(rng)
    if kind == 1:
        return _text(rng)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(["epochs", "channels", "layers", "num_layers", "max_layers", "steps", "batch_size"])
    if kind == 4:
        return [_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 17, 200] if depth == 0 else [0, 2, 17]))]
    return _options(rng, depth + 1)


def _options(rng: random.Random, depth: int = 0) -> dict:
    names = ["epochs", "channels", "layers", "batch_size", "num_layers", "max_layers", "steps", "lr", "dataset",
             "sleep", "population_size", "sample_size", "max_train", "val_fraction", "augment", "device", "x"]
    count = rng.choice([0, 1, 2, 3, 40])
    return {rng.choice(names) if rng.random() < 0.8 else _text(rng)[:100]: _value(rng, depth) for _ in range(count)}


def _set(msg: pb.SearchSpec, name: str, value) -> None:
    """Set one field with any value its wire type can carry (wrong types are simply skipped)."""
    field = FIELDS[name]
    try:
        if field.message_type is not None:
            getattr(msg, name).update(value if isinstance(value, dict) else {"v": value})
        elif field.type == field.TYPE_STRING:
            setattr(msg, name, value if isinstance(value, str) else str(value))
        elif field.type in (field.TYPE_INT32, field.TYPE_INT64):
            setattr(msg, name, int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0)
        else:
            setattr(msg, name, float(value) if isinstance(value, (int, float)) else 0.0)
    except (ValueError, TypeError, OverflowError):
        pass  # beyond what the wire type can carry: the client library refuses it, not the server


def random_request(rng: random.Random) -> bytes:
    """A random spec, a mutated valid one, or the bytes of a valid request mutated."""
    kind = rng.randrange(3)
    if kind == 0:
        msg = pb.SearchSpec()
        for name in rng.sample(sorted(FIELDS), rng.randrange(1, 8)):
            _set(msg, name, _options(rng) if FIELDS[name].message_type is not None else
                 rng.choice([_number(rng), _text(rng)]))
        return pb.SubmitSearchRequest(spec=msg, name=rng.choice(["", "ok", _text(rng)])).SerializeToString()
    spec = dict(rng.choice(VALID))
    msg = spec_to_message(spec)
    if kind == 1:
        for name in rng.sample(sorted(FIELDS), rng.randrange(1, 4)):
            _set(msg, name, _options(rng) if FIELDS[name].message_type is not None else
                 rng.choice([_number(rng), _text(rng)]))
        return pb.SubmitSearchRequest(spec=msg).SerializeToString()
    raw = bytearray(pb.SubmitSearchRequest(spec=msg, name="bytes").SerializeToString())
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(raw))
        action = rng.randrange(3)
        if action == 0:
            raw[at] = rng.randrange(256)
        elif action == 1:
            raw.insert(at, rng.randrange(256))
        elif len(raw) > 1:
            del raw[at]
    return bytes(raw)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_submit_search_fuzz(tmp_path):
    manager = SearchManager(tmp_path / "state", IdleLauncher(), max_jobs=REQUESTS, poll_s=0.2)
    server = serve(manager, TOKEN, host="127.0.0.1", port=0)
    address, meta = f"127.0.0.1:{server.port}", (("authorization", f"Bearer {TOKEN}"),)
    rng = random.Random(11)
    requests = [random_request(rng) for _ in range(REQUESTS)]
    baseline, peak, sampling = _rss(), [0], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers: list[tuple[bytes, grpc.StatusCode, str]] = []
    deadline = time.monotonic() + SECONDS
    try:
        with grpc.insecure_channel(address) as channel:
            submit = channel.unary_unary("/nas.v1.SearchService/SubmitSearch")  # raw bytes in and out

            def send(raw: bytes) -> None:
                if time.monotonic() > deadline:
                    return
                try:
                    submit(raw, metadata=meta, timeout=60)
                    answers.append((raw, grpc.StatusCode.OK, ""))
                except grpc.RpcError as exc:
                    answers.append((raw, exc.code(), exc.details() or ""))

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(send, requests))
            sampling.set()
            sampler.join()

            assert len(answers) >= REQUESTS // 2, f"only {len(answers)} requests within {SECONDS} s"
            for raw, code, details in answers:
                assert code in DOCUMENTED, (code, details, raw[:200])
                if not _decodes(raw):
                    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details
            codes = {code for _, code, _ in answers}
            assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes  # both paths were exercised
            assert peak[0] - baseline < MEMORY_BOUND, f"{(peak[0] - baseline) >> 20} MiB over the baseline"

            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            accepted = manager.registry.list(1)[0]
            get = channel.unary_unary("/nas.v1.SearchService/GetSearch",
                                      request_serializer=pb.GetSearchRequest.SerializeToString,
                                      response_deserializer=pb.Search.FromString)
            assert get(pb.GetSearchRequest(id=accepted.id), metadata=meta, timeout=10).id == accepted.id
    finally:
        sampling.set()
        server.stop(grace=None)
    print(f"{len(answers)} requests; codes {sorted(c.name for c in codes)}; peak RSS "
          f"{(peak[0] - baseline) >> 20} MiB over {baseline >> 20} MiB", file=os.sys.stderr)


def _decodes(raw: bytes) -> bool:
    try:
        pb.SubmitSearchRequest.FromString(raw)
        return True
    except Exception:  # noqa: BLE001 - any decoding error means the same: not a message
        return False
