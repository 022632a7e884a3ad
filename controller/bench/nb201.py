"""`nas bench nb201`: strategies against the NAS-Bench-201 table over many seeds, on CIFAR-10,
CIFAR-100 and ImageNet16-120, with the benchmark's own protocol: search by 12-epoch validation
accuracy, report the 200-epoch test accuracy of the architecture chosen, beside the published
rows and two ceilings (the space's best test accuracy, and the test accuracy of the table's
best 12-epoch validation accuracy: no search that chooses by that signal can expect more)."""

from __future__ import annotations

import ctypes
import dataclasses
import heapq
import itertools
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, EvaluationError, NotReady, check_int
from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.loop import run_loop
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.plot import COLORS, GREY, Figure, Series
from raynas.controller.runtime.progress import Progress
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies import strategy_class
from raynas.workers.evaluation import EvalResult, Evaluator
from raynas.workers.evaluation.table import load_table
from raynas.workers.execution import Executor, InProcessExecutor, Task

# NAS-Bench-201 paper, multi-trial baselines (mean ± std over 500 runs, ~100 evaluations).
PUBLISHED = {
    "cifar10": {"random": (93.70, 0.36), "evolution": (93.92, 0.30), "rl": (93.85, 0.37), "optimum": (94.37, 0.0)},
    "cifar100": {"random": (71.04, 1.07), "evolution": (71.84, 0.99), "rl": (71.71, 1.09), "optimum": (73.51, 0.0)},
    "imagenet16": {"random": (44.57, 1.25), "evolution": (45.54, 1.03), "rl": (45.24, 1.18), "optimum": (47.31, 0.0)},
}
PUBLISHED_NAMES = {"random": "Random search", "evolution": "REA", "rl": "REINFORCE", "optimum": "Optimum"}


DATASETS = tuple(PUBLISHED)


def ceilings(dataset: str) -> dict[str, float]:
    """The space's best 200-epoch test accuracy, and the test accuracy of the architecture with
    the best 12-epoch validation accuracy in the whole table (the first of any tie, as a search's
    `max` keeps the first it saw)."""
    table = load_table(dataset)
    valid, test = table.columns["valid_acc_12ep"], table.columns["test_acc_200ep"]
    return {"optimum": max(test), "protocol": test[max(range(len(valid)), key=valid.__getitem__)]}


class VirtualClockExecutor(Executor):
    """W workers on a virtual clock for the proposer loop: a task is evaluated when submitted (the
    table answers at once) and comes back from `wait` when its simulated training time, started on
    the worker it freed, has passed; so an asynchronous strategy sees results arrive in the order W
    real workers would return them, and `finished_at` holds each result's simulated time."""

    def __init__(self, evaluator: Evaluator, workers: int):
        super().__init__()
        self.evaluator = evaluator
        self.capacity = workers
        self.now = 0.0
        self.finished_at: list[float] = []
        self._running: list[tuple[float, int, Task, EvalResult]] = []
        self._order = itertools.count()
        self._cancelled: set[str] = set()

    def submit(self, task: Task) -> None:
        result = self.evaluator.evaluate(task.arch, task.seed, task.budget)
        end = self.now + result.metrics.get("simulated_time_s", 0.0)
        heapq.heappush(self._running, (end, next(self._order), task, result))

    def wait(self, timeout: float | None = None) -> list[tuple[Task, EvalResult]]:
        if not self._running:
            raise NotReady("wait() called with no task in flight")
        self.now, _, task, result = heapq.heappop(self._running)
        self.finished_at.append(self.now)
        if task.id in self._cancelled:
            self._cancelled.discard(task.id)
            return [(task, EvalResult.cancelled(str(task.arch), "cancelled"))]
        return [(task, result)]

    def cancel(self, task_id: str, force: bool = False) -> bool:
        if any(task.id == task_id for _, _, task, _ in self._running):
            self._cancelled.add(task_id)
            return True
        return False

    @property
    def in_flight(self) -> int:
        return len(self._running)


def chosen_curve(records: list[dict[str, Any]]) -> list[float | None]:
    """After each result in order: the 200-epoch test accuracy of the best result so far by reward
    (12-epoch validation), the first of any tie as `max` keeps it; None until one has succeeded."""
    curve: list[float | None] = []
    best, shown = None, None
    for r in records:
        if r["reward"] is not None and (best is None or r["reward"] > best):
            best, shown = r["reward"], r["metrics"]["test_acc_200ep"]
        curve.append(shown)
    return curve


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


#: A simulated scheme's figures that are means over its seeds: the result's key, and each seed's
#: (`simulate_scheme`) figure it is the mean of.
SCHEME_MEANS = {"simulated_wall_time_s_mean": "simulated_wall_time_s", "worker_utilization": "worker_utilization",
                "worker_utilization_steady": "worker_utilization_steady",
                "updates_per_simulated_hour": "updates_per_simulated_hour", "staleness_mean": "staleness_mean",
                "estimate_error_mean": "estimate_error"}


def bench_nb201(
    strategy: str, evaluations: int, seeds: int, dataset: str = "cifar10", first_seed: int = 0,
    strategy_options: dict[str, Any] | None = None, controllers: int | None = None, children: int = 8,
    ps_shards: int = 1, workers: int | None = None, batching: str = "rolling", at: list[int] | None = None,
    progress: Progress | None = None, jobs: int = 1,
) -> dict[str, Any]:
    """Any registered strategy, run in this process by the proposer loop: with `workers` W, as W
    asynchronous workers on a virtual clock (each result arrives after its simulated training
    time). `controllers` set: a strategy with a shared policy (rl) runs as the asynchronous
    distributed scheme (K replicas x m children, S shards, W workers; None: one per child) in
    simulated time (controller/bench/simulate.py). `at`: also report the choice after the first n
    results for each n (the figure at 100 evaluations from a run of 300), with their mean
    simulated hours when the clock is simulated. `anytime`: after each evaluation, the mean over
    seeds of the test accuracy of the best so far (None until every seed has a success).
    `progress` shows each seed as it ends. `jobs` > 1 runs the seeds in that many processes: each
    seed's search is the same as in one process, and the figures are gathered in seed order, so the
    result is the same but for its wall time."""
    check_int("evaluations", evaluations)
    check_int("seeds", seeds)
    check_int("workers", workers, optional=True)
    check_int("jobs", jobs)
    if dataset not in PUBLISHED:
        raise ConfigError("dataset", f"unknown dataset {dataset!r}", DATASETS)
    at = sorted(set(at or []) | {evaluations})
    for n in at:
        check_int("at", n)
        if n > evaluations:
            raise ConfigError("at", f"{n} exceeds --evaluations {evaluations}", f"1..{evaluations}")
    if strategy_class(strategy).needs.search is not None:
        raise ConfigError("strategy", f"{strategy} trains a supernet on images; nas bench nb201 reads the table only",
                          "benchmarks/oneshot_nb201.py --data CIFAR10 for the one-shot strategies")
    run = _SeedRun(strategy, dict(strategy_options or {}), dataset, evaluations, tuple(at), controllers, children,
                   ps_shards, workers, batching)
    run.setup()  # a bad option fails here, before any process starts
    start = time.perf_counter()
    runs: dict[int, dict[str, Any]] = {}
    done: list[float] = []
    for seed, one in _map_seeds(run, range(first_seed, first_seed + seeds), jobs):
        runs[seed] = one
        done.append(one["chosen"][evaluations])
        if progress is not None:
            progress.step(f"{strategy} on {dataset}, seed {seed}: test accuracy {done[-1]:.2f}, "
                          f"mean so far {statistics.fmean(done):.2f}")
    ordered = [runs[seed] for seed in sorted(runs)]
    chosen = {n: [one["chosen"][n] for one in ordered] for n in at}
    hours = {n: [one["hours"][n] for one in ordered if n in one["hours"]] for n in at}
    simulated = [one["simulated"] for one in ordered if one["simulated"] is not None]
    totals: list[float] = []
    for one in ordered:
        totals = [t + (v if v is not None else math.nan) for t, v in zip(totals or [0.0] * len(one["curve"]),
                                                                          one["curve"])]
    scheme = {} if controllers is None else {
        "scheme": {"controllers": controllers, "children": children, "ps_shards": ps_shards,
                   "workers": simulated[0]["workers"], "workers_requested": workers,
                   "dispatch": simulated[0]["dispatch"], "replica_batch": batching},
        **{key: statistics.fmean(s[one] or 0.0 for s in simulated) for key, one in SCHEME_MEANS.items()},
        # One seed's utilisation is one draw of the children's durations: 93.5 to 96.9 % over ten seeds.
        "worker_utilization_min": min(s["worker_utilization"] for s in simulated),
        "worker_utilization_max": max(s["worker_utilization"] for s in simulated),
        "duration_noise": simulated[0]["duration_noise"],
    }
    final = chosen[evaluations]
    return {
        **scheme,
        "strategy": strategy,
        "strategy_options": dict(strategy_options or {}),
        "evaluations": evaluations,
        "seeds": seeds,
        "first_seed": first_seed,
        "dataset": dataset,
        "workers": workers if controllers is None else scheme["scheme"]["workers"],
        "test_acc_mean": statistics.fmean(final),
        "test_acc_std": statistics.pstdev(final) if len(final) > 1 else 0.0,
        "test_acc_min": min(final),
        "test_acc_max": max(final),
        "at": {str(n): {**_summary(chosen[n]),
                        **({"simulated_hours_mean": statistics.fmean(hours[n])} if hours[n] else {})} for n in at},
        "anytime": [None if math.isnan(t) else t / seeds for t in totals],
        "anytime_seeds": seeds,
        "published": {PUBLISHED_NAMES[k]: {"mean": m, "std": s} for k, (m, s) in PUBLISHED[dataset].items()},
        "ceilings": ceilings(dataset),
        "wall_time_s": time.perf_counter() - start,
    }


@dataclasses.dataclass(frozen=True)
class _SeedRun:
    """What one seed's search needs, as plain data, so that another process can run it."""

    strategy: str
    options: dict[str, Any]
    dataset: str
    evaluations: int
    at: tuple[int, ...]
    controllers: int | None
    children: int
    ps_shards: int
    workers: int | None
    batching: str

    def setup(self) -> tuple[Any, Evaluator]:
        """The plan and the table's evaluator, built once per process."""
        key = repr((self.strategy, sorted(self.options.items()), self.dataset))
        if key not in _SETUPS:
            plan = resolve(SearchSpec(space="nb201", evaluator="table", evaluator_options={"dataset": self.dataset},
                                      strategy=self.strategy, strategy_options=dict(self.options), runtime="local"))
            _SETUPS.clear()
            _SETUPS[key] = plan, plan.make_evaluator()
        return _SETUPS[key]

    def __call__(self, seed: int) -> tuple[int, dict[str, Any]]:
        """One seed's search: its anytime curve, its choice and simulated hours at each count of
        `at`, and the scheme's figures (None without `controllers`)."""
        plan, evaluator = self.setup()
        finished_at: list[float] = []
        figures = None
        if self.controllers is not None:
            ledger, figures = simulate_scheme(plan.space, evaluator, self.evaluations, seed, self.controllers,
                                              self.children, self.ps_shards, self.strategy, self.options,
                                              workers=self.workers, batching=self.batching)
            finished_at = [r["finished_at"] for r in ledger.records]
        elif self.workers is not None:
            ledger, executor = Ledger(None, self.evaluations, seed), VirtualClockExecutor(evaluator, self.workers)
            run_loop(plan.new_strategy(seed), executor, ledger)
            finished_at = executor.finished_at
        else:
            ledger = Ledger(None, self.evaluations, seed)
            run_loop(plan.new_strategy(seed), InProcessExecutor(evaluator), ledger)
        if not any(r["reward"] is not None for r in ledger.records):
            raise EvaluationError(f"no evaluation of {self.strategy} succeeded with seed {seed}")
        curve = chosen_curve(ledger.records)
        chosen, hours = {}, {}
        for n in self.at:
            chosen[n] = curve[min(n, len(curve)) - 1]
            if chosen[n] is None:
                raise EvaluationError(f"no evaluation of {self.strategy} succeeded in the first {n} with seed {seed}; "
                                      "--at counts must reach past the first success")
            if finished_at:
                hours[n] = finished_at[min(n, len(finished_at)) - 1] / 3600
        return seed, {"curve": curve, "chosen": chosen, "hours": hours, "simulated": figures}


#: The last `_SeedRun`'s plan and evaluator in this process, by strategy, options and dataset.
_SETUPS: dict[str, tuple[Any, Evaluator]] = {}


def _map_seeds(run: _SeedRun, seeds: range, jobs: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seed, its figures) for every seed, as each ends: in this process, or in `jobs` processes,
    which end with this call however it ends (an error, Ctrl-C, SIGTERM turned into one)."""
    if jobs == 1 or len(seeds) == 1:
        yield from map(run, seeds)
        return
    # Spawned, not forked: a fork of a process whose torch has started its threads can hang.
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(seeds)), initializer=_pool_worker,
                                                      initargs=(os.getpid(),))
    try:
        yield from pool.imap_unordered(run, seeds)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _pool_worker(parent: int) -> None:
    """Ctrl-C reaches the whole process group: only the parent answers it (it ends the pool), so
    the workers print no tracebacks of their own; and a worker ends with its parent, even a parent
    killed with -9, rather than searching on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)


def scoped_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options meant for `strategy` when several strategies run in one bench: a key
    `NAME.option` goes to strategy NAME only, a plain key to every strategy."""
    mine = {}
    for key, value in options.items():
        owner, dot, option = key.rpartition(".")
        if not dot:
            mine[key] = value
        elif owner == strategy:
            mine[option] = value
    return mine


def compare_nb201(strategies: list[str], datasets: list[str], evaluations: int, seeds: int,
                  strategy_options: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """`bench_nb201` for every strategy on every dataset, on the same seeds."""
    for key in strategy_options or {}:
        owner = key.rpartition(".")[0]
        if owner and owner not in strategies:
            raise ConfigError("strategy_option", f"{key!r} names {owner!r}, which is not benchmarked", strategies)
    return [bench_nb201(strategy, evaluations, seeds, dataset=dataset,
                        strategy_options=scoped_options(strategy, strategy_options or {}), **kwargs)
            for dataset in datasets for strategy in strategies]


def pool_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results of the same benchmark on disjoint seeds (processes run side by side with
    --first-seed) as one result each: means weighted by seeds, standard deviations from the pooled
    second moments (exactly those of all the seeds together), the anytime curve and simulated hours
    weighted alike, the counts `at` that every part reported. Results differing in strategy,
    dataset, options, evaluations or workers stay apart, in the order first seen."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        key = json.dumps([r["dataset"], r["strategy"], r["strategy_options"], r["evaluations"], r["workers"],
                          r.get("scheme")], sort_keys=True)
        groups.setdefault(key, []).append(r)
    return [_pool(parts) for parts in groups.values()]


def _pool(parts: list[dict[str, Any]]) -> dict[str, Any]:
    spans = sorted((p["first_seed"], p["first_seed"] + p["seeds"]) for p in parts)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise ConfigError("first_seed", f"{parts[0]['strategy']} on {parts[0]['dataset']}: parts share seeds "
                              f"from {start}; pooling them would count those seeds twice",
                              "pool results of disjoint seed ranges (--first-seed)")
    seeds = sum(p["seeds"] for p in parts)

    def mean(values: list[float]) -> float:
        return sum(p["seeds"] * v for p, v in zip(parts, values)) / seeds

    counts = [n for n in parts[0]["at"] if all(n in p["at"] for p in parts)]
    at = {}
    for n in counts:
        rows = [p["at"][n] for p in parts]
        m = mean([row["mean"] for row in rows])
        at[n] = {"mean": m, "std": math.sqrt(max(0.0, mean([row["std"] ** 2 + row["mean"] ** 2 for row in rows])
                                                 - m * m))}
        if all("simulated_hours_mean" in row for row in rows):
            at[n]["simulated_hours_mean"] = mean([row["simulated_hours_mean"] for row in rows])
    # Parts run before results carried the curve pool theirs from the parts that have one.
    drawn = [p for p in parts if p.get("anytime")]
    drawn_seeds = sum(p.get("anytime_seeds", p["seeds"]) for p in drawn)
    final = at[str(parts[0]["evaluations"])]
    scheme = {} if not parts[0].get("scheme") else {
        **{key: mean([p[key] for p in parts]) for key in SCHEME_MEANS},
        "worker_utilization_min": min(p.get("worker_utilization_min", p["worker_utilization"]) for p in parts),
        "worker_utilization_max": max(p.get("worker_utilization_max", p["worker_utilization"]) for p in parts),
    }
    return {
        **parts[0],
        **scheme,
        "seeds": seeds,
        "first_seed": spans[0][0],
        "seed_ranges": [list(span) for span in spans],
        "test_acc_mean": final["mean"],
        "test_acc_std": final["std"],
        "test_acc_min": min(p["test_acc_min"] for p in parts),
        "test_acc_max": max(p["test_acc_max"] for p in parts),
        "at": at,
        "anytime": [None if None in column else sum(p.get("anytime_seeds", p["seeds"]) * v
                                                    for p, v in zip(drawn, column)) / drawn_seeds
                    for column in zip(*(p["anytime"] for p in drawn))],
        "anytime_seeds": drawn_seeds,
        "wall_time_s": sum(p["wall_time_s"] for p in parts),
    }


def _palette(results: list[dict[str, Any]]) -> dict[tuple[str, Any], str]:
    """A colour per (strategy, workers), in the order first seen."""
    keys = dict.fromkeys((r["strategy"], r["workers"]) for r in results)
    return {key: COLORS[i % len(COLORS)] for i, key in enumerate(keys)}


def anytime_figure(results: list[dict[str, Any]], palette: dict[tuple[str, Any], str] | None = None) -> Figure:
    """One dataset's anytime curves: for each result, the mean over its seeds of the test accuracy
    of the best so far against evaluations, with the two ceilings as levels. A result without a
    curve (from before results carried one) is left out. `palette`: colours by (strategy,
    workers), so that a strategy keeps its colour in every dataset's figure."""
    datasets = {r["dataset"] for r in results}
    if len(datasets) != 1:
        raise ConfigError("dataset", f"one anytime figure per dataset, got {sorted(datasets)}")
    dataset = datasets.pop()
    fig = Figure(f"NAS-Bench-201 {dataset}: test accuracy (200 epochs) of the best so far by 12-epoch validation, "
                 "mean over seeds", "evaluations", "test accuracy (%)", width=900, height=440, legend=260)
    palette = palette or _palette(results)
    for r in results:
        points = [(n, v) for n, v in enumerate(r.get("anytime") or [], start=1) if v is not None]
        if not points:
            continue
        where = f", W={r['workers']}" if r["workers"] else ""
        n = r.get("anytime_seeds", r["seeds"])
        label = f"{r['strategy']} ({n} seed{'s' if n != 1 else ''}{where})"
        fig.add(Series(label, "line", palette[r["strategy"], r["workers"]], points, width=1.8))
    top = ceilings(dataset)
    fig.add(Series(f"optimum ({top['optimum']:.2f})", "hline", "#000000", [(0, top["optimum"])]))
    fig.add(Series(f"protocol's ceiling ({top['protocol']:.2f})", "hline", GREY, [(0, top["protocol"])]))
    return fig


def write_plots(results: list[dict[str, Any]], path: str | Path) -> list[Path]:
    """An anytime figure per dataset at `path` (SVG or PNG by its extension); with several datasets,
    one file each, the dataset's name added to the stem (anytime.svg: anytime-cifar10.svg, ...)."""
    path = Path(path)
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    palette = _palette(results)
    return [anytime_figure([r for r in results if r["dataset"] == d], palette).save(
        path if len(datasets) == 1 else path.with_name(f"{path.stem}-{d}{path.suffix}")) for d in datasets]


def _scheme(scheme: dict[str, Any]) -> str:
    return (f"K={scheme['controllers']} replicas x m={scheme['children']} children, S={scheme['ps_shards']} shards, "
            f"W={scheme['workers']} workers")


def _spread(result: dict[str, Any]) -> str:
    low, high = result.get("worker_utilization_min"), result.get("worker_utilization_max")
    return f" ({low:.1%} to {high:.1%} over the seeds)" if result["seeds"] > 1 and low is not None else ""


def format_bench(result: dict[str, Any]) -> str:
    scheme = result.get("scheme")
    where = (f" as {_scheme(scheme)} ({scheme['dispatch']}, {scheme['replica_batch']} batches; simulated wall time "
             f"{result['simulated_wall_time_s_mean']:.0f} s, worker utilisation "
             f"{result['worker_utilization']:.1%}{_spread(result)}, {result['worker_utilization_steady']:.1%} until "
             "the last child started)" if scheme else
             f" with W={result['workers']} asynchronous workers on a virtual clock" if result["workers"] else "")
    lines = [
        f"NAS-Bench-201 {result['dataset']}: {result['strategy']}{where}, {result['evaluations']} evaluations, "
        f"{result['seeds']} seeds ({result['wall_time_s']:.1f} s)",
        "test accuracy (200 epochs) of the architecture chosen by 12-epoch validation accuracy:",
    ]
    for n, row in result["at"].items():
        hours = f" ({row['simulated_hours_mean']:.1f} simulated hours)" if "simulated_hours_mean" in row else ""
        lines.append(f"  {'ours: ' + result['strategy'] + ' at ' + n:<24} {row['mean']:6.2f} ± {row['std']:.2f}{hours}")
    for name, row in result["published"].items():
        lines.append(f"  {'published: ' + name:<24} {row['mean']:6.2f} ± {row['std']:.2f}")
    lines.append(f"  {'ceiling: protocol':<24} {result['ceilings']['protocol']:6.2f}")
    return "\n".join(lines)


def format_compare(results: list[dict[str, Any]]) -> str:
    """One table per dataset: each strategy's test accuracy at every `at` count, then the
    published rows and the two ceilings."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        counts = sorted({n for r in rows for n in r["at"]}, key=int)
        clock, scheme = rows[0]["workers"], rows[0].get("scheme")
        same = len({(r["seeds"], r["first_seed"]) for r in rows}) == 1
        seeds = f"{rows[0]['seeds']} seeds from {rows[0]['first_seed']}" if same else "seeds of each row in brackets"
        setting = (f", {_scheme(scheme)} on a virtual clock" if scheme else
                   f", W={clock} asynchronous workers on a virtual clock" if clock else "")
        lines.append(f"NAS-Bench-201 {dataset}: {seeds}{setting}; test accuracy "
                     "(200 epochs) of the architecture chosen by 12-epoch validation accuracy after n evaluations")
        lines.append(f"  {'strategy':<24}" + "".join(f"{'n=' + n:>18}" for n in counts) + f"{'s':>8}")
        for r in rows:
            cells = "".join(f"{r['at'][n]['mean']:>11.2f} ± {r['at'][n]['std']:.2f}" if n in r["at"] else f"{'':>18}"
                            for n in counts)
            name = r["strategy"] if same else f"{r['strategy']} ({r['seeds']})"
            lines.append(f"  {name:<24}{cells}{r['wall_time_s']:>8.0f}")
            if r.get("scheme"):
                lines.append(f"  {'  worker utilisation':<24}{r['worker_utilization']:>18.1%}{_spread(r)}")
            if clock:
                lines.append(f"  {'  simulated hours':<24}" + "".join(
                    f"{r['at'][n]['simulated_hours_mean']:>18.1f}" if n in r["at"] else f"{'':>18}" for n in counts))
        for name, row in rows[0]["published"].items():
            lines.append(f"  {'published: ' + name:<24}{row['mean']:>11.2f} ± {row['std']:.2f}")
        lines.append(f"  {'ceiling: optimum':<24}{rows[0]['ceilings']['optimum']:>11.2f}")
        lines.append(f"  {'ceiling: protocol':<24}{rows[0]['ceilings']['protocol']:>11.2f}")
    return "\n".join(lines)
