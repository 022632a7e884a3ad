"""NAS-Bench-201 lookup: an evaluator that reads the benchmark's table instead of training.

The table (package data, `data/nb201_tabular.csv.gz`) holds all 15,625 cells
with 12-epoch validation/test and 200-epoch test accuracies, params and FLOPs
for CIFAR-10, CIFAR-100 and ImageNet16-120. Searching follows the benchmark's
protocol: the reward is the 12-epoch validation accuracy, and what a search
reports is the 200-epoch test accuracy of the architecture it picked.
"""

from __future__ import annotations

import csv
import functools
import gzip
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from typing import Hashable

from search_spaces import SearchSpace
from search_spaces.errors import ConfigError

from .evaluator import EvalResult, Evaluator, resolve_arch

TABLE_DATASETS = ("cifar10", "cifar100", "imagenet16")
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


@functools.lru_cache(maxsize=None)
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
    source = resources.files(__package__) / "data" / "nb201_tabular.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    at = {name: header.index(name) for name in ("index", "arch", *wanted)}
    # Row order is the NB201 index; check it once so `row_of` can serve as the index.
    if any(int(r[at["index"]]) != i for i, r in enumerate(rows)):
        raise RuntimeError("nb201_tabular.csv.gz rows are not in NB201 index order")
    return tuple(r[at["arch"]] for r in rows), {name: tuple(float(r[at[name]]) for r in rows) for name in wanted}


class TableEvaluator(Evaluator):
    """Looks NB201 cells up in the benchmark table.

    `sleep` > 0 makes each evaluation actually wait `sleep` times its simulated
    training time, so runtime benchmarks of the search machinery see realistic,
    FLOPs-proportional durations.
    """

    name = "table"

    def __init__(self, space: SearchSpace, dataset: str = "cifar10", sleep: float = 0.0):
        if space.name != "nb201":
            raise ConfigError("evaluator", f"the table evaluator covers only the NAS-Bench-201 space, "
                              f"not {space.name!r}", ("nb201",))
        if not isinstance(sleep, (int, float)) or isinstance(sleep, bool) or sleep < 0:
            raise ConfigError("sleep", f"must be a non-negative number (a factor on the simulated time), got {sleep!r}")
        self.space = space
        self.table = load_table(dataset)
        self.dataset = dataset
        self.sleep = float(sleep)

    def optimum(self) -> dict[str, float | int | str]:
        return self.table.optimum()

    def _evaluate(self, arch: Hashable, seed: int) -> EvalResult:
        # The table averages over training seeds already, so `seed` plays no part.
        key = str(resolve_arch(self.space, arch))
        row = self.table.row(key)
        simulated = row["flops_M"] * self.table.seconds_per_mflop
        if self.sleep:
            time.sleep(simulated * self.sleep)
        return EvalResult(
            arch=key,
            reward=row["valid_acc_12ep"] / 100.0,
            metrics={
                "dataset": self.dataset,
                "index": row["index"],
                "valid_acc_12ep": row["valid_acc_12ep"],
                "test_acc_12ep": row["test_acc_12ep"],
                "test_acc_200ep": row["test_acc_200ep"],
                "params": round(row["params_M"] * 1e6),
                "flops": round(row["flops_M"] * 1e6),
                "simulated_time_s": simulated,
            },
        )
