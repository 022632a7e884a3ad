"""Ray Tune and raynas: any strategy as a Ray Tune searcher, the spec's evaluator as a Tune
trainable, and Tune's ASHAScheduler stopping children at rungs (`nas search --scheduler asha`).

- `StrategySearcher` turns a raynas `Strategy` into a `ray.tune.search.Searcher` for any
  `Tuner` and trainable: each trial's config gets `"arch"`, the architecture's text.
- `run_trial` is the trainable of `--scheduler asha`: it evaluates the trial's architecture one
  budget at a time (each evaluation continues the last one's checkpoint, exactly), reporting
  the scheduler's metric and the whole evaluation after each, so a stopped trial's record is
  the evaluation at the budget it reached.
- `RungScheduler` is Tune's `AsyncHyperBandScheduler` (ASHA; brackets > 1 for asynchronous
  Hyperband) with what a search needs around it: rung decisions reported as they are made,
  seeded bracket choice, its rungs saved with Tune's experiment state (`SchedulerState`), and
  a stop that leaves the experiment resumable.

Tune pickles its searcher and scheduler into the experiment (`tuner.pkl`). Those of a search
job are attached to the job under its key and pickle as that key alone, so `Tuner.restore`
finds the resumed job's own objects (with their ledger and logs) instead of copies of the
first run's; their state then comes back through Tune's own restore.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher

from raynas.common import ConfigError, NasError
from raynas.common.files import json_default, write_json_atomic
from raynas.controller.strategies import Strategy
from raynas.controller.strategies.trials import EVALUATION, FINISHED, TrialBook

#: Objects of running search jobs that Tune pickles, by job key and role.
_ATTACHED: dict[str, dict[str, Any]] = {}


class SearchStopped(NasError):
    """Raised inside Tune's loop to leave it at a safe point when the job is asked to stop."""


def _attached(key: str, role: str) -> Any:
    try:
        return _ATTACHED[key][role]
    except KeyError:
        raise ConfigError("resume", f"the Tune experiment of search {key} resumes only through its own job "
                          "(nas search --resume, ResumeSearch)") from None


class _Attachable:
    """Pickles as its job's key when attached, so that Tune's restore gets the live object."""

    _key: str | None = None
    _role = ""

    def attach(self, key: str) -> None:
        self._key = key
        _ATTACHED.setdefault(key, {})[self._role] = self

    def __reduce_ex__(self, protocol):
        if self._key is None:
            return super().__reduce_ex__(protocol)
        return _attached, (self._key, self._role)


def detach(key: str) -> None:
    _ATTACHED.pop(key, None)


class StrategySearcher(_Attachable, Searcher):
    """A raynas strategy as a Ray Tune searcher.

    `StrategySearcher(get_strategy("evolution", space, seed=0), metric="acc", mode="max")`:
    each suggested config holds `"arch"` (the architecture's text, `space.parse` reads it back);
    the trial's last `metric` is its reward (negated for mode "min"). `budget_attr` counts the
    budget a trial reached and `max_budget` is a whole trial's, so that under a scheduler that
    stops trials early the strategy weighs their results by the share they reached. Its state
    (the strategy's and the live trials') is saved and restored with the experiment.
    """

    _role = "searcher"

    def __init__(self, strategy: Strategy | None = None, metric: str | None = None, mode: str | None = None,
                 budget_attr: str = "training_iteration", max_budget: int | None = None, *,
                 book: TrialBook | None = None):
        if book is None:
            if strategy is None:
                raise ConfigError("strategy", "a StrategySearcher needs a strategy (or a trial book)")
            book = TrialBook(strategy, metric, mode, budget_attr, max_budget)
        super().__init__(metric=book.metric, mode=book.mode)
        self.book = book

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        ok = self.book.configure(metric, mode)
        # What Searcher's metric and mode read; a subclass sets them (Tune's own searchers do; there is no setter).
        self._metric, self._mode = self.book.metric, self.book.mode
        return ok

    def suggest(self, trial_id: str) -> dict | str | None:
        config = self.book.suggest(trial_id)
        return Searcher.FINISHED if config == FINISHED else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.book.result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.book.complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        import torch

        torch.save(self.book.state_dict(), checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        import torch

        self.book.load_state_dict(torch.load(checkpoint_path, weights_only=True))


class RungScheduler(_Attachable, AsyncHyperBandScheduler):
    """Tune's ASHA with the hooks a search job needs.

    Tune has no public API for what these hooks read and write: ASHA's rungs (the values each
    recorded, its cutoffs) and its brackets, and the controller's experiment checkpoint taken
    mid-run (a `Stopper` would end the running trials instead of leaving them to resume). They are
    read here only (`_brackets`, `_trial_info`, a bracket's `_rungs` and `cutoff`, `_num_stopped`,
    the controller's `checkpoint`), and pyproject.toml holds Ray to the minor version the tests
    run on (tests/unit/test_rung_scheduler.py, tests/integration/test_asha.py).

    `on_rung(event)` hears every rung decision: the trial, its evaluation id, the rung, the
    value it arrived with, the cutoff it was held to (the rung's top 1/eta so far; None while
    the rung is empty) and "continue" (promoted) or "stop". `keep(trial)` False stops a trial
    at its first result (its evaluation is already in the run directory). `stop_requested()`
    True makes the next step write Tune's experiment state and leave the loop (`SearchStopped`).
    Brackets are drawn with the scheduler's own seeded generator, and a restored trial keeps its.
    """

    _role = "scheduler"

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, brackets: int = 1, seed: int = 0,
                 on_rung: Callable[[dict], None] | None = None, keep: Callable[[Any], bool] | None = None,
                 stop_requested: Callable[[], bool] | None = None):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets)
        # Our own copies of what Tune keeps privately (its metric and mode are public), for reporting its decisions.
        self.time_attr, self.max_t, self.sign = time_attr, max_t, 1.0 if mode == "max" else -1.0
        self._rng = np.random.default_rng(seed)
        self._on_rung = on_rung or (lambda event: None)
        self._keep = keep or (lambda trial: True)
        self._stop_requested = stop_requested or (lambda: False)
        self._controller = None

    def rungs(self) -> list[list[float]]:
        """Each bracket's rungs (budgets), lowest first."""
        return [sorted(milestone for milestone, _ in bracket._rungs) for bracket in self._brackets]

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id in self._trial_info:
            return
        sizes = np.array([len(b._rungs) for b in self._brackets])
        weights = np.exp(sizes - sizes.max())
        self._trial_info[trial.trial_id] = self._brackets[self._rng.choice(len(sizes), p=weights / weights.sum())]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._keep(trial):
            return TrialScheduler.STOP
        arrival = self._arrival(trial, result)
        decision = super().on_trial_result(tune_controller, trial, result)
        if arrival is not None:
            rung, cutoff = arrival
            self._on_rung({"trial_id": trial.trial_id, "evaluation": trial.config.get("evaluation"),
                           "rung": rung, "budget": result[self.time_attr], "value": result[self.metric],
                           "cutoff": None if cutoff is None else float(cutoff) * self.sign,
                           "decision": "stop" if decision == TrialScheduler.STOP else "continue"})
        return decision

    def _arrival(self, trial, result: dict) -> tuple[float, float | None] | None:
        """The rung this result will be recorded at and the cutoff it meets there (Tune's rule:
        the highest rung at or below the result's budget that the trial has not reached yet)."""
        t, value = result.get(self.time_attr), result.get(self.metric)
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None or t is None or value is None or math.isnan(value) or t >= self.max_t:
            return None
        for milestone, recorded in bracket._rungs:
            if t >= milestone and trial.trial_id not in recorded:
                return milestone, bracket.cutoff(recorded)
        return None

    def choose_trial_to_run(self, tune_controller):
        # Past Tune's wrapper, which warns of every call a scheduler makes on the controller.
        self._controller = getattr(tune_controller, "_tune_controller", tune_controller)
        self.halt_if_asked()
        return super().choose_trial_to_run(tune_controller)

    def halt_if_asked(self) -> None:
        """Leave Tune's loop if the job was asked to stop: called at each step, and by the searcher
        while Tune waits for a new trial (it takes no step then)."""
        if not self._stop_requested():
            return
        if self._controller is not None:
            # Tune's experiment state (trials, searcher, this scheduler's rungs) as it is now: what
            # a resume starts from. Running trials stay unfinished, so the resume continues them.
            self._controller.checkpoint(force=True, wait=True)
        raise SearchStopped("the search was asked to stop")

    def state_dict(self) -> dict[str, Any]:
        brackets = self._brackets
        return {"trials": {tid: brackets.index(b) for tid, b in self._trial_info.items()},
                "rungs": [[dict(recorded) for _, recorded in b._rungs] for b in brackets],
                "num_stopped": self._num_stopped, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._trial_info = {tid: self._brackets[i] for tid, i in state["trials"].items()}
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            for (_, recorded), saved in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(saved)
        self._num_stopped = state["num_stopped"]
        self._rng.bit_generator.state = state["rng"]


class SchedulerState(tune.Callback):
    """Saves the scheduler's rungs with Tune's experiment state and brings them back on restore
    (Tune saves searchers and callbacks, not schedulers)."""

    def __init__(self, scheduler: RungScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict | None:
        return {"scheduler": self.scheduler.state_dict()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


# -- the trainable -----------------------------------------------------------------------------

_evaluators: list[tuple[Any, Any]] = []


def _evaluator(make_evaluator: Callable[[], Any]) -> Any:
    """One evaluator per trial process (Tune reuses the process for the next trial): the dataset
    is loaded once."""
    if not _evaluators or _evaluators[0][0] != make_evaluator:
        _evaluators[:] = [(make_evaluator, make_evaluator())]
    return _evaluators[0][1]


def run_trial(config: dict[str, Any], make_evaluator: Callable[[], Any]) -> None:
    """Evaluate `config["arch"]` at each of `config["budgets"]` (the rungs and R) in turn: every
    epoch's validation reaches Tune as it finishes, and each budget's whole evaluation with it.

    Each evaluation continues the evaluation checkpoint (`config["checkpoint"]`), so the trial
    costs one straight run. Beside it, a marker keeps the last result reported: a restarted
    trial (resume, dead worker) reports it again, so Tune hears every budget exactly as it was
    reached, and continues after it.
    """
    evaluator = _evaluator(make_evaluator)
    arch, seed, checkpoint = config["arch"], config["seed"], config["checkpoint"]
    metric, time_attr = config["metric"], config["time_attr"]
    marker = Path(f"{checkpoint}.last.json")
    last = json.loads(marker.read_text()) if marker.exists() else None
    if last is not None and (last["arch"], last["seed"]) != (arch, seed):
        # Another evaluation once held this id (a claim of a run that crashed): start clean.
        last = None
        for stale in (marker, Path(checkpoint)):
            stale.unlink(missing_ok=True)
    if last is not None:
        tune.report(last["report"])
    done = last["budget"] if last else 0
    heard: list[dict] = []
    for budget in config["budgets"]:
        if budget <= done:
            continue
        heard.clear()

        def forward(data: dict, budget: int = budget) -> None:
            # Epochs between two budgets reach Tune (and the scheduler, which decides nothing
            # there) as they finish; the budget's own epoch is reported with its evaluation below.
            heard.append(data)
            if data.get("epoch", budget) < budget:
                tune.report({time_attr: data["epoch"], metric: float(data.get(metric, float("nan")))})

        result = evaluator.evaluate(arch, seed=seed, budget=budget, report=forward, checkpoint=checkpoint)
        value = heard[-1].get(metric) if result.ok and heard else None
        report = {time_attr: budget, metric: float("nan") if value is None else float(value),
                  EVALUATION: json.dumps(result.to_dict(), default=json_default)}
        write_json_atomic(marker, {"arch": arch, "seed": seed, "budget": budget, "report": report}, durable=False)
        tune.report(report)
        if not result.ok:
            return


def trial_dirname(trial) -> str:
    """A trial's folder: its evaluation id and trial id (Tune's default spells out the config)."""
    return f"{trial.config.get('evaluation', 'trial')}_{trial.trial_id}"


# -- a search as a Tuner -----------------------------------------------------------------------


def fit(searcher: StrategySearcher, scheduler: RungScheduler, make_evaluator: Callable[[], Any], *,
        storage: str | Path, name: str, samples: int, concurrency: int, resources: dict[str, float],
        max_failures: int) -> bool:
    """Run (or resume, when `storage/name` holds Tune's state) the search as a Tuner; True if it
    was stopped before its end (asked to, or interrupted)."""
    import ray
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.error import TuneError

    if ray.util.client.ray.is_connected():
        # Through Ray Client the Tuner runs in an actor, away from this job's ledger and logs.
        raise ConfigError("address", "a search with a scheduler drives Ray Tune from its own process, "
                          "which Ray Client (ray://) moves elsewhere", "auto (on a cluster node) or none")

    trainable = tune.with_resources(tune.with_parameters(run_trial, make_evaluator=make_evaluator), resources)
    path = str(Path(storage).resolve() / name)
    if Tuner.can_restore(path):
        tuner = Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=samples,
                                   max_concurrent_trials=concurrency, reuse_actors=True,
                                   trial_dirname_creator=trial_dirname),
            run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()), verbose=0,
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 callbacks=[SchedulerState(scheduler)]),
        )
    try:
        tuner.fit()
    except (TuneError, SearchStopped) as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, SearchStopped):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        return True
    # Interrupted (Ctrl-C: Tune writes its state and returns) with trials still unfinished.
    return bool(searcher.book.live())


__all__ = ["RungScheduler", "SchedulerState", "SearchStopped", "StrategySearcher", "detach", "fit", "run_trial"]
