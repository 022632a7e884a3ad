"""`nas bench nb201`: a strategy against the NAS-Bench-201 table over many seeds,
with the benchmark's own protocol: search by 12-epoch validation accuracy,
report the 200-epoch test accuracy of the architecture chosen."""

from __future__ import annotations

import statistics
import time
from typing import Any

from search_spaces import ConfigError, get_space
from workers.evaluators import get_evaluator
from workers.executor import InProcessExecutor

from .ledger import Ledger
from .loop import run_loop
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
    strategy_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if evaluations < 1:
        raise ConfigError("evaluations", f"must be a positive integer, got {evaluations}")
    if seeds < 1:
        raise ConfigError("seeds", f"must be a positive integer, got {seeds}")
    space = get_space("nb201")
    evaluator = get_evaluator("table", space, dataset=dataset)
    chosen: list[float] = []
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        search = get_strategy(strategy, space, seed=seed, **(strategy_options or {}))
        ledger = Ledger(None, evaluations, seed)
        run_loop(search, InProcessExecutor(evaluator), ledger)
        best = max((r for r in ledger.records if r["reward"] is not None), key=lambda r: r["reward"])
        chosen.append(best["metrics"]["test_acc_200ep"])
    return {
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
    lines = [
        f"NAS-Bench-201 {result['dataset']}: {result['strategy']}, {result['evaluations']} evaluations, "
        f"{result['seeds']} seeds ({result['wall_time_s']:.1f} s)",
        "test accuracy (200 epochs) of the architecture chosen by 12-epoch validation accuracy:",
        f"  {'ours: ' + result['strategy']:<24} {result['test_acc_mean']:6.2f} ± {result['test_acc_std']:.2f}",
    ]
    for name, row in result["published"].items():
        lines.append(f"  {'published: ' + name:<24} {row['mean']:6.2f} ± {row['std']:.2f}")
    return "\n".join(lines)
