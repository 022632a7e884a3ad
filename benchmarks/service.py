"""The search service under load: watchers of a huge log, clients polling beside them, job
slots shared by quota, and how fast the client commands answer.

Watchers. The server runs in its own process (no Ray: this measures the service, not the
cluster) with one search, either live (`--log-evaluations 0`: a NAS-Bench-201 table search
run by a thread, each child throttled to ~24 ms) or held running over an evaluation log of N
lines written beforehand (`--log-evaluations N`, about 550 bytes a line: the issue's 1,000,000
make 550 MB). W watchers follow it from the start from a second process (grpc's asyncio client:
one thread for all of them), S more open a stream, take its first event and stop reading (a
stalled client), and this process runs C client threads calling GetSearch and one calling the
health check, each every `--poll-interval` seconds, for T seconds. The server's resident memory
is read from /proc: before the watchers, its largest ever (VmHWM: the watchers' start included),
and at the end; GetSearch and health latencies are measured first without the watchers, then
while they stream. Event lag (live search only) = when a watcher received an evaluation minus when
the search recorded it (`finished_at`; same machine clock).

Quota. A second server with a tokens file of K clients and `--max-jobs` slots, each client's
share split evenly (nas serve's default), runners held running; K threads submit N searches
between them at once. Reported: how many each client got, and the same without the per-client
share (every client may take every slot).

Client commands. `nas --help` and `nas status` (against the first server) in fresh processes,
the median of R runs.

    python benchmarks/service.py [--log-evaluations 1000000] [--watchers 200] [--stalled 20] [--clients 8]
                                 [--seconds 20] [--submits 200] [--submit-clients 4] [--cli-runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

TOKEN = "bench"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
LINE = ('{"arch": "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", '
        '"finished_at": %.6f, "id": "e%06d", "index": %d, "metrics": {"budget": 12, "continued_from_epoch": 0, '
        '"dataset": "cifar10", "flops": 49415872, "index": 9347, "params": 344346, "reward_split": "valid", '
        '"simulated_time_s": 102.75301838013029, "test_acc_12ep": 60.3, "test_acc_200ep": 80.29, '
        '"valid_acc_12ep": 53.642, "wall_time_s": 0.00012427399997250177}, "reason": null, "reward": %.6f, '
        '"seed": 2968811710, "status": "ok"}\n')


class HeldLauncher:
    """Runners that never end: a search held running (over a log written beforehand), or a slot held."""

    def nodes(self): return None
    def start(self, record, resume): return record.id
    def find(self, record): return None
    def status(self, handle): return "running", ""
    def stuck(self, spec): return None
    def cancel(self, handle): pass
    def kill(self, handle): pass
    def release(self, handle): pass
    def healthy(self): return True


def run_server(state_dir: str, held: bool, tokens_file: str | None, per_client: bool, ready, stop) -> None:
    from raynas.controller.api.servicer import serve
    from raynas.controller.service.access import Tokens
    from raynas.controller.service.manager import SearchManager, ThreadLauncher

    tokens = Tokens.load(tokens_file) if tokens_file else Tokens.single(TOKEN)
    manager = SearchManager(state_dir, HeldLauncher() if held else ThreadLauncher(),
                            max_jobs_per_client=tokens.share(4) if per_client else None)
    srv = serve(manager, tokens, host="127.0.0.1", port=0)
    ready.send(srv.port)
    stop.wait()
    srv.stop(grace=None)


def start_server(ctx, state_dir: str, held: bool, tokens_file: str | None = None, per_client: bool = True):
    receive, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    server = ctx.Process(target=run_server, args=(state_dir, held, tokens_file, per_client, send, stop), daemon=True)
    server.start()
    return server, stop, f"127.0.0.1:{receive.recv()}"


def write_log(run_dir: str, count: int) -> None:
    """`count` evaluation lines as the table evaluator writes them, in blocks of 10,000."""
    with open(Path(run_dir, "evaluations.jsonl"), "a") as f:
        for first in range(0, count, 10_000):
            block = range(first, min(count, first + 10_000))
            f.write("".join(LINE % (1.7e9 + i, i, i, (i % 1000) / 1000) for i in block))


def run_watchers(address: str, search_id: str, count: int, stalled: int, seconds: float, nice: int, live: bool,
                 started, out) -> None:
    """`count` WatchSearch streams read for `seconds`, `stalled` more take one event each and stop reading;
    sends back the lags, the events received and how many streams were served. At `nice`: the watchers
    stand for clients on other machines, whose decoding should not take the server's CPU here."""
    import grpc

    from raynas.protos.nas.v1 import search_pb2 as pb
    from raynas.protos.nas.v1 import search_pb2_grpc as pb_grpc

    os.nice(nice)

    async def main() -> tuple[list[float], int, int]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
        lags: list[float] = []
        served = received = 0
        first = asyncio.Event()
        stop = asyncio.Event()

        async def watch(stub, reads: bool) -> None:
            nonlocal served, received
            call = stub.WatchSearch(pb.WatchSearchRequest(id=search_id), metadata=METADATA)
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "state_change":
                    served += 1
                    if served == count + stalled:
                        first.set()
                    if not reads:
                        await stop.wait()  # holds the stream open without reading it
                        return
                elif kind == "evaluation":
                    received += 1
                    if live:  # a written log's times are not when its evaluations were recorded
                        lags.append(time.time() - event.evaluation.finished_at.ToNanoseconds() / 1e9)

        tasks = [asyncio.create_task(watch(pb_grpc.SearchServiceStub(channels[i % 4]), i < count))
                 for i in range(count + stalled)]
        await asyncio.wait_for(first.wait(), timeout=120)
        started.set()
        await asyncio.sleep(seconds)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        return lags, received, served

    out.send(asyncio.run(main()))


def cpu_seconds(pid: int) -> float:
    """User and system time the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS), or the most it ever had (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields[field].split()[0]) / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(calls: list[float]) -> dict[str, float] | None:
    if not calls:
        return None
    return {"calls": len(calls), "p50_ms": round(1e3 * statistics.median(calls), 1),
            "p99_ms": round(1e3 * percentile(calls, 0.99), 1), "max_ms": round(1e3 * max(calls), 1)}


def poll(call, until: float, interval: float, out: list[float]) -> None:
    """`call()` every `interval` seconds until `until`, timing each."""
    while time.time() < until:
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
        time.sleep(max(0.0, interval - (time.perf_counter() - t)))


def measure(address: str, search_id: str, args) -> dict:
    """GetSearch from C clients and the health check from one, each every `--poll-interval`, for
    `--seconds`: their latencies."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from raynas.controller.api.client import SearchClient

    end = time.time() + args.seconds
    get_calls: list[list[float]] = [[] for _ in range(args.clients)]
    health_calls: list[float] = []
    clients = [SearchClient(address, TOKEN) for _ in range(args.clients)]
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    threads = [threading.Thread(target=poll, args=(lambda c=c: c.get(search_id), end, args.poll_interval, out))
               for c, out in zip(clients, get_calls)]
    threads.append(threading.Thread(target=poll, args=(lambda: health.Check(health_pb2.HealthCheckRequest()), end,
                                                       args.poll_interval, health_calls)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    channel.close()
    return {"get_search": latency([x for xs in get_calls for x in xs]), "health": latency(health_calls)}


def watch_load(ctx, args) -> tuple[dict, str, mp.Process, object]:
    from raynas.controller.api.client import SearchClient

    held = args.log_evaluations > 0
    server, stop, address = start_server(ctx, tempfile.mkdtemp(), held)
    idle = memory_mib(server.pid)
    with SearchClient(address, TOKEN) as client:
        # Throttled: a table lookup is instant, and real children take far longer than the poll interval.
        search = client.submit({"space": "nb201", "evaluator": "table", "strategy": "evolution", "runtime": "local",
                                "evaluations": max(args.log_evaluations, 1_000_000),
                                "evaluator_options": {"sleep": 2e-4}})  # ~24 ms per child
        if held:
            t = time.time()
            write_log(search.run_dir, args.log_evaluations)
            written = time.time() - t
            log_mb = Path(search.run_dir, "evaluations.jsonl").stat().st_size / 1e6
            t = time.time()
            while client.get(search.id).evaluations_done < args.log_evaluations:  # the monitor counts them
                time.sleep(0.5)
            counted = time.time() - t
        else:
            time.sleep(1.0)
    before, counting = memory_mib(server.pid), memory_mib(server.pid, "VmHWM")

    quiet = measure(address, search.id, args)
    watched, results = ctx.Pipe(duplex=False)
    started = ctx.Event()
    watchers = ctx.Process(target=run_watchers, args=(address, search.id, args.watchers, args.stalled, args.seconds,
                                                      args.watcher_nice, not held, started, results), daemon=True)
    if args.watchers or args.stalled:
        watchers.start()
        if not started.wait(180):
            raise SystemExit(f"the server did not serve {args.watchers + args.stalled} watchers within 180 s")
    cpu = cpu_seconds(server.pid)
    loaded = measure(address, search.id, args)
    cpu = cpu_seconds(server.pid) - cpu
    lags, received, served = watched.recv() if args.watchers or args.stalled else ([], 0, 0)
    after, peak = memory_mib(server.pid), memory_mib(server.pid, "VmHWM")
    figures = {
        "search": (f"held running over a log of {args.log_evaluations:,} evaluations ({log_mb:.0f} MB, written in "
                   f"{written:.0f} s, counted by the monitor in {counted:.0f} s)") if held else "live",
        "clients": args.clients, "poll_interval_s": args.poll_interval, "watchers": args.watchers,
        "stalled_watchers": args.stalled, "watchers_served": served, "seconds": args.seconds,
        "events_received": received, "events_per_s": round(received / args.seconds),
        "server_cpu_s_while_streaming": round(cpu, 1),
        "without_watchers": {"get_search": quiet["get_search"], "health": quiet["health"]},
        "while_streaming": {"get_search": loaded["get_search"], "health": loaded["health"]},
        "watch_lag": latency(lags),
        "server_rss_mib": {"idle": round(idle), "peak_before_watchers": round(counting),
                           "before_watchers": round(before), "peak": round(peak), "end": round(after),
                           "growth": round(peak - before)},
    }
    return figures, address, server, stop


def quota(ctx, args) -> dict:
    """K clients submit N searches between them at once, with and without the per-client share."""
    from raynas.controller.api.client import RemoteError, SearchClient

    folder = Path(tempfile.mkdtemp())
    names = [f"client{k}" for k in range(args.submit_clients)]
    tokens = {name: os.urandom(20).hex() for name in names}
    (folder / "tokens").write_text("".join(f"{name} {token}\n" for name, token in tokens.items()))
    (folder / "tokens").chmod(0o600)
    figures = {}
    for per_client in (True, False):
        server, stop, address = start_server(ctx, str(folder / f"state-{per_client}"), True, str(folder / "tokens"),
                                             per_client)
        answers: Counter = Counter()
        # A flood: each client starts once the one before it had its first answer, and all go on together.
        turns = [threading.Event() for _ in names]
        turns[0].set()

        def submit(k: int, answers=answers, address=address, turns=turns) -> None:
            with SearchClient(address, tokens[names[k]]) as client:
                turns[k].wait()
                for _ in range(args.submits // args.submit_clients):
                    try:
                        client.submit({"space": "nb201", "evaluator": "table", "strategy": "random",
                                       "runtime": "local", "evaluations": 10})
                        answers[names[k], "OK"] += 1
                    except RemoteError as exc:
                        answers[names[k], exc.code.name] += 1
                    if k + 1 < len(turns):
                        turns[k + 1].set()

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        server.join(timeout=30)
        figures["with_per_client_share" if per_client else "without_share"] = {
            name: {code: n for (who, code), n in sorted(answers.items()) if who == name} for name in names}
    return {"submits": args.submits, "clients": args.submit_clients, "max_jobs": 4, **figures}


def client_commands(address: str, runs: int) -> dict:
    """`nas --help` and `nas status` in fresh processes: the median and the slowest of `runs` each."""
    nas = [sys.executable, "-m", "raynas.controller.cli"]
    env = {**os.environ, "NAS_TOKEN": TOKEN}
    figures = {}
    for name, argv in (("nas --help", ["--help"]), ("nas status", ["status", "--server", address])):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([*nas, *argv], check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - t)
        figures[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-evaluations", type=int, default=1_000_000,
                        help="watch a search held running over a log of this many evaluations (0: a live search)")
    parser.add_argument("--watchers", type=int, default=200, help="watchers reading as fast as they can")
    parser.add_argument("--stalled", type=int, default=20, help="watchers that take one event and stop reading")
    parser.add_argument("--watcher-nice", type=int, default=10, help="niceness of the watchers' process")
    parser.add_argument("--clients", type=int, default=8, help="client threads calling GetSearch")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds between one client's calls")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--submits", type=int, default=200, help="concurrent submits of the quota phase (0: none)")
    parser.add_argument("--submit-clients", type=int, default=4)
    parser.add_argument("--cli-runs", type=int, default=5, help="runs of each client command (0: none)")
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    load = os.getloadavg()
    watching, address, server, stop = watch_load(ctx, args)
    commands = client_commands(address, args.cli_runs) if args.cli_runs else None
    stop.set()
    server.join(timeout=30)
    figures = {
        "command": "python benchmarks/service.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load],
        "watch": watching, "quota": quota(ctx, args) if args.submits else None, "client_commands": commands,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
