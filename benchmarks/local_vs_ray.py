"""The same child trained by the local runtime and by the Ray runtime: what a Ray worker costs it.

Each round runs `nas search --runtime local` and `nas search --runtime ray` (embedded single-node
Ray, one worker) with the same space, seed, dataset and training settings and one evaluation, so
both train the same child (same architecture, same child seed: checked) from the same start, and
reads its training time from the run's records (evaluations.jsonl: `metrics.train_time_s`, the
epochs' loops; `wall_time_s`, the whole evaluation with building, FLOP count and validation).
Which runtime goes first alternates from round to round, so drifting machine load hits both
alike. Reported per runtime: median, min and max over the rounds and the spread ((max - min) /
median); and the ratio of the medians (ray / local).

The same is then repeated with a CPU-bound neighbour (`python -c "while True: pass"`) running,
unpinned or pinned to one core (`--neighbour-cpu`): how each runtime's child holds up beside a
busy process. The machine's load average before and after each load is printed with the figures.

    python benchmarks/local_vs_ray.py [--repeats N --epochs E --channels C --layers L --cpus-per-child P]
        [--loads quiet,busy] [--neighbour-cpu CPU]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIMES = ("local", "ray")
LOADS = ("quiet", "busy")


def search(runtime: str, args: argparse.Namespace, out: Path) -> dict:
    """One `nas search` of one evaluation on `runtime`; its record's arch, seed and times."""
    command = [sys.executable, "-m", "raynas.controller.cli", "search", "--space", args.space, "--strategy", "random",
               "--dataset", args.dataset, "--evaluations", "1", "--seed", str(args.seed), "--runtime", runtime,
               "--epochs", str(args.epochs), "--channels", str(args.channels), "--layers", str(args.layers),
               "--cpus-per-child", str(args.cpus_per_child), "--out", str(out), "--quiet", "--json"]
    if runtime == "ray":
        command += ["--workers", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"local_vs_ray: {shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["status"] == "ok")
    m = record["metrics"]
    return {"arch": record["arch"], "seed": record["seed"], "train_time_s": m["train_time_s"],
            "wall_time_s": m["wall_time_s"], "search_wall_s": wall}


@contextlib.contextmanager
def neighbour(cpu: int | None):
    """A CPU-bound process beside the block, pinned to `cpu` where given; ended by its own id."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)
    try:
        yield
    finally:
        process.kill()
        process.wait()


def summary(values: list[float]) -> dict:
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds per load (default 5)")
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seed", type=int, default=0, help="the search's seed: picks the child and its seed")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--cpus-per-child", type=float, default=1,
                        help="the child's CPU share: its torch threads in both runtimes (default 1)")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="quiet (nothing else started), busy (a CPU-bound neighbour): default both")
    parser.add_argument("--neighbour-cpu", type=int, help="pin the neighbour to this core (default: unpinned)")
    args = parser.parse_args(argv)
    loads = args.loads.split(",")
    if not set(loads) <= set(LOADS) or not loads:
        parser.error(f"--loads: one or both of {', '.join(LOADS)}, comma-separated")
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"child: the first of a random search on {args.space} (seed {args.seed}), {args.dataset}, {args.epochs} "
          f"epochs, C={args.channels} N={args.layers}, {args.cpus_per_child:g} CPU(s) per child; "
          f"{os.cpu_count()} cores")

    children = set()
    rows = []
    for load in loads:
        before = os.getloadavg()[0]
        runs: dict[str, list[dict]] = {runtime: [] for runtime in RUNTIMES}
        with tempfile.TemporaryDirectory() as folder, (
                neighbour(args.neighbour_cpu) if load == "busy" else contextlib.nullcontext()):
            for repeat in range(args.repeats):
                for runtime in RUNTIMES if repeat % 2 == 0 else RUNTIMES[::-1]:
                    run = search(runtime, args, Path(folder, f"{runtime}-{repeat}"))
                    runs[runtime].append(run)
                    children.add((run["arch"], run["seed"]))
                    print(f"  {load} round {repeat} {runtime:<5}: train {run['train_time_s']:6.2f} s, evaluation "
                          f"{run['wall_time_s']:6.2f} s, search {run['search_wall_s']:6.1f} s", flush=True)
        after = os.getloadavg()[0]
        if len(children) != 1:
            sys.exit(f"local_vs_ray: the runs trained different children: {sorted(children)}")
        where = "unpinned" if args.neighbour_cpu is None else f"on core {args.neighbour_cpu}"
        pinned = f", neighbour {where}" if load == "busy" else ""
        print(f"{load}{pinned}: load average {before:.1f} before, {after:.1f} after; {args.repeats} rounds")
        print(f"  {'':<14} {'local median (min-max)':>24} {'ray median (min-max)':>24} {'ray / local':>12}")
        for metric in ("train_time_s", "wall_time_s"):
            local, ray = (summary([r[metric] for r in runs[runtime]]) for runtime in RUNTIMES)
            ratio = ray["median"] / local["median"]
            print(f"  {metric:<14} {local['median']:8.2f} ({local['min']:.2f}-{local['max']:.2f}) s "
                  f"{ray['median']:8.2f} ({ray['min']:.2f}-{ray['max']:.2f}) s {ratio:11.2f}x")
            rows.append({"load": load, "neighbour_cpu": args.neighbour_cpu if load == "busy" else None,
                         "loadavg_before": before, "loadavg_after": after, "metric": metric,
                         "local": local, "ray": ray, "ratio": ratio, "rounds": args.repeats})
    arch, seed = children.pop()
    print(f"child: {arch} (seed {seed})")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
