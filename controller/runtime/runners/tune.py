"""`--scheduler asha`: the search as a Ray Tune experiment, with the run directory as its truth.

The strategy proposes through Tune's searcher interface (`StrategySearcher` over a
`LedgerBook`), each trial evaluates one architecture budget by budget (`run_trial`), and Tune's
ASHAScheduler stops the unpromising ones at rungs. The book claims each trial's evaluation id
from the ledger, records every finished or stopped trial in evaluations.jsonl once (with the
budget it reached and its curve) before the strategy learns from it, and the scheduler's rung
decisions go to rungs.jsonl, the dashboard and the watchers.

Tune's experiment state (its trials, this book, the scheduler's rungs) is one consistent cut,
written by Tune every few seconds and when the search stops; a resume restores it with
`Tuner.restore`. Whatever the log gained after that cut wins: a trial the cut holds as running
but the log as recorded is observed from the log and stopped at its first result, so no
evaluation is recorded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from raynas.controller.cluster import metrics
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.plan import Ladder, Plan
from raynas.controller.runtime.rundir import RUNG_LOG, RunDirectory
from raynas.controller.runtime.runners.ray import RayRunner
from raynas.controller.runtime.signals import SignalLog
from raynas.controller.strategies import Strategy
from raynas.controller.strategies.trials import FINISHED, TrialBook
from raynas.workers.evaluation import EvalResult
from raynas.workers.execution import Task

CLAIMANT = "tune"
#: Tune's experiment, inside the run directory's checkpoint folder.
EXPERIMENT = "tune"
#: The result key that counts a trial's budget (epochs).
TIME_ATTR = "epoch"


class LedgerBook(TrialBook):
    """A trial book whose trials are the search's evaluations: ids, seeds and checkpoint files
    from the ledger, every ended trial recorded in the run directory before the strategy sees it."""

    def __init__(self, strategy: Strategy, ledger: Ledger, ladder: Ladder, metric: str, mode: str,
                 checkpoints: Path, on_record: Callable[[dict], None]):
        super().__init__(strategy, metric, mode, budget_attr=TIME_ATTR, max_budget=ladder.maximum)
        self.ledger = ledger
        self.ladder = ladder
        self.checkpoints = checkpoints
        self.on_record = on_record
        #: Called when asked for a trial while the job is stopping (leaves Tune's loop).
        self.halt: Callable[[], None] = lambda: None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.ledger.stopping:
            self.halt()
            return None
        claims = self.ledger.claim(CLAIMANT, 1, [t["evaluation"] for t in self.trials.values()])
        if not claims:  # the budget is spent, or its time
            return FINISHED
        claim = claims[0]
        (arch,) = self.strategy.propose(1)
        text = self.strategy.space.format(arch)
        checkpoint = str(self.checkpoints / f"{claim.id}.ckpt")
        self.trials[trial_id] = {"arch": text, "curve": [], "budget": None, "evaluation": claim.id,
                                 "seed": claim.seed, "checkpoint": checkpoint}
        return {"arch": text, "evaluation": claim.id, "seed": claim.seed, "checkpoint": checkpoint,
                "budgets": list(self.ladder.budgets), "metric": self.metric, "time_attr": TIME_ATTR}

    def holds(self, trial_id: str) -> bool:
        return trial_id in self.trials

    def settle(self, trial: dict[str, Any], arch: Hashable, evaluation: EvalResult) -> None:
        task = Task(trial["evaluation"], arch, trial["seed"], evaluation.metrics.get("budget"), trial["checkpoint"])
        if self.ledger.record(task, evaluation):
            self.on_record(self.ledger.records[-1])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Tune's cut of the book, reconciled with the log: trials recorded since are observed
        from their records (and their Tune trials stopped); the rest keep their evaluation ids."""
        super().load_state_dict(state)
        logged = {r["id"]: r for r in self.ledger.records}
        for trial_id, trial in list(self.trials.items()):
            record = logged.get(trial["evaluation"])
            if record is not None:
                del self.trials[trial_id]
                self.strategy.observe(self.strategy.space.parse(trial["arch"]), EvalResult.from_dict(record))
        self.ledger.reclaim(CLAIMANT, [t["evaluation"] for t in self.trials.values()])


def rung_summary(plan: Plan, rungs: list[list[float]], events: list[dict[str, Any]],
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    """What result.json says of the scheduler: its settings, and per rung how many trials reached
    it, how many it promoted and stopped, and its last cutoff."""
    spec, ladder = plan.spec, plan.ladder
    per_rung: dict[float, dict[str, Any]] = {}
    for e in events:
        entry = per_rung.setdefault(e["rung"], {"rung": e["rung"], "reached": 0, "promoted": 0, "stopped": 0,
                                                "cutoff": None})
        entry["reached"] += 1
        entry["promoted" if e["decision"] == "continue" else "stopped"] += 1
        entry["cutoff"] = e["cutoff"]
    budgets = [r.get("metrics", {}).get("budget") for r in records if r.get("status") == "ok"]
    return {
        "name": spec.scheduler, "grace_period": ladder.grace, "max_budget": ladder.maximum,
        "reduction_factor": spec.reduction_factor, "brackets": spec.brackets, "rungs_per_bracket": rungs,
        "rungs": [per_rung[k] for k in sorted(per_rung)],
        "full_budget": sum(b == ladder.maximum for b in budgets),
        "stopped_early": sum(b is not None and b < ladder.maximum for b in budgets),
        "epochs_trained": sum(b for b in budgets if b is not None),
    }


def run_tune(plan: Plan, run: RunDirectory, ledger: Ledger, strategy: Strategy, namespace: str, *,
             on_record: Callable[[dict], None], on_rung: Callable[[dict], None],
             stop_requested: Callable[[], bool]) -> tuple[bool, dict[str, Any]]:
    """Run or resume the search as a Tuner; returns (interrupted, the scheduler's summary)."""
    from raynas.controller.cluster import tune

    spec, ladder = plan.spec, plan.ladder
    metric, mode = plan.scoring.metric, plan.scoring.mode
    checkpoints = run.path / "checkpoint"
    evaluations = checkpoints / "evaluations"
    evaluations.mkdir(parents=True, exist_ok=True)
    book = LedgerBook(strategy, ledger, ladder, metric, mode, evaluations, on_record)
    events = run.records(RUNG_LOG)
    seen = {(e["evaluation"], e["rung"]) for e in events}

    def rung(event: dict) -> None:
        # A trial restarted from an earlier cut may arrive at a rung it reached before: logged once.
        if (event["evaluation"], event["rung"]) in seen:
            return
        seen.add((event["evaluation"], event["rung"]))
        run.append(event, RUNG_LOG)
        events.append(event)
        on_rung(event)

    searcher = tune.StrategySearcher(book=book)
    scheduler = tune.RungScheduler(
        time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=ladder.maximum, grace_period=ladder.grace,
        reduction_factor=spec.reduction_factor, brackets=spec.brackets, seed=spec.seed, on_rung=rung,
        keep=lambda trial: book.holds(trial.trial_id), stop_requested=stop_requested)
    book.halt = scheduler.halt_if_asked
    searcher.attach(namespace)
    scheduler.attach(namespace)
    try:
        interrupted = tune.fit(
            searcher, scheduler, plan.evaluator_recipe(), storage=checkpoints, name=EXPERIMENT,
            samples=spec.evaluations, concurrency=spec.workers,
            resources={"cpu": spec.cpus_per_child, "gpu": spec.gpus_per_child}, max_failures=spec.max_retries)
    finally:
        tune.detach(namespace)
    return interrupted, rung_summary(plan, scheduler.rungs(), events, ledger.records)


class TuneRunner(RayRunner):
    """The strategy as Ray Tune's searcher, Tune's scheduler stopping children at rungs."""

    def run_on_ray(self) -> bool:
        context, plan = self.context, self.plan
        context.open()
        strategy = plan.new_strategy()
        ledger = context.new_ledger()
        job = context.namespace
        recorder, signals = context.recorder(ledger), SignalLog(context.run, job)

        def on_record(record: dict) -> None:
            recorder(record)
            signals.update(strategy.signals())

        interrupted, context.extra["scheduler"] = run_tune(
            plan, context.run, ledger, strategy, job, on_record=on_record,
            on_rung=lambda e: metrics.report_rung(job, e["rung"], e["decision"], e["cutoff"]),
            stop_requested=context.stop.is_set)
        signals.update(strategy.signals())  # the last record is observed after it is logged
        return interrupted


__all__ = ["LedgerBook", "RUNG_LOG", "TuneRunner", "run_tune", "rung_summary"]
