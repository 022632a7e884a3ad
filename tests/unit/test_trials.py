"""Strategies under a scheduler, without Ray: the trial book that drives a strategy from another
loop's trials, fidelity-aware learning (evolution, rl), the spec's scheduler fields, and the
run directory's budget-first ranking."""

from __future__ import annotations

import io

import pytest
import torch

from raynas.common import ConfigError
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.rundir import summarize
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.strategies import get_strategy
from raynas.controller.strategies.trials import EVALUATION, TrialBook
from raynas.search_spaces import get_space
from raynas.search_spaces.nb201 import NB201Arch
from raynas.workers.evaluation import EvalResult

NB201 = get_space("nb201")


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_book_proposes_one_architecture_per_trial_and_observes_its_last_result():
    book = TrialBook(get_strategy("evolution", NB201, seed=0, population_size=2, sample_size=1), "acc", "max")
    configs = [book.suggest(f"t{i}") for i in range(3)]
    assert all(NB201.validate(NB201.parse(c["arch"])) for c in configs)
    book.result("t0", {"acc": 0.5, "training_iteration": 1})
    book.result("t0", {"acc": 0.7, "training_iteration": 2})
    # Tune hands the last result to on_trial_complete again: counted once.
    arch, result = book.complete("t0", {"acc": 0.7, "training_iteration": 2})
    assert str(arch) == configs[0]["arch"] and result.reward == 0.7
    assert result.metrics == {"budget": 2, "curve": [0.5, 0.7]}
    assert book.strategy.population[0] == (arch, 0.7)
    assert book.complete("t0", {"acc": 0.9}) is None, "a trial is observed once"
    assert book.complete("t1", None, error=True)[1].status == "failed"
    assert book.complete("t2", None)[1].status == "cancelled"
    assert book.live() == []


def test_a_min_metric_is_negated_and_a_missing_one_is_a_failure():
    book = TrialBook(get_strategy("random", NB201), "loss", "min")
    book.suggest("a")
    book.suggest("b")
    assert book.complete("a", {"loss": 2.5, "training_iteration": 1})[1].reward == -2.5
    assert book.complete("b", {"other": 1.0, "training_iteration": 1})[1].status == "failed"


def test_results_of_raynas_trainable_carry_the_whole_evaluation():
    book = TrialBook(get_strategy("random", NB201), "val_acc", "max", budget_attr="epoch", max_budget=200)
    arch = book.suggest("t")["arch"]
    evaluation = EvalResult(arch, 0.71, metrics={"budget": 12, "test_acc_200ep": 93.1})
    _, seen = book.complete("t", {"epoch": 12, "val_acc": 0.71, EVALUATION: _json(evaluation)})
    assert seen == evaluation


def _json(result: EvalResult) -> str:
    import json

    return json.dumps(result.to_dict())


def test_the_book_state_survives_weights_only_loading_and_continues_exactly():
    def fresh():
        return TrialBook(get_strategy("random", NB201, seed=4), "acc", "max")

    book = fresh()
    for i in range(3):
        book.suggest(f"t{i}")
    book.result("t1", {"acc": 0.3, "training_iteration": 1})
    book.complete("t0", {"acc": 0.5, "training_iteration": 1})
    restored = fresh()
    restored.load_state_dict(round_trip(book.state_dict()))
    assert restored.live() == ["t1", "t2"] and restored.trials["t1"]["curve"] == [0.3]
    assert restored.suggest("t3") == book.suggest("t3")
    with pytest.raises(ConfigError):
        fresh().load_state_dict({"not": "a book"})


def test_fidelity_is_the_share_of_the_full_budget_reached():
    s = get_strategy("random", NB201)
    early = EvalResult("a", 0.9, metrics={"budget": 3})
    assert s.fidelity(early) == 1.0, "without a full budget every result is whole"
    s.full_budget = 12
    assert s.fidelity(early) == 0.25 and s.fidelity(EvalResult("a", 0.9)) == 1.0


def test_evolution_prefers_a_parent_that_reached_more_of_the_budget():
    s = get_strategy("evolution", NB201, seed=0, population_size=2, sample_size=2)
    s.full_budget = 200
    stopped, whole = NB201Arch(("nor_conv_3x3",) * 6), NB201Arch(("skip_connect",) * 6)
    # A 12-epoch accuracy higher than the 200-epoch one does not make the better parent.
    s.observe(stopped, EvalResult(str(stopped), 0.95, metrics={"budget": 12}))
    s.observe(whole, EvalResult(str(whole), 0.90, metrics={"budget": 200}))
    children = s.propose(40)
    assert all(sum(a != b for a, b in zip(c.ops, whole.ops)) == 1 for c in children
               if sum(a != b for a, b in zip(c.ops, stopped.ops)) > 1)
    assert sum(sum(a != b for a, b in zip(c.ops, whole.ops)) == 1 for c in children) > 30
    resumed = get_strategy("evolution", NB201, seed=0, population_size=2, sample_size=2)
    resumed.load_state_dict(round_trip(s.state_dict()))
    assert list(resumed.fidelities) == [0.06, 1.0]


def test_rl_earns_a_stopped_child_its_reward_times_the_share_reached():
    s = get_strategy("rl", NB201, seed=0, batch_size=4)
    s.full_budget = 4
    archs = s.propose(2)
    s.observe(archs[0], EvalResult(str(archs[0]), 0.8, metrics={"budget": 1}))
    s.observe(archs[1], EvalResult(str(archs[1]), 0.8, metrics={"budget": 4}))
    assert [reward for _, reward in s._batch] == [pytest.approx(0.2), pytest.approx(0.8)]


BASE = dict(space="nb201", strategy="random", scheduler="asha")


@pytest.mark.parametrize("changes,field", [
    (dict(runtime="local"), "scheduler"),
    (dict(strategy="darts"), "scheduler"),
    (dict(scheduler="hyperband"), "scheduler"),
    (dict(brackets=6), "brackets"),
    (dict(reduction_factor=1.0), "reduction_factor"),
    (dict(grace_period=0), "grace_period"),
    (dict(grace_period=10, max_budget=5), "grace_period"),
    (dict(max_budget=1001), "max_budget"),
    (dict(max_budget=5, evaluator_options={"epochs": 4}), "max_budget"),
    (dict(evaluator="table", grace_period=1), "grace_period"),
    (dict(evaluator="table", max_budget=100), "max_budget"),
])
def test_bad_scheduler_fields_name_themselves(changes, field):
    with pytest.raises(ConfigError) as bad:
        resolve(SearchSpec(**{**BASE, **changes}))
    assert bad.value.field == field


def test_the_ladder_defaults_to_the_papers_and_the_tables_budgets():
    # darts_asha's `mpi_hyperband.py -a asha -r 1 -R 300`: -r is the number of halving rounds
    # (SHAPolicy(eta=4, halving_rounds=1)), so the first rung is R * 4^-1 = 75 epochs and the
    # top quarter continues to 300.
    paper = resolve(SearchSpec(**BASE)).ladder
    assert (paper.grace, paper.maximum, paper.budgets) == (75, 300, (75, 300))
    assert resolve(SearchSpec(**BASE, max_budget=64)).ladder.budgets == (16, 64), "r = R / eta"
    odd = resolve(SearchSpec(**BASE, grace_period=1, max_budget=10, reduction_factor=2.5)).ladder
    assert odd.budgets == (1, 3, 7, 10), "rungs 2.5 and 6.25 are met at the next epoch"
    assert resolve(SearchSpec(**BASE, max_budget=10, reduction_factor=2.5)).ladder.budgets == (4, 10)
    table = resolve(SearchSpec(**BASE, evaluator="table")).ladder
    assert (table.grace, table.maximum, table.budgets) == (12, 200, (12, 200))
    shrunk = resolve(SearchSpec(**BASE, evaluator_options={"epochs": 6})).ladder
    assert shrunk.maximum == 6
    # The children's cosine schedule spans R whatever the evaluator's epochs would have said.
    plan = resolve(SearchSpec(**BASE, max_budget=5, evaluator_options={"channels": 4, "layers": 1}))
    assert plan.evaluator_options.epochs == 5 and plan.make_evaluator().fidelity.maximum == 5
    assert resolve(SearchSpec(space="nb201", strategy="random")).ladder is None


def test_the_best_is_ranked_by_budget_before_reward():
    records = [
        {"id": "e0", "index": 0, "arch": "a", "status": "ok", "reward": 0.95, "metrics": {"budget": 1}},
        {"id": "e1", "index": 1, "arch": "b", "status": "ok", "reward": 0.90, "metrics": {"budget": 9}},
        {"id": "e2", "index": 2, "arch": "c", "status": "ok", "reward": 0.92, "metrics": {"budget": 9}},
    ]
    assert [r["id"] for r in summarize(records)["top_k"]] == ["e2", "e1", "e0"]
