"""NAO on the Ray runtime: its proposals evaluated in parallel on the worker pool, its rounds
retrained as results come back, its signals in the run directory."""

import json

import pytest

from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import STRATEGY_LOG
from raynas.controller.runtime.spec import SearchSpec

pytestmark = pytest.mark.usefixtures("ray_cluster")

TINY = {"seed_archs": 6, "new_archs": 4, "top_k": 4, "epochs": 5, "batch_size": 16, "hidden_size": 8,
        "embedding_size": 4, "mlp_layers": 1, "mlp_hidden_size": 8}


def test_nao_runs_on_the_worker_pool_and_reports_its_rounds(tmp_path):
    out = tmp_path / "run"
    spec = SearchSpec(space="nb201", strategy="nao", evaluator="table", evaluations=20, workers=2,
                      cpus_per_child=0.5, seed=2, strategy_options=TINY, evaluator_options={"sleep": 0.2 / 120})
    result = SearchJob(spec, out, progress=False).run()
    assert result["state"] == "done" and result["evaluations"] == 20
    records = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"e{i:06d}" for i in range(20)]
    assert len({r["arch"] for r in records}) == 20  # NAO never proposes an architecture twice
    signals = [json.loads(x) for x in (out / STRATEGY_LOG).read_text().splitlines()]
    assert [s["iteration"] for s in signals] == list(range(1, len(signals) + 1)) and len(signals) >= 3
    # With two workers a round is retrained while the last proposals of the one before are still out.
    assert all(s["trained_on"] <= s["proposed"] for s in signals)
