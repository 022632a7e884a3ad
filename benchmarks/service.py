"""The search service under a bounded local load: GetSearch latency and throughput,
and WatchSearch event lag, while a search runs.

The server runs in its own process (runners as threads, no Ray: this measures
the service, not the cluster) with one NAS-Bench-201 table search; this process
runs C client threads calling GetSearch in a loop and W watchers, for T seconds.
Event lag = the moment a watcher receives an evaluation minus the moment the
search recorded it (the log's `finished_at`; same machine clock).

    python benchmarks/service.py [--clients 8] [--watchers 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import statistics
import sys
import tempfile
import threading
import time

TOKEN = "bench"


def run_server(state_dir: str, ready, stop) -> None:
    from raynas.controller.api.servicer import serve
    from raynas.controller.service.manager import SearchManager, ThreadLauncher

    srv = serve(SearchManager(state_dir, ThreadLauncher()), TOKEN, host="127.0.0.1", port=0)
    ready.send(srv.port)
    stop.wait()
    srv.stop(grace=None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--watchers", type=int, default=4)
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
    with SearchClient(address, TOKEN) as client:
        # Throttled: a table lookup is instant, and real children take far longer than the poll interval.
        search = client.submit({"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local",
                                "evaluations": args.evaluations, "table": {"sleep": 2e-4}})  # ~24 ms per child
    end = time.time() + args.seconds
    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    lags: list[list[float]] = [[] for _ in range(args.watchers)]

    def poll(out: list[float]) -> None:
        with SearchClient(address, TOKEN) as c:
            while time.time() < end:
                t = time.perf_counter()
                c.get(search.id)
                out.append(time.perf_counter() - t)

    def watch(out: list[float]) -> None:
        with SearchClient(address, TOKEN) as c:
            for event in c.watch(search.id):
                if event.WhichOneof("event") == "evaluation":
                    out.append(time.time() - event.evaluation.finished_at.ToNanoseconds() / 1e9)
                if time.time() >= end:
                    break

    threads = [threading.Thread(target=poll, args=(out,)) for out in latencies]
    threads += [threading.Thread(target=watch, args=(out,)) for out in lags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with SearchClient(address, TOKEN) as client:
        client.cancel(search.id)
        done = client.get(search.id).evaluations_done
    stop.set()
    server.join(timeout=10)

    calls = [x for xs in latencies for x in xs]
    lag = [x for xs in lags for x in xs]
    figures = {
        "command": "python benchmarks/service.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "clients": args.clients, "watchers": args.watchers, "seconds": args.seconds,
        "evaluations_recorded": done,
        "get_search": {"calls_per_s": len(calls) / args.seconds, "p50_ms": 1e3 * statistics.median(calls),
                       "p99_ms": 1e3 * percentile(calls, 0.99)},
        "watch_lag": {"events": len(lag), "p50_ms": 1e3 * statistics.median(lag), "p99_ms": 1e3 * percentile(lag, 0.99),
                      "max_ms": 1e3 * max(lag)},
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
