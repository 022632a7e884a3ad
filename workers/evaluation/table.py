"""NAS-Bench-201 lookup: an evaluator that reads the benchmark's table instead of training.

The table (package data, `nb201_tabular.csv.gz` next to this module) holds all 15,625 cells
with 12-epoch validation/test and 200-epoch test accuracies, params and FLOPs
for CIFAR-10, CIFAR-100 and ImageNet16-120. Searching follows the benchmark's
protocol: the reward is the 12-epoch validation accuracy, and what a search
reports is the 200-epoch test accuracy of the architecture it picked.

As a multi-fidelity evaluator its budgets are the table's two schedules: 12 epochs
(reward: validation accuracy, the default) and 200 epochs. The table has 200-epoch
validation accuracies for only 724 of the 15,625 cells, so at 200 epochs the reward is
the test accuracy (`reward_split` says so in the metrics): fine for benchmarking
schedulers, not a protocol for reporting a search's result.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import statistics
import time
from collections.abc import Hashable
from dataclasses import dataclass
from importlib import resources

from raynas.common import ConfigError, DataError, check_number
from raynas.common.files import write_json_atomic
from raynas.common.options import option
from raynas.search_spaces import SearchSpace
from raynas.workers.evaluation import register_evaluator
from raynas.workers.evaluation.base import EvalResult, Evaluator, Fidelity, Report, Scoring, resolve_arch

TABLE_DATASETS = ("cifar10", "cifar100", "imagenet16")
#: The table's training schedules, in epochs: the search protocol's and the full one.
BUDGETS = (12, 200)
#: The NB201 protocol's search budget is 12,000 simulated seconds for about 100 evaluations.
MEAN_SIMULATED_TIME_S = 120.0
_COLUMNS = ("valid_acc_12ep", "test_acc_12ep", "test_acc_200ep", "params_M", "flops_M")


@dataclass(frozen=True)
class NB201Table:
    """One dataset's columns, indexed by row (= NB201 index)."""

    dataset: str
    archs: tuple[str, ...]
    row_of: dict[str, int]
    columns: dict[str, tuple[float, ...]]
    #: Simulated seconds per million FLOPs, so that the mean over the space is MEAN_SIMULATED_TIME_S.
    seconds_per_mflop: float

    def row(self, arch: str) -> dict[str, float | int | str]:
        """Every column of `arch` (its canonical string) plus `index` and `arch`."""
        i = self.row_of.get(arch)
        if i is None:
            raise ConfigError("arch", f"{arch!r} is not in the NAS-Bench-201 table")
        return {"index": i, "arch": arch, **{name: col[i] for name, col in self.columns.items()}}

    def optimum(self) -> dict[str, float | int | str]:
        """The row with the best 200-epoch test accuracy (94.37 on cifar10), what the
        NB201 paper's 'optimum' row reports."""
        col = self.columns["test_acc_200ep"]
        return self.row(self.archs[max(range(len(col)), key=col.__getitem__)])


@functools.cache
def load_table(dataset: str = "cifar10") -> NB201Table:
    """The table for one dataset, read once per process (about 0.15 s)."""
    if dataset not in TABLE_DATASETS:
        raise ConfigError("dataset", f"unknown NAS-Bench-201 dataset {dataset!r}", TABLE_DATASETS)
    archs, values = _read_csv()
    columns = {name: values[f"{dataset}_{name}"] for name in _COLUMNS}
    seconds_per_mflop = MEAN_SIMULATED_TIME_S / statistics.fmean(columns["flops_M"])
    return NB201Table(dataset, archs, {a: i for i, a in enumerate(archs)}, columns, seconds_per_mflop)


@functools.lru_cache(maxsize=1)
def _read_csv() -> tuple[tuple[str, ...], dict[str, tuple[float, ...]]]:
    wanted = [f"{ds}_{name}" for ds in TABLE_DATASETS for name in _COLUMNS]
    source = resources.files(__package__) / "nb201_tabular.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    at = {name: header.index(name) for name in ("index", "arch", *wanted)}
    # Row order is the NB201 index; check it once so `row_of` can serve as the index.
    if any(int(r[at["index"]]) != i for i, r in enumerate(rows)):
        raise DataError("nb201_tabular.csv.gz rows are not in NB201 index order: the packaged table is damaged")
    return tuple(r[at["arch"]] for r in rows), {name: tuple(float(r[at[name]]) for r in rows) for name in wanted}


@dataclass(frozen=True)
class TableOptions:
    dataset: str = option(TABLE_DATASETS[0], "whose figures: cifar10, cifar100 or imagenet16", choices=TABLE_DATASETS)
    sleep: float = option(0.0, "wait this many times each evaluation's simulated training time (benchmarks of the "
                               "search machinery see FLOPs-proportional durations)", most=100)

    def __post_init__(self):
        check_number("sleep", self.sleep, 0)


@register_evaluator
class TableEvaluator(Evaluator):
    """Looks NB201 cells up in the benchmark table.

    `sleep` > 0 makes each evaluation actually wait `sleep` times its simulated
    training time, so runtime benchmarks of the search machinery see realistic,
    FLOPs-proportional durations. Simulated time grows with the budget (200 epochs
    cost 200/12 of 12); an evaluation continued from its checkpoint is charged only
    the epochs it adds.
    """

    name = "table"
    summary = "look NAS-Bench-201 cells up in the benchmark's table (nb201 only; no training)"
    Options = TableOptions
    fidelity = Fidelity(maximum=200, default=12, choices=BUDGETS)

    def __init__(self, space: SearchSpace, data: None = None, options: TableOptions | None = None):
        options = options or TableOptions()
        self.check(space, data, options)
        self.space = space
        self.table = load_table(options.dataset)
        self.dataset = options.dataset
        self.sleep = float(options.sleep)

    @classmethod
    def check(cls, space: SearchSpace, dataset: None, options: TableOptions) -> None:
        if space.name != "nb201":
            raise ConfigError("evaluator", f"the table evaluator covers only the NAS-Bench-201 space, "
                              f"not {space.name!r}", ("nb201",))

    @classmethod
    def scoring(cls, space: SearchSpace, dataset: None, options: TableOptions) -> Scoring:
        return Scoring(options.dataset)

    def optimum(self) -> dict[str, float | int | str]:
        return self.table.optimum()

    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        # The table averages over training seeds already, so `seed` plays no part.
        key = str(resolve_arch(self.space, arch))
        row = self.table.row(key)
        done = self._restore(key, budget, checkpoint)
        simulated = row["flops_M"] * self.table.seconds_per_mflop * (budget - done) / BUDGETS[0]
        if self.sleep:
            time.sleep(simulated * self.sleep)
        if budget == BUDGETS[0]:
            reward, split = row["valid_acc_12ep"], "valid"
        else:
            reward, split = row["test_acc_200ep"], "test"
        report({"epoch": budget, "val_acc": reward / 100.0})
        if checkpoint:
            write_json_atomic(checkpoint, {"arch": key, "epochs": budget})
        return EvalResult(
            arch=key,
            reward=reward / 100.0,
            metrics={
                "dataset": self.dataset,
                "index": row["index"],
                "reward_split": split,
                "valid_acc_12ep": row["valid_acc_12ep"],
                "test_acc_12ep": row["test_acc_12ep"],
                "test_acc_200ep": row["test_acc_200ep"],
                "params": round(row["params_M"] * 1e6),
                "flops": round(row["flops_M"] * 1e6),
                "simulated_time_s": simulated,
                "continued_from_epoch": done,
            },
        )

    @staticmethod
    def _restore(arch: str, budget: int, checkpoint: str | None) -> int:
        """Epochs an earlier evaluation of `arch` already paid for (its checkpoint), else 0."""
        if not checkpoint or not os.path.exists(checkpoint):
            return 0
        with open(checkpoint) as f:
            state = json.load(f)
        if state["arch"] != arch:
            raise ConfigError("checkpoint", f"{checkpoint} holds {state['arch']}, not {arch}")
        if state["epochs"] > budget:
            raise ConfigError("budget", f"{checkpoint} is already at {state['epochs']} epochs, past {budget}")
        return state["epochs"]
