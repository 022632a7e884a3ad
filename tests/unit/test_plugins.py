"""Plug-ins from outside the project, one file each (tests/plugins/): a toy dataset and a toy
evaluator, named by RAYNAS_PLUGINS as a user names theirs, keep their contracts and run in a
search through `nas search` without any edit of the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from contracts import check_dataset, check_evaluator

from raynas.common import plugins
from raynas.search_spaces import get_space
from raynas.workers import datasets, evaluation

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture
def loaded(monkeypatch):
    """The toy plug-ins loaded by name, and forgotten afterwards (the registries are the process's)."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv(plugins.ENV, "toy_dataset, toy_evaluator")
    yield
    datasets._REGISTRY.pop("toy-rings", None)
    evaluation._REGISTRY.pop("toy-compact", None)
    for name in ("toy_dataset", "toy_evaluator"):
        sys.modules.pop(name, None)
        plugins._loaded.discard(name)


def test_the_toy_plug_ins_keep_their_contracts(loaded, tmp_path):
    assert "toy-rings" in datasets.dataset_names() and "toy-compact" in evaluation.evaluator_names()
    check_dataset(datasets.get_dataset("toy-rings", options={"samples": 200}))
    nb201 = get_space("nb201")
    rng = np.random.default_rng(0)
    check_evaluator(evaluation.get_evaluator("toy-compact", nb201), nb201.sample(rng), tmp_path, nb201.sample(rng))


def test_a_plug_in_that_does_not_import_is_named(monkeypatch):
    monkeypatch.setenv(plugins.ENV, "no_such_plugin_module")
    with pytest.raises(Exception) as bad:
        datasets.dataset_names()
    assert "no_such_plugin_module" in str(bad.value) and plugins.ENV in str(bad.value)


def nas(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PLUGINS), plugins.ENV: "toy_dataset,toy_evaluator"}
    return subprocess.run([sys.executable, "-m", "raynas.controller.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_nas_search_trains_on_the_toy_dataset_and_scores_with_the_toy_evaluator(tmp_path):
    listed = nas("options", cwd=tmp_path)
    assert listed.returncode == 0 and "toy-rings" in listed.stdout and "toy-compact" in listed.stdout
    trained = nas("search", "--space", "nb201", "--strategy", "random", "--dataset", "toy-rings", "--runtime", "local",
                  "--evaluations", "3", "--epochs", "1", "--channels", "4", "--layers", "1",
                  "--evaluator-option", "num_threads=1", "--dataset-option", "samples=300", "--out", "trained",
                  "--quiet", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = json.loads(trained.stdout)
    assert result["state"] == "done" and result["failed"] == 0 and result["dataset"] == "toy-rings"
    scored = nas("search", "--space", "nb201", "--strategy", "evolution", "--evaluator", "toy-compact",
                 "--evaluator-option", "budget_mparams=0.1", "--runtime", "local", "--evaluations", "12", "--out",
                 "scored", "--quiet", "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    # Scored by the plug-in, on what it says it scores: no training, no dataset.
    assert result["evaluator"] == "toy-compact" and result["dataset"] == "parameter count"
    assert 0 < result["best"]["reward"] <= 1 and "train_time_s" not in result["best"]["metrics"]
    unknown = nas("search", "--evaluator", "toy-nope", "--runtime", "local", cwd=tmp_path)
    assert unknown.returncode == 2 and "evaluator: unknown evaluator 'toy-nope'" in unknown.stderr
    assert "toy-compact" in unknown.stderr and "Traceback" not in unknown.stderr
