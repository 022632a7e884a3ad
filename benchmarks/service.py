"""The search service under a bounded local load: GetSearch latency and throughput,
WatchSearch event lag, and the server's memory, while a search runs.

The server runs in its own process (runners as threads, no Ray: this measures the
service, not the cluster) with one NAS-Bench-201 table search. W watchers follow it from
a second process (grpc's asyncio client: one thread for all of them, so the watchers'
own cost does not land on the callers), and this process runs C client threads calling
GetSearch in a loop, for T seconds. Event lag = the moment a watcher receives an
evaluation minus the moment the search recorded it (the log's `finished_at`; same
machine clock). The server's resident memory is read from /proc before the load, after
it, and at its peak (VmHWM).

    python benchmarks/service.py [--clients 8] [--watchers 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shlex
import statistics
import sys
import tempfile
import threading
import time

TOKEN = "bench"
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def run_server(state_dir: str, ready, stop) -> None:
    from raynas.controller.api.servicer import serve
    from raynas.controller.service.manager import SearchManager, ThreadLauncher

    srv = serve(SearchManager(state_dir, ThreadLauncher()), TOKEN, host="127.0.0.1", port=0)
    ready.send(srv.port)
    stop.wait()
    srv.stop(grace=None)


def run_watchers(address: str, search_id: str, count: int, seconds: float, started, out) -> None:
    """`count` WatchSearch streams for `seconds`; sends back the lags and how many streams were served."""
    import grpc

    from raynas.protos.nas.v1 import search_pb2 as pb
    from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

    async def main() -> tuple[list[float], int]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
        lags: list[float] = []
        served = 0
        first = asyncio.Event()

        async def watch(stub) -> None:
            nonlocal served
            async for event in stub.WatchSearch(pb.WatchSearchRequest(id=search_id), metadata=METADATA):
                kind = event.WhichOneof("event")
                if kind == "state_change":
                    served += 1
                    if served == count:
                        first.set()
                elif kind == "evaluation":
                    lags.append(time.time() - event.evaluation.finished_at.ToNanoseconds() / 1e9)

        tasks = [asyncio.create_task(watch(pb_grpc.SearchServiceStub(channels[i % 4]))) for i in range(count)]
        await asyncio.wait_for(first.wait(), timeout=60)
        started.set()
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        return lags, served

    out.send(asyncio.run(main()))


def memory_mib(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--evaluations", type=int, default=1_000_000, help="search budget (it is cancelled at the end)")
    args = parser.parse_args(argv)

    from raynas.controller.api.client import SearchClient

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    server = ctx.Process(target=run_server, args=(tempfile.mkdtemp(), send, stop), daemon=True)
    server.start()
    address = f"127.0.0.1:{receive.recv()}"
    idle = memory_mib(server.pid)
    with SearchClient(address, TOKEN) as client:
        # Throttled: a table lookup is instant, and real children take far longer than the poll interval.
        search = client.submit({"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local",
                                "evaluations": args.evaluations,
                                "evaluator_options": {"sleep": 2e-4}})  # ~24 ms per child
    time.sleep(1.0)
    before = memory_mib(server.pid)

    watched, results = ctx.Pipe(duplex=False)
    started = ctx.Event()
    watchers = ctx.Process(target=run_watchers, args=(address, search.id, args.watchers, args.seconds, started,
                                                      results), daemon=True)
    if args.watchers:
        watchers.start()
        if not started.wait(90):
            raise SystemExit(f"the server did not serve {args.watchers} watchers within 90 s")
    end = time.time() + args.seconds
    latencies: list[list[float]] = [[] for _ in range(args.clients)]

    def poll(out: list[float]) -> None:
        with SearchClient(address, TOKEN) as c:
            while time.time() < end:
                t = time.perf_counter()
                c.get(search.id)
                out.append(time.perf_counter() - t)

    threads = [threading.Thread(target=poll, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    during = memory_mib(server.pid)
    lag, served = watched.recv() if args.watchers else ([], 0)
    with SearchClient(address, TOKEN) as client:
        client.cancel(search.id)
        done = client.get(search.id).evaluations_done
    time.sleep(1.0)
    after = memory_mib(server.pid)
    stop.set()
    server.join(timeout=10)

    calls = [x for xs in latencies for x in xs]
    figures = {
        "command": "python benchmarks/service.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "clients": args.clients, "watchers": args.watchers, "watchers_served": served, "seconds": args.seconds,
        "evaluations_recorded": done,
        "get_search": {"calls": len(calls), "calls_per_s": len(calls) / args.seconds,
                       "p50_ms": 1e3 * statistics.median(calls), "p99_ms": 1e3 * percentile(calls, 0.99)},
        "watch_lag": ({"events": len(lag), "p50_ms": 1e3 * statistics.median(lag),
                       "p99_ms": 1e3 * percentile(lag, 0.99), "max_ms": 1e3 * max(lag)} if lag else None),
        "server_rss_mib": {"idle": round(idle["VmRSS"]), "before_load": round(before["VmRSS"]),
                           "end_of_load": round(during["VmRSS"]), "after_load": round(after["VmRSS"]),
                           "peak": round(after["VmHWM"])},
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
