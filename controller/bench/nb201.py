"""`nas bench nb201`: a strategy against the NAS-Bench-201 table over many seeds,
with the benchmark's own protocol: search by 12-epoch validation accuracy,
report the 200-epoch test accuracy of the architecture chosen."""

from __future__ import annotations

import statistics
import time
from typing import Any

from raynas.common import ConfigError, EvaluationError, check_int
from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.loop import run_loop
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.progress import Progress
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies import strategy_class
from raynas.workers.execution import InProcessExecutor

# NAS-Bench-201 paper, multi-trial baselines (mean ± std over 500 runs, ~100 evaluations).
PUBLISHED = {
    "cifar10": {"random": (93.70, 0.36), "evolution": (93.92, 0.30), "rl": (93.85, 0.37), "optimum": (94.37, 0.0)},
    "cifar100": {"random": (71.04, 1.07), "evolution": (71.84, 0.99), "rl": (71.71, 1.09), "optimum": (73.51, 0.0)},
    "imagenet16": {"random": (44.57, 1.25), "evolution": (45.54, 1.03), "rl": (45.24, 1.18), "optimum": (47.31, 0.0)},
}
PUBLISHED_NAMES = {"random": "Random search", "evolution": "REA", "rl": "REINFORCE", "optimum": "Optimum"}


def bench_nb201(
    strategy: str, evaluations: int, seeds: int, dataset: str = "cifar10", first_seed: int = 0,
    strategy_options: dict[str, Any] | None = None, controllers: int | None = None, children: int = 8,
    ps_shards: int = 1, workers: int | None = None, batching: str = "rolling", progress: Progress | None = None,
) -> dict[str, Any]:
    """Any registered strategy, run in this process by the proposer loop. `controllers` set: a
    strategy with a shared policy (rl) runs as the asynchronous distributed scheme (K replicas
    x m children, S shards, W workers; None: one per child) in simulated time
    (controller/bench/simulate.py). `progress` shows each seed as it ends."""
    if workers is not None and controllers is None:
        raise ConfigError("workers", "places the distributed scheme's children: give --controllers too")
    check_int("evaluations", evaluations)
    check_int("seeds", seeds)
    if strategy_class(strategy).needs.search is not None:
        raise ConfigError("strategy", f"{strategy} trains a supernet on images; nas bench nb201 reads the table only",
                          "benchmarks/oneshot_nb201.py --data CIFAR10 for the one-shot strategies")
    plan = resolve(SearchSpec(space="nb201", evaluator="table", evaluator_options={"dataset": dataset},
                              strategy=strategy, strategy_options=dict(strategy_options or {}), runtime="local"))
    space = plan.space
    evaluator = plan.make_evaluator()
    chosen: list[float] = []
    simulated: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        if controllers is None:
            ledger = Ledger(None, evaluations, seed)
            run_loop(plan.new_strategy(seed), InProcessExecutor(evaluator), ledger)
        else:
            ledger, figures = simulate_scheme(space, evaluator, evaluations, seed, controllers, children, ps_shards,
                                              strategy, strategy_options, workers=workers, batching=batching)
            simulated.append(figures)
        if not any(r["reward"] is not None for r in ledger.records):
            raise EvaluationError(f"no evaluation of {strategy} succeeded with seed {seed}")
        best = max((r for r in ledger.records if r["reward"] is not None), key=lambda r: r["reward"])
        chosen.append(best["metrics"]["test_acc_200ep"])
        if progress is not None:
            progress.step(f"seed {seed}: test accuracy {chosen[-1]:.2f}, mean so far {statistics.fmean(chosen):.2f}")
    scheme = {} if controllers is None else {
        "scheme": {"controllers": controllers, "children": children, "ps_shards": ps_shards,
                   "workers": simulated[0]["workers"], "workers_requested": workers,
                   "dispatch": simulated[0]["dispatch"], "replica_batch": batching},
        "simulated_wall_time_s_mean": statistics.fmean(s["simulated_wall_time_s"] for s in simulated),
        "worker_utilization": statistics.fmean(s["worker_utilization"] for s in simulated),
        "worker_utilization_steady": statistics.fmean(s["worker_utilization_steady"] for s in simulated),
        "updates_per_simulated_hour": statistics.fmean(s["updates_per_simulated_hour"] for s in simulated),
        "staleness_mean": statistics.fmean(s["staleness_mean"] for s in simulated),
        "duration_noise": simulated[0]["duration_noise"],
        "estimate_error_mean": statistics.fmean(s["estimate_error"] or 0.0 for s in simulated),
    }
    return {
        **scheme,
        "strategy": strategy,
        "evaluations": evaluations,
        "seeds": seeds,
        "dataset": dataset,
        "test_acc_mean": statistics.fmean(chosen),
        "test_acc_std": statistics.pstdev(chosen) if len(chosen) > 1 else 0.0,
        "test_acc_min": min(chosen),
        "test_acc_max": max(chosen),
        "published": {PUBLISHED_NAMES[k]: {"mean": m, "std": s} for k, (m, s) in PUBLISHED[dataset].items()},
        "wall_time_s": time.perf_counter() - start,
    }


def format_bench(result: dict[str, Any]) -> str:
    scheme = result.get("scheme")
    where = (f" as K={scheme['controllers']} replicas x m={scheme['children']} children, S={scheme['ps_shards']} "
             f"shards, W={scheme['workers']} workers ({scheme['dispatch']}, {scheme['replica_batch']} batches; "
             "simulated wall time "
             f"{result['simulated_wall_time_s_mean']:.0f} s, worker utilisation "
             f"{result['worker_utilization']:.1%}, {result['worker_utilization_steady']:.1%} until the last child "
             "started)" if scheme else "")
    lines = [
        f"NAS-Bench-201 {result['dataset']}: {result['strategy']}{where}, {result['evaluations']} evaluations, "
        f"{result['seeds']} seeds ({result['wall_time_s']:.1f} s)",
        "test accuracy (200 epochs) of the architecture chosen by 12-epoch validation accuracy:",
        f"  {'ours: ' + result['strategy']:<24} {result['test_acc_mean']:6.2f} ± {result['test_acc_std']:.2f}",
    ]
    for name, row in result["published"].items():
        lines.append(f"  {'published: ' + name:<24} {row['mean']:6.2f} ± {row['std']:.2f}")
    return "\n".join(lines)
