"""raynas strategies as Ray Tune searchers, in a plain `Tuner` with a user's own trainable: Tune's
expectations of a searcher (suggest, results, save and restore), the README's example, and
evolution finding NB201's better architectures more often than random search does."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import tune

from raynas.controller.cluster.tune import StrategySearcher
from raynas.controller.strategies import get_strategy
from raynas.search_spaces import get_space
from raynas.workers.evaluation import get_evaluator
from raynas.workers.evaluation.table import load_table

pytestmark = pytest.mark.usefixtures("ray_cluster")
# Tune's workers cannot import this test module: its trainable travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

README = Path(__file__).resolve().parents[2] / "README.md"
NB201 = get_space("nb201")


def lookup(config):
    """A user's trainable: the NB201 table's 12-epoch validation accuracy, in percent."""
    tune.report({"acc": get_evaluator("table", "nb201").evaluate(config["arch"]).reward * 100})


def tune_archs(tmp_path: Path, name: str, searcher, samples: int, callbacks=()) -> list[str]:
    tuner = tune.Tuner(lookup, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=samples,
                                                           reuse_actors=True),
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                 callbacks=list(callbacks)))
    # An interrupted trial that never reported has no config in the grid.
    return [r.config["arch"] for r in tuner.fit() if r.config]


def test_evolution_finds_better_architectures_than_random_search(tmp_path):
    table = load_table("cifar10")
    top = np.percentile(table.columns["valid_acc_12ep"], 95)
    shares = {}
    for name in ("evolution", "random"):
        searcher = StrategySearcher(get_strategy(name, NB201, seed=1), metric="acc", mode="max")
        archs = tune_archs(tmp_path, name, searcher, 120)
        assert len(archs) == 120 and all(NB201.validate(NB201.parse(a)) for a in archs)
        shares[name] = np.mean([table.row(a)["valid_acc_12ep"] >= top for a in archs])
    # Random search lands in the table's top 5% one trial in twenty; evolution, past its first
    # population, mostly mutates architectures that are there already.
    assert shares["evolution"] > 2 * shares["random"], shares


class InterruptAfter(tune.Callback):
    """Ctrl-C in the driver after `n` trials: Tune writes its state and returns, resumable."""

    def __init__(self, n: int):
        self.n = n
        self.done = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.n:
            signal.raise_signal(signal.SIGUSR1)

    # Restored with the experiment, so that the resumed run is not interrupted again.
    def get_state(self):
        return {"done": self.done}

    def set_state(self, state):
        self.done = state["done"]


def test_tuner_restore_brings_the_strategys_state_back(tmp_path):
    """Random search's proposals depend on its generator alone: restored with its state, the
    interrupted experiment proposes exactly what an uninterrupted one does; restored without
    it (Tune has had such bugs), it would propose the first architectures again."""
    straight = tune_archs(tmp_path, "straight", StrategySearcher(get_strategy("random", NB201, seed=7),
                                                                  metric="acc", mode="max"), 24)
    searcher = StrategySearcher(get_strategy("random", NB201, seed=7), metric="acc", mode="max")
    first = tune_archs(tmp_path, "stopped", searcher, 24, callbacks=[InterruptAfter(8)])
    assert len(first) < 24
    restored = tune.Tuner.restore(str(tmp_path / "stopped"), lookup, resume_unfinished=True)
    resumed = [r.config["arch"] for r in restored.fit()]
    assert len(resumed) == 24
    assert sorted(resumed) == sorted(straight)


def test_the_readme_example_runs():
    text = README.read_text()
    (block,) = re.findall(r"<!-- README example: tests/integration/test_tune_searcher.py .*? -->\n```python\n(.*?)```",
                          text, flags=re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    arch, acc = out.getvalue().strip().splitlines()[-1].split()
    assert NB201.parse(arch) is not None and 80 < float(acc) * 100 <= 100
