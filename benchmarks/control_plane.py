"""Control-plane capacity: evaluations per second of the full NAS-RL scheme (K replicas x m
children, S shards, W workers) with the instant NAS-Bench-201 table evaluator, beside Ray Tune
doing random search over the same table (a function trainable, reuse_actors=True, W trials at
once at the same CPU share), in one Ray instance, each measured the same way:

- steady: evaluations per second between the first recorded result and the last;
- wall: evaluations per second from the start of the run (actors, data, Tune's set-up) to its end;
- first result: seconds from the start to the first recorded result.

    python benchmarks/control_plane.py [--evaluations 1024] [--rounds 3]

The rounds alternate ours and Tune. Prints each round, the medians, where the replicas' time
went, and the same replica loop without Ray (shards as plain objects) as the compute floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.replica import ControllerReplica, LocalShards
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies.reinforce import PolicyCore
from raynas.param_server import ParameterShard, ShardConfig, ShardMap
from raynas.search_spaces import get_space
from raynas.search_spaces.nb201 import NB201_OPS, NB201Arch
from raynas.workers.evaluation.table import TableEvaluator
from raynas.workers.execution import InProcessExecutor


def rates(start: float, end: float, finished: list[float]) -> dict:
    """The three figures from the run's start and end and each evaluation's finishing time (epoch seconds)."""
    finished = sorted(finished)
    return {"evaluations": len(finished), "wall_s": end - start, "wall_per_s": len(finished) / (end - start),
            "steady_per_s": (len(finished) - 1) / (finished[-1] - finished[0]), "first_s": finished[0] - start}


def ours(args, root: Path) -> dict:
    spec = SearchSpec(space="nb201", strategy="rl", evaluator="table", evaluations=args.evaluations,
                      controllers=args.controllers, children=args.children, ps_shards=args.ps_shards,
                      workers=args.workers, cpus_per_child=args.cpus_per_child)
    start = time.time()
    result = SearchJob(spec, root, progress=False).run()
    end = time.time()
    finished = [json.loads(line)["finished_at"] for line in (root / "evaluations.jsonl").open()]
    phases: dict[str, float] = {}
    for replica in result["replicas"].values():
        for phase, seconds in replica["timings_s"].items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    return {**rates(start, end, finished), "dispatch": result["scheme"]["dispatch"], "replica_time_s": phases}


def trainable(config):
    arch = NB201Arch(tuple(config[f"edge{i}"] for i in range(6)))
    result = TableEvaluator(get_space("nb201")).evaluate(arch)
    return {"reward": result.reward, "finished_at": time.time()}


def tune_random(args, root: Path) -> dict:
    start = time.time()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": args.cpus_per_child}),
        param_space={f"edge{i}": tune.choice(list(NB201_OPS)) for i in range(6)},
        tune_config=tune.TuneConfig(num_samples=args.evaluations, max_concurrent_trials=args.workers,
                                    reuse_actors=True, metric="reward", mode="max"),
        run_config=tune.RunConfig(storage_path=str(root), verbose=0),
    )
    grid = tuner.fit()
    end = time.time()
    return rates(start, end, [r.metrics["finished_at"] for r in grid])


def in_process(args) -> dict:
    """The same replica loop with the shards as plain objects and no Ray: the compute floor."""
    torch.set_num_threads(1)
    space = get_space("nb201")
    core = PolicyCore(space, seed=0)
    weights = core.weights()
    shard_map = ShardMap.build(weights, args.ps_shards)
    shards = LocalShards([ParameterShard(i, part, ShardConfig()) for i, part in
                          enumerate(shard_map.split(weights))], shard_map)
    replica = ControllerReplica("controller-0", core, args.children, rolling=True)
    start = time.perf_counter()
    replica.run(shards, Ledger(None, args.evaluations, 0, baseline_decay=0.95),
                InProcessExecutor(TableEvaluator(space), args.children))
    return {"per_s": args.evaluations / (time.perf_counter() - start), "replica_time_s": replica.timings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=1024)
    p.add_argument("--controllers", type=int, default=4)
    p.add_argument("--children", type=int, default=2)
    p.add_argument("--ps-shards", type=int, default=4)
    p.add_argument("--workers", type=int, default=8, help="ours: K x m or more gives each replica its own workers")
    p.add_argument("--cpus-per-child", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    floor = in_process(args)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            a = ours(args, Path(tmp) / f"ours-{i}")
            b = tune_random(args, Path(tmp) / f"tune-{i}")
            rounds.append((a, b))
            print(f"round {i + 1}: ours {a['steady_per_s']:.1f}/s steady, {a['wall_per_s']:.1f}/s wall "
                  f"({a['wall_s']:.1f} s), first result after {a['first_s']:.1f} s; Ray Tune "
                  f"{b['steady_per_s']:.1f}/s steady, {b['wall_per_s']:.1f}/s wall ({b['wall_s']:.1f} s), "
                  f"first result after {b['first_s']:.1f} s")
    ray.shutdown()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def median(side: int, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    print(f"\nmedians of {args.rounds} rounds, {args.evaluations} evaluations each; ours K={args.controllers}, "
          f"m={args.children}, S={args.ps_shards}, W={args.workers} ({rounds[0][0]['dispatch']} workers) at "
          f"{args.cpus_per_child} CPU; Tune {args.workers} trials at once at {args.cpus_per_child} CPU:")
    for key, name in (("steady_per_s", "steady evaluations/s"), ("wall_per_s", "wall-clock evaluations/s"),
                      ("first_s", "seconds to the first result")):
        print(f"  {name:<30} ours {median(0, key):8.1f}   Ray Tune {median(1, key):8.1f}   "
              f"ours / Tune {median(0, key) / median(1, key):.2f}")
    print(f"  same loop, one replica, shards as plain objects, no Ray: {floor['per_s']:.1f}/s (the compute floor)")
    for name, phases in (("replica time by phase (last round, summed over replicas)", rounds[-1][0]["replica_time_s"]),
                         ("no-Ray loop time by phase", floor["replica_time_s"])):
        total = sum(phases.values())
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)"
                                      for k, v in sorted(phases.items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
