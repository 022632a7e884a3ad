"""Zoph & Le's PTB scheme: the spec file under deploy/ says it as the paper does, and the same
file run at a small scale (K=8, m=1, shards applying every 4 gradients) searches the tree cell
on a PTB-shaped corpus through the real replicas, shards and ledger (simulated time, no Ray)."""

from pathlib import Path

from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec, load_config
from raynas.search_spaces import get_space

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ptb-nas-rl.toml"


def test_the_deploy_file_is_the_papers_ptb_scheme():
    spec = resolve(SearchSpec.from_dict(load_config(CONFIG), source="config")).spec
    assert (spec.space, spec.strategy, spec.dataset, spec.runtime) == ("nasrnn", "rl", "ptb", "ray")
    assert (spec.controllers, spec.children, spec.ps_shards, spec.ps_accumulate) == (400, 1, 20, 10)
    assert spec.strategy_options == {"lr": 0.0005} and spec.space_options == {"base": 8}
    assert spec.evaluator_options["reward"] == "ppl"


def test_the_ptb_scheme_at_small_scale(tiny_ptb):
    data = {**load_config(CONFIG), "data_path": str(tiny_ptb), "controllers": 8, "children": 1, "ps_shards": 2,
            "ps_accumulate": 4, "workers": 8, "evaluations": 16,
            "evaluator_options": {"reward": "ppl", "epochs": 1, "batch_size": 8, "bptt": 10, "channels": 8,
                      "max_train_batches_per_epoch": 2, "num_threads": 1}}
    plan = resolve(SearchSpec.from_dict(data, source="config"))
    spec, space = plan.spec, plan.space
    evaluator = plan.make_evaluator()
    ledger, figures = simulate_scheme(space, evaluator, spec.evaluations, spec.seed, spec.controllers, spec.children,
                                      spec.ps_shards, strategy_options=spec.strategy_options,
                                      shard_config={"accumulate": spec.ps_accumulate})
    records = ledger.records
    assert len(records) == 16 and all(r["status"] == "ok" for r in records)
    # 16 children, one gradient each (m = 1); every shard applies one update per 4 gradients.
    assert figures["shard_versions"] == [4, 4]
    for r in records:
        cell = space.parse(r["arch"])
        assert cell.base == 8
        assert r["reward"] == 80 / r["metrics"]["val_ppl_best"] ** 2


def test_nas_search_rl_on_the_tree_cell_end_to_end(tiny_ptb, tmp_path):
    spec = SearchSpec(space="nasrnn", space_options={"base": 2}, strategy="rl", strategy_options={"batch_size": 2},
                      evaluator="train", dataset="ptb", data_path=str(tiny_ptb), evaluations=4, runtime="local",
                      evaluator_options={"epochs": 1, "batch_size": 8, "bptt": 10, "channels": 8,
                                         "max_train_batches_per_epoch": 2, "num_threads": 1})
    result = SearchJob(spec, tmp_path / "run", progress=False).run()
    assert result["state"] == "done" and result["evaluations"] == 4 and result["failed"] == 0
    best = get_space("nasrnn", base=2).parse(result["best"]["arch"])
    assert best.base == 2 and result["best"]["reward"] > 0
