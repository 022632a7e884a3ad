"""One-shot strategies (DARTS first and second order, NoisyDARTS) as search-job work.

Each of a job's R evaluations is one one-shot search (its own seed) followed by the
ordinary evaluation of the genotype it derived: DARTS' own selection protocol (run
the search several times, train each derived cell, keep the best), with the runs in
parallel on the cluster. A run streams one report per search epoch (the collapse
monitors), then its evaluation result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from search_spaces import ConfigError, get_space
from workers.data import load_dataset
from workers.evaluator import EvalResult
from workers.oneshot import ALGORITHMS, OneShotConfig, search_epochs

from .spec import SearchSpec

#: Strategies that run as one-shot searches rather than propose/observe loops.
ONE_SHOT_STRATEGIES = ALGORITHMS
#: Spaces with a supernet.
ONE_SHOT_SPACES = ("darts", "nb201")
#: Per-epoch figures repeated in the evaluation's metrics (the full reports are in oneshot.jsonl).
_SUMMARY = ("skip_count", "val_acc", "val_loss", "genotype")


def oneshot_config(spec: SearchSpec) -> OneShotConfig:
    """The spec's one-shot settings: the strategy names the algorithm, strategy_options the rest."""
    if spec.space not in ONE_SHOT_SPACES:
        raise ConfigError("space", f"{spec.strategy} needs a space with a supernet, not {spec.space!r}", ONE_SHOT_SPACES)
    known = {f.name for f in dataclasses.fields(OneShotConfig)} - {"algorithm"}
    unknown = sorted(set(spec.strategy_options) - known)
    if unknown:
        raise ConfigError(f"strategy_options.{unknown[0]}", f"not an option of {spec.strategy}", sorted(known))
    return OneShotConfig(algorithm=spec.strategy, **spec.strategy_options)


def oneshot_run(spec_data: dict[str, Any], index: int, seed: int) -> Iterator[dict[str, Any]]:
    """One search then one evaluation, as a stream of plain dicts:
    {"kind": "epoch", "run": index, ...monitors} per epoch, then {"kind": "result", "result": EvalResult dict}."""
    from .job import build_evaluator

    spec = SearchSpec.from_dict(spec_data)
    space = get_space(spec.space, **spec.space_options)
    history: list[dict[str, Any]] = []
    try:
        dataset = load_dataset(spec.dataset, spec.data_path, seed=spec.seed)
        for report in search_epochs(space, dataset, oneshot_config(spec), seed):
            history.append(report)
            yield {"kind": "epoch", "run": index, **report}
    except Exception as exc:  # noqa: BLE001 - a failed search is a failed evaluation, not a dead job
        arch = history[-1]["genotype"] if history else ""
        yield {"kind": "result", "run": index,
               "result": EvalResult.failure(arch, f"one-shot search failed: {type(exc).__name__}: {exc}").to_dict()}
        return
    result = build_evaluator(spec).evaluate(history[-1]["genotype"], seed)
    result.metrics["one_shot"] = {
        "algorithm": spec.strategy, "run": index, "epochs": len(history),
        "search_time_s": sum(r.get("wall_time_s", 0.0) for r in history),
        **{k: history[-1].get(k) for k in _SUMMARY},
        "skip_count_per_epoch": [r.get("skip_count") for r in history],
    }
    yield {"kind": "result", "run": index, "result": result.to_dict()}
