"""Control-plane capacity: evaluations per second of the full NAS-RL scheme
(K replicas x m children, S shards, W workers) with the instant NAS-Bench-201
table evaluator, side by side in one Ray instance with Ray Tune doing random
search over the same table (a function trainable, reuse_actors=True).

    python benchmarks/control_plane.py [--evaluations 2000] [--tune-trials 300]

Prints both rates, their ratio, where each replica's time went, and the same
replica loop without Ray (shards as plain objects) as the compute floor.
"""

from __future__ import annotations

import argparse
import json
import shlex
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


def ours(args, root: Path) -> dict:
    spec = SearchSpec(space="nb201", strategy="rl", evaluator="table", evaluations=args.evaluations,
                      controllers=args.controllers, children=args.children, ps_shards=args.ps_shards,
                      workers=args.workers, cpus_per_child=args.cpus_per_child, checkpoint_every=50)
    start = time.perf_counter()
    result = SearchJob(spec, root / "ours", progress=False).run()
    total = time.perf_counter() - start
    done = [json.loads(line)["finished_at"] for line in (root / "ours" / "evaluations.jsonl").open()]
    steady = (len(done) - 1) / (max(done) - min(done))
    phases: dict[str, float] = {}
    for replica in result["replicas"].values():
        for phase, seconds in replica["timings_s"].items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    return {"evaluations": len(done), "wall_s": total, "steady_per_s": steady, "overall_per_s": len(done) / total,
            "replica_time_s": phases, "staleness": result["staleness"]}


def in_process(args) -> dict:
    """The same replica loop with the shards as plain objects and no Ray: the compute floor."""
    torch.set_num_threads(1)
    space = get_space("nb201")
    evaluator = TableEvaluator(space)
    core = PolicyCore(space, seed=0)
    weights = core.weights()
    shard_map = ShardMap.build(weights, args.ps_shards)
    shards = LocalShards([ParameterShard(i, part, ShardConfig()) for i, part in
                          enumerate(shard_map.split(weights))], shard_map)
    replica = ControllerReplica("controller-0", core, args.children)
    start = time.perf_counter()
    replica.run(shards, Ledger(None, args.evaluations, 0, baseline_decay=0.95),
                lambda tasks: [evaluator.evaluate(t.arch, seed=t.seed) for t in tasks])
    return {"per_s": args.evaluations / (time.perf_counter() - start), "replica_time_s": replica.timings}


def trainable(config):
    arch = NB201Arch(tuple(config[f"edge{i}"] for i in range(6)))
    result = TableEvaluator(get_space("nb201")).evaluate(arch)
    return {"reward": result.reward}


def tune_random(args, root: Path) -> dict:
    tuner = tune.Tuner(
        trainable,
        param_space={f"edge{i}": tune.choice(list(NB201_OPS)) for i in range(6)},
        tune_config=tune.TuneConfig(num_samples=args.tune_trials, max_concurrent_trials=2, reuse_actors=True,
                                    metric="reward", mode="max"),
        run_config=tune.RunConfig(storage_path=str(root / "tune"), verbose=0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    return {"trials": len(grid), "wall_s": wall, "per_s": len(grid) / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=2000)
    p.add_argument("--controllers", type=int, default=4)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--ps-shards", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--cpus-per-child", type=float, default=0.25)
    p.add_argument("--tune-trials", type=int, default=300)
    args = p.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    c = in_process(args)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        a = ours(args, Path(tmp))
        b = tune_random(args, Path(tmp))
    ray.shutdown()
    print(f"ours (K={args.controllers}, m={args.children}, S={args.ps_shards}, W={args.workers}): "
          f"{a['evaluations']} evaluations, {a['steady_per_s']:.1f}/s steady, {a['overall_per_s']:.1f}/s overall "
          f"including {a['wall_s']:.1f} s with start-up")
    print(f"Ray Tune random search (reuse_actors, 2 concurrent): {b['trials']} trials, {b['per_s']:.1f}/s")
    print(f"ratio (steady / Tune): {a['steady_per_s'] / b['per_s']:.1f}x")
    print(f"same loop, one replica, shards as plain objects, no Ray: {c['per_s']:.1f}/s (the compute floor)")
    for name, phases in (("replica time by phase (summed over replicas)", a["replica_time_s"]),
                         ("no-Ray loop time by phase", c["replica_time_s"])):
        total = sum(phases.values())
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)"
                                      for k, v in sorted(phases.items(), key=lambda x: -x[1])))
    print(f"gradient staleness: mean {a['staleness']['mean']:.2f}, max {a['staleness']['max']}")


if __name__ == "__main__":
    main()
