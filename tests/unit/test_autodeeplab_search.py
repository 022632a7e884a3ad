"""Auto-DeepLab's search: the supernet over the trellis, beta's normalisation, decoding, the
first-order step, the search loop (monitors, exact resume) and the strategy in a search job."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.common.threads import torch_threads
from raynas.controller.cli import main
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec
from raynas.search_spaces import get_space
from raynas.search_spaces.autodeeplab import LEVELS, MOVES, brute_force_path, transitions
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot.autodeeplab import (
    AutoDeepLabConfig,
    AutoDeepLabSupernet,
    arch_step,
    beta_entropy,
    decode,
)
from raynas.workers.oneshot.search import search_epochs


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny supernets run far faster on one thread than on two contended ones."""
    with torch_threads(1):
        yield


TINY = {"epochs": 2, "channels": 2, "layers": 2, "batch_size": 4, "max_batches_per_epoch": 2, "num_threads": 1}


@pytest.fixture(scope="module")
def tiny_data():
    """A few composed canvases, so that both halves (and the evaluation of the alphas' half) are small."""
    data = load_dataset("digits-seg")
    return dataclasses.replace(data, splits={"train": data.splits["train"][:12], "val": data.splits["val"][:4],
                                             "test": data.splits["test"][:4]})


def test_supernet_has_a_cell_on_every_transition_and_shapes_at_every_level():
    torch.manual_seed(0)
    model = AutoDeepLabSupernet(filters=2, layers=3, in_channels=1, num_classes=5)
    keys = {model._key(layer, source, source + move) for layer, source, move in transitions(3)}
    assert set(model.cells) == keys
    assert sorted(model.heads) == ["0", "1", "2", "3"]
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 5, 64, 64)
    # The node at (layer, level) has 5 blocks of F * 2^level channels at stride 4 * 2^level.
    half, stem = model.stem(torch.zeros(1, 1, 64, 64))
    cell = model.cells[model._key(0, 0, 1)]
    out = cell(half, stem, model.arch_weights()[0])
    assert out.shape == (1, 5 * 2 * 2, 8, 8)


def test_inspect_counts_the_supernet():
    from raynas.workers.oneshot import describe_supernet

    # 20 edges x 8 ops of alpha, 3 layers x 4 levels x 3 moves of beta.
    assert describe_supernet("autodeeplab", 4, 3, num_classes=11, in_channels=1) == {"params": 2_159_500,
                                                                                     "arch_params": 196}


def test_beta_is_normalised_over_each_nodes_moves_on_the_trellis():
    torch.manual_seed(0)
    model = AutoDeepLabSupernet(filters=2, layers=4, in_channels=1, num_classes=3)
    with torch.no_grad():
        model.alphas[1].normal_()
    beta = model.transition_weights()
    for layer in range(4):
        for source in range(LEVELS):
            row = beta[layer, source]
            if model.mask[layer, source].any():
                assert row.sum().item() == pytest.approx(1.0)
                assert (row[~model.mask[layer, source]] == 0).all()
            else:
                assert (row == 0).all()
    assert beta[0, 0, MOVES.index(-1)] == 0  # the stem cannot go finer than stride 4


def test_decoded_path_is_the_most_probable_one():
    torch.manual_seed(1)
    model = AutoDeepLabSupernet(filters=2, layers=5, in_channels=1, num_classes=3)
    with torch.no_grad():
        model.alphas[1].normal_(std=2.0)
    arch = decode(model)
    with np.errstate(divide="ignore"):  # off the trellis: log 0
        log_beta = np.log(model.transition_weights().detach().double().numpy())
    assert arch.path == brute_force_path(log_beta)
    assert len(arch.cell) == 10 and all(op != "none" for op, _ in arch.cell)
    assert 0 <= beta_entropy(model) < 1


def test_first_order_step_reduces_the_validation_loss(tiny_data):
    torch.manual_seed(0)
    model = AutoDeepLabSupernet(filters=2, layers=2, in_channels=1, num_classes=11)
    optimizer = torch.optim.Adam(model.arch_parameters(), lr=0.05)
    x, y = tiny_data.tensors("val")
    weights = [p.detach().clone() for p in model.network_parameters()]
    losses = [arch_step(model, optimizer, tiny_data, x, y) for _ in range(4)]
    assert losses[-1] < losses[0]
    # Only alpha and beta moved.
    assert all(torch.equal(a, b.detach()) for a, b in zip(weights, model.network_parameters()))


def test_search_reports_monitors_and_resumes_exactly(tiny_data, tmp_path):
    space = get_space("autodeeplab")
    config = AutoDeepLabConfig(**TINY)
    straight = list(search_epochs(space, tiny_data, config, seed=3))
    assert [r["epoch"] for r in straight] == [1, 2]
    assert straight[0]["alphas_frozen"] and not straight[1]["alphas_frozen"]  # warm-up: half the epochs
    last = straight[-1]
    assert {"val_miou", "val_loss", "path", "cell", "beta_entropy_fraction", "skip_count"} <= set(last)
    assert last["candidates"] == [last["genotype"]] and len(last["path"]) == 2
    assert space.parse(last["genotype"]).path == tuple(last["path"])
    checkpoint = str(tmp_path / "search.pt")
    # Stopped after its first epoch, then started again on the same file: the same search.
    next(iter(search_epochs(space, tiny_data, config, seed=3, checkpoint=checkpoint)))
    resumed = list(search_epochs(space, tiny_data, config, seed=3, checkpoint=checkpoint))

    def timeless(reports):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "images_per_s")} for r in reports]

    assert timeless(resumed) == timeless(straight)


def test_options_and_data_are_checked():
    with pytest.raises(ConfigError, match="^warmup_epochs"):
        AutoDeepLabConfig(epochs=2, warmup_epochs=2)
    assert AutoDeepLabConfig().resolved("autodeeplab").warmup_epochs == 20  # the paper: from epoch 20 of 40
    with pytest.raises(ConfigError, match="^dataset"):
        next(iter(search_epochs(get_space("autodeeplab"), load_dataset("digits"), AutoDeepLabConfig(**TINY), 0)))
    with pytest.raises(ConfigError, match="^space"):
        resolve(SearchSpec(space="darts", strategy="autodeeplab", dataset="digits-seg"))


def test_nas_search_end_to_end(tmp_path):
    """A single epoch of a one-layer trellis on a few canvases, the decoded network trained one batch."""
    options = {**TINY, "epochs": 1, "layers": 1, "batch_size": 32}
    train = {"epochs": 1, "channels": 2, "batch_size": 8, "max_train_batches_per_epoch": 1, "num_threads": 1}
    data = {"max_train": 64, "val_fraction": 0.02}
    argv = ["search", "--space", "autodeeplab", "--strategy", "autodeeplab", "--dataset", "digits-seg",
            "--evaluations", "1", "--runtime", "local", "--out", str(tmp_path / "run"), "--quiet"]
    argv += [a for k, v in options.items() for a in ("--strategy-option", f"{k}={v}")]
    argv += [a for k, v in train.items() for a in ("--evaluator-option", f"{k}={v}")]
    argv += [a for k, v in data.items() for a in ("--dataset-option", f"{k}={v}")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["state"] == "done" and result["evaluations"] == 1 and result["failed"] == 0
    (record,) = [json.loads(x) for x in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    epochs = [json.loads(x) for x in (tmp_path / "run" / "oneshot.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1] and "val_miou" in epochs[-1] and len(epochs[-1]["path"]) == 1
    assert record["arch"] == epochs[-1]["genotype"] == record["metrics"]["one_shot"]["genotype"]
    assert 0 <= record["reward"] <= 1 and "val_miou_best" in record["metrics"]
    assert record["metrics"]["one_shot"]["path"] == epochs[-1]["path"]
    assert record["metrics"]["one_shot"]["val_miou"] == epochs[-1]["val_miou"]


@pytest.mark.slow
def test_the_service_streams_search_epochs(tmp_path):
    from raynas.controller.service.manager import SearchManager, ThreadLauncher

    manager = SearchManager(tmp_path / "state", ThreadLauncher(), poll_s=0.02)
    try:
        record = manager.submit(dict(space="autodeeplab", strategy="autodeeplab", dataset="digits-seg", evaluations=1,
                                     runtime="local", strategy_options={**TINY, "layers": 1, "batch_size": 32},
                                     evaluator_options={"epochs": 1, "channels": 2, "max_train_batches_per_epoch": 1,
                                                        "num_threads": 1},
                                     dataset_options={"max_train": 64, "val_fraction": 0.02}))
        events = list(manager.watch(record.id))
    finally:
        manager.close()
    kinds = [e["kind"] for e in events]
    assert kinds.count("one_shot_epoch") == 2 and kinds.count("evaluation") == 1
    assert events[-1] == {"kind": "state", "state": "succeeded", "error": ""}
    epoch = next(e for e in events if e["kind"] == "one_shot_epoch")
    assert {"val_miou", "path", "cell", "beta_entropy_fraction", "genotype"} <= set(epoch)
