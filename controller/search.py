"""Run one search in this process: spec in, run directory and result out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from search_spaces import get_space
from workers.evaluator import Evaluator
from workers.evaluators import get_evaluator
from workers.executor import InProcessExecutor

from .loop import run_loop
from .progress import Progress
from .rundir import RunDirectory, summarize
from .spec import SearchSpec
from .strategy import get_strategy


def build_evaluator(spec: SearchSpec, space) -> Evaluator:
    if spec.evaluator == "table":
        return get_evaluator("table", space, **spec.table)
    return get_evaluator(
        "train", space, dataset=spec.dataset, data_path=spec.data_path, seed=spec.seed, **spec.train
    )


def run_search(spec: SearchSpec, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Validate, build the components, search, and write the run directory."""
    spec.validate()
    space = get_space(spec.space, **spec.space_options)
    evaluator = build_evaluator(spec, space)
    strategy = get_strategy(spec.strategy, space, seed=spec.seed, **spec.strategy_options)
    run = RunDirectory.create(out, spec.to_dict())
    bar = Progress(spec.evaluations, enabled=progress)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()

    def record(index, task, result):
        rec = {"id": task.id, "index": index, "seed": task.seed, "finished_at": time.time(), **result.to_dict()}
        run.append(rec)
        records.append(rec)
        bar.update(rec)

    executor = InProcessExecutor(evaluator, capacity=spec.parallelism)
    try:
        run_loop(strategy, executor, spec.evaluations, spec.seed, record)
    finally:
        executor.close()
    result = {
        **summarize(records),
        "space": spec.space,
        "strategy": spec.strategy,
        "evaluator": spec.evaluator,
        "dataset": spec.dataset if spec.evaluator == "train" else spec.table.get("dataset", "cifar10"),
        "seed": spec.seed,
        "budget": spec.evaluations,
        "wall_time_s": time.perf_counter() - start,
        "run_dir": str(run.path),
    }
    run.write_result(result)
    run.write_plot(records)
    return result
