"""`nas bench nb201`: a strategy against the NAS-Bench-201 table over many seeds,
with the benchmark's own protocol: search by 12-epoch validation accuracy,
report the 200-epoch test accuracy of the architecture chosen."""

from __future__ import annotations

import statistics
import time
from typing import Any

from search_spaces import ConfigError, get_space
from search_spaces.errors import check_int
from workers.evaluators import get_evaluator
from workers.executor import InProcessExecutor

from .ledger import Ledger
from .loop import run_loop
from .simulate import simulate_rl
from .strategy import get_strategy

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
    ps_shards: int = 1,
) -> dict[str, Any]:
    """`controllers` set: the rl strategy runs as the asynchronous distributed
    scheme (K replicas x m children, S shards) in simulated time (controller/simulate.py)."""
    if controllers is not None and strategy != "rl":
        raise ConfigError("controllers", f"the distributed scheme runs the rl strategy, not {strategy!r}", ["rl"])
    check_int("evaluations", evaluations)
    check_int("seeds", seeds)
    space = get_space("nb201")
    evaluator = get_evaluator("table", space, dataset=dataset)
    chosen: list[float] = []
    simulated: list[float] = []
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        if controllers is None:
            search = get_strategy(strategy, space, seed=seed, **(strategy_options or {}))
            ledger = Ledger(None, evaluations, seed)
            run_loop(search, InProcessExecutor(evaluator), ledger)
        else:
            ledger, figures = simulate_rl(space, evaluator, evaluations, seed, controllers, children, ps_shards,
                                          strategy_options)
            simulated.append(figures["simulated_wall_time_s"])
        best = max((r for r in ledger.records if r["reward"] is not None), key=lambda r: r["reward"])
        chosen.append(best["metrics"]["test_acc_200ep"])
    scheme = {} if controllers is None else {
        "scheme": {"controllers": controllers, "children": children, "ps_shards": ps_shards},
        "simulated_wall_time_s_mean": statistics.fmean(simulated),
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
             f"shards (simulated wall time {result['simulated_wall_time_s_mean']:.0f} s)" if scheme else "")
    lines = [
        f"NAS-Bench-201 {result['dataset']}: {result['strategy']}{where}, {result['evaluations']} evaluations, "
        f"{result['seeds']} seeds ({result['wall_time_s']:.1f} s)",
        "test accuracy (200 epochs) of the architecture chosen by 12-epoch validation accuracy:",
        f"  {'ours: ' + result['strategy']:<24} {result['test_acc_mean']:6.2f} ± {result['test_acc_std']:.2f}",
    ]
    for name, row in result["published"].items():
        lines.append(f"  {'published: ' + name:<24} {row['mean']:6.2f} ± {row['std']:.2f}")
    return "\n".join(lines)
