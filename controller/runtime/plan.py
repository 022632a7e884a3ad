"""A spec resolved once into a typed plan: the search space built, the strategy's and evaluator's
options read into their typed classes, the dataset referenced, the execution path picked from what
the strategy declares (never from its name), and the scheduler's budgets. Every execution path, in
this process or in a Ray actor, consumes the plan; nothing re-parses the spec.

Resolving checks every field and every plug-in's options, with errors that name the field, in
order of cost: the spec's sizes and shapes first, then the space, the strategy, the evaluator and
the dataset, so that a careless or hostile request is refused before anything large is built, and
nothing is read from disk.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raynas.common import ConfigError, DataError, check_choice, prefixed_errors
from raynas.controller.runtime.spec import BATCHING, RUNTIMES, SCHEDULERS, SearchSpec
from raynas.controller.strategies import Strategy, strategy_class
from raynas.search_spaces import SearchSpace, get_space
from raynas.workers.evaluation import Evaluator, Scoring, check_evaluator, evaluator_class, evaluator_options

#: The execution paths: one process; one proposer over Ray workers; Zoph & Le's scheme (shards,
#: replicas, workers); a Ray Tune experiment with a scheduler.
LOCAL, PROPOSER, SCHEME, TUNE = "local", "proposer", "scheme", "tune"
#: Li & Talwalkar's ASHA as their released command runs it (darts_asha: `-r 1 -R 300`, eta 4 in the
#: code): R = 300 epochs and one halving round, so the first rung is r = R / eta = 75 epochs (`-r` is
#: the number of halving rounds, not r). eta = 4 is the spec's default.
ASHA_MAX_EPOCHS = 300
ASHA_HALVING_ROUNDS = 1


@dataclass(frozen=True)
class Ladder:
    """A scheduler's budgets: the first rung r, the most a child reaches R, and the budgets at
    which a trial stops to report a whole evaluation: its rungs and R (the table's 12 and 200)."""

    grace: int
    maximum: int
    budgets: tuple[int, ...]


@dataclass(frozen=True)
class EvaluatorRecipe:
    """Builds what each evaluation runs, where it runs (this process, or each Ray worker): the
    spec's evaluator on the loaded dataset, behind a one-shot strategy's weight-sharing search when
    it declares one (`search(search_options, space, data, evaluator)`). The dataset is read once
    per process, after checking that this node sees the files the driver planned with."""

    space: SearchSpace
    evaluator: type[Evaluator]
    options: Any
    dataset: Any
    seed: int
    fingerprint: str | None = None
    search: Any = None
    search_options: Any = None

    def __call__(self) -> Evaluator:
        data = None
        if self.dataset is not None:
            if self.fingerprint is not None and self.dataset.fingerprint() != self.fingerprint:
                raise DataError(f"{socket.gethostname()} sees other files at {self.dataset.path} than the node that "
                                "planned the search: every node must read the same data (mount one shared file "
                                "system at the same path on all of them)")
            data = self.dataset.load(self.seed)
        evaluator = self.evaluator.create(self.space, data if self.evaluator.needs_data else None, self.options)
        if self.search is not None:
            return self.search(self.search_options, self.space, data, evaluator)
        return evaluator


@dataclass(frozen=True)
class Plan:
    """What a search runs, resolved from its spec. Picklable: Ray actors receive it whole."""

    spec: SearchSpec
    space: SearchSpace
    strategy: type[Strategy]
    strategy_options: Any
    evaluator: type[Evaluator]
    evaluator_options: Any
    #: What evaluations (or one-shot supernets) train on; None when nothing trains on data.
    dataset: Any
    #: What the figures score: the dataset they are on, the validation metric and its direction.
    scoring: Scoring
    path: str
    ladder: Ladder | None = None
    #: The dataset's files as the driver saw them (`fingerprinted`); a worker that sees other files
    #: refuses to train.
    fingerprint: str | None = None

    @property
    def one_shot(self) -> bool:
        return self.strategy.needs.search is not None

    def fingerprinted(self) -> Plan:
        """This plan with the dataset's fingerprint as this node sees it, for the workers to compare."""
        if self.dataset is None or self.spec.runtime != "ray":
            return self
        return dataclasses.replace(self, fingerprint=self.dataset.fingerprint())

    def new_strategy(self, seed: int | None = None) -> Strategy:
        return self.strategy(self.space, seed=self.spec.seed if seed is None else seed, options=self.strategy_options)

    def make_evaluator(self) -> Evaluator:
        """What each evaluation runs, built in this process (`evaluator_recipe()()`)."""
        return self.evaluator_recipe()()

    def evaluator_recipe(self) -> EvaluatorRecipe:
        """What a worker needs to build the evaluator, without the strategy: a strategy written in a
        user's own module (a notebook, a test) need not be importable where children train."""
        search = self.strategy.needs.search
        return EvaluatorRecipe(self.space, self.evaluator, self.evaluator_options, self.dataset, self.spec.seed,
                               self.fingerprint, search, self.strategy_options if search is not None else None)

    def result_fields(self) -> dict[str, Any]:
        """What result.json says of the data: the scoring data, and a one-shot search's own."""
        fields = {"dataset": self.scoring.dataset}
        if self.one_shot:
            fields.update(search_dataset=self.dataset.name, proxy_dataset=self.dataset.name != self.scoring.dataset)
        return fields


def resolve(spec: SearchSpec) -> Plan:
    """Check `spec` whole and build its plan; a ConfigError names the first bad field."""
    spec.check_sizes()
    check_choice("runtime", spec.runtime, RUNTIMES)
    check_choice("replica_batch", spec.replica_batch, BATCHING)
    check_choice("scheduler", spec.scheduler, SCHEDULERS)
    from raynas.param_server import ShardConfig

    ShardConfig(accumulate=spec.ps_accumulate, staleness_policy=spec.staleness_policy,
                max_staleness=spec.max_staleness)
    with prefixed_errors("space_options", spec.space_options):
        space = get_space(spec.space, **spec.space_options)
    strategy = strategy_class(spec.strategy)
    strategy_options = _with_threads(strategy.parse_options(space, spec.strategy_options), spec)
    path = _path(spec, strategy)
    if path == SCHEME:
        strategy.scheme(strategy_options)
    evaluator = evaluator_class(spec.evaluator)
    dataset = _dataset(spec, strategy, evaluator)
    raw = dict(spec.evaluator_options)
    if strategy.needs.search is not None:
        raw = {**evaluator.one_shot_defaults(space, dataset), **raw}
    ladder = None
    if path == TUNE:
        ladder = _ladder(spec, evaluator, raw)
        if evaluator.budget_option is not None:
            # Under a scheduler a child's schedule spans R epochs, wherever it is stopped.
            raw[evaluator.budget_option] = ladder.maximum
    options = _with_threads(evaluator_options(evaluator, raw), spec)
    check_evaluator(evaluator, space, dataset if evaluator.needs_data else None, options)
    scoring = evaluator.scoring(space, dataset if evaluator.needs_data else None, options)
    _check_search_data(spec, strategy, evaluator, dataset, scoring)
    return Plan(spec=spec, space=space, strategy=strategy, strategy_options=strategy_options, evaluator=evaluator,
                evaluator_options=options, dataset=dataset, scoring=scoring, path=path, ladder=ladder)


#: The spec's fields only Zoph & Le's scheme reads.
SCHEME_FIELDS = ("controllers", "children", "ps_shards", "ps_accumulate", "staleness_policy", "max_staleness",
                 "replica_batch")


def check_scheme_fields(plan: Plan, given: Iterable[str]) -> None:
    """A ConfigError when the user set (`given`: the fields a config file or flag set) scheme settings
    that this search would ignore: a flag without effect is a mistake to name, not to pass over."""
    given = set(given)
    ignored = [name for name in SCHEME_FIELDS if name in given]
    if not ignored or plan.path == SCHEME:
        return
    why = {LOCAL: "--runtime local runs the strategy in this process",
           TUNE: "under a scheduler Ray Tune runs the trials",
           PROPOSER: f"the {plan.spec.strategy} strategy has no shared policy: one proposer feeds W workers"}
    raise ConfigError(ignored[0], f"{', '.join(ignored)} set Zoph & Le's scheme, which this search does not run "
                      f"({why[plan.path]})", "rl or ppo on --runtime ray without a scheduler; --workers W sets "
                      "how many children train at once here")


def _path(spec: SearchSpec, strategy: type[Strategy]) -> str:
    if spec.scheduler != "none":
        if spec.runtime != "ray":
            raise ConfigError("scheduler", "Ray Tune's schedulers run on Ray, not in the local runtime",
                              "--runtime ray (an embedded single-node Ray without --address)")
        if strategy.needs.search is not None or strategy.needs.budgets:
            raise ConfigError("scheduler", f"the {strategy.name} strategy runs its own evaluations; a scheduler "
                              "stops the children of multi-trial strategies", "random, evolution, rl")
        return TUNE
    if spec.runtime == "local":
        return LOCAL
    return SCHEME if strategy.needs.shared_policy else PROPOSER


def _dataset(spec: SearchSpec, strategy: type[Strategy], evaluator: type[Evaluator]) -> Any:
    """The dataset reference, where the evaluator or the strategy's supernet trains on data."""
    if not (evaluator.needs_data or strategy.needs.search is not None):
        return None
    from raynas.workers.datasets import get_dataset

    return get_dataset(spec.dataset, spec.data_path, spec.dataset_options)


def _with_threads(options: Any, spec: SearchSpec) -> Any:
    """Options with a `num_threads` left unset get the child's CPU share: more intra-op threads
    than reserved cores only make concurrent children (or a busy neighbour) fight over them."""
    if getattr(options, "num_threads", 0) is None:
        return dataclasses.replace(options, num_threads=max(1, int(spec.cpus_per_child)))
    return options


def _check_search_data(spec: SearchSpec, strategy: type[Strategy], evaluator: type[Evaluator], dataset: Any,
                       scoring: Scoring) -> None:
    """A supernet trained on other data than the evaluator scores is a proxy, allowed only when asked for."""
    if not isinstance(spec.proxy_dataset, bool):
        raise ConfigError("proxy_dataset", f"must be true or false, got {spec.proxy_dataset!r}")
    searches = strategy.needs.search is not None
    if spec.proxy_dataset and not (searches and not evaluator.needs_data):
        raise ConfigError("proxy_dataset", "applies only to a one-shot search scored without training (the table)")
    if searches and dataset.name != scoring.dataset and not spec.proxy_dataset:
        raise ConfigError("dataset", f"the supernet would train on {dataset.name} while the {spec.evaluator} "
                          f"evaluator scores its architectures by {scoring.dataset} figures",
                          f"--dataset {scoring.dataset} (with --data), or --proxy-dataset to score a proxy search")


def _ladder(spec: SearchSpec, evaluator: type[Evaluator], raw: dict[str, Any]) -> Ladder:
    """The scheduler's budgets, in epochs: r, R and the budgets a trial reports at."""
    if evaluator.budget_option is None:
        # Fixed budgets (the table's 12 and 200 epochs): r and R are the first and the last.
        budgets = evaluator.budgets(evaluator_options(evaluator, raw)).choices
        low, high = budgets[0], budgets[-1]
        if spec.grace_period not in (None, low):
            raise ConfigError("grace_period", f"the {evaluator.name} evaluator has no {spec.grace_period}-epoch "
                              "results", (low,))
        if spec.max_budget not in (None, high):
            raise ConfigError("max_budget", f"the {evaluator.name} evaluator has no {spec.max_budget}-epoch "
                              "results", (high,))
        ladder = Ladder(low, high, tuple(budgets))
    else:
        given = raw.get(evaluator.budget_option)
        if spec.max_budget is not None and given is not None and given != spec.max_budget:
            raise ConfigError("max_budget", f"{spec.max_budget} differs from evaluator_options."
                              f"{evaluator.budget_option}={given}: under a scheduler the children's schedule is "
                              "max_budget epochs", "one of the two")
        maximum = spec.max_budget or given or ASHA_MAX_EPOCHS
        # A rung between two epochs is met at the next one, as below.
        grace = spec.grace_period or max(1, math.ceil(maximum / spec.reduction_factor ** ASHA_HALVING_ROUNDS - 1e-9))
        if grace > maximum:
            raise ConfigError("grace_period", f"r={grace} exceeds R={maximum}", f"1..{maximum}")
        # Ray Tune's rungs, r * eta^k below R; a rung between two epochs is met at the next one.
        count = int(math.log(maximum / grace) / math.log(spec.reduction_factor) + 1)
        rungs = {math.ceil(grace * spec.reduction_factor ** k - 1e-9) for k in range(count)}
        ladder = Ladder(grace, maximum, tuple(sorted({b for b in rungs if b < maximum} | {maximum})))
    rungs = int(math.log(ladder.maximum / ladder.grace) / math.log(spec.reduction_factor) + 1e-9) + 1
    if spec.brackets > rungs:
        raise ConfigError("brackets", f"{spec.brackets} brackets need more rungs than the {rungs} between "
                          f"r={ladder.grace} and R={ladder.maximum} at eta={spec.reduction_factor:g}", f"1..{rungs}")
    return ladder


__all__ = ["ASHA_HALVING_ROUNDS", "ASHA_MAX_EPOCHS", "LOCAL", "SCHEME_FIELDS", "EvaluatorRecipe", "Ladder", "PROPOSER",
           "Plan", "SCHEME", "TUNE", "check_scheme_fields", "resolve"]
