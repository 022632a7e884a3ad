"""Random search with weight sharing: uniform sampling as Li & Talwalkar sample, the single-path
forward (only the sampled architecture's ops run), the three stages' reports, seeding, and a
search continued from its checkpoint mid-ranking (tiny supernets on digits)."""

import collections

import pytest
import torch
import torch.nn.functional as F

from raynas.common import ConfigError
from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import NB201_OPS
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot import DartsSupernet, NB201Supernet, RSWSConfig, darts_path, nb201_path, search_epochs
from raynas.workers.oneshot.cells import sample_darts, sample_nb201
from raynas.workers.oneshot.supernet import MixedOp

TINY = dict(epochs=2, channels=4, layers=1, batch_size=32, max_batches_per_epoch=2, archs=6, score_batches=1,
            block=3, rescore_top=2, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, val_fraction=0.05, max_train=200)


def strip(reports):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "images_per_s")} for r in reports]


def test_defaults_are_the_papers_and_bad_options_name_themselves():
    darts = RSWSConfig().resolved("darts")  # Li & Talwalkar's CIFAR-10 search
    assert (darts.epochs, darts.channels, darts.layers, darts.batch_size, darts.lr, darts.lr_min, darts.weight_decay,
            darts.grad_clip, darts.lr_schedule, darts.train_portion) == (150, 24, 8, 64, 0.025, 0.001, 3e-4, 1.0,
                                                                          "epoch", 0.5)
    assert (darts.archs, darts.score_batches, darts.block, darts.rescore_top, darts.candidates) == (5000, 10, 1000,
                                                                                                  10, 1)
    nb201 = RSWSConfig().resolved("nb201")  # AutoDL-Projects' RANDOM.config
    assert (nb201.epochs, nb201.channels, nb201.layers, nb201.weight_decay, nb201.nesterov, nb201.lr_schedule) == (
        250, 16, 5, 5e-4, True, "step")
    for kwargs, field in (({"archs": 0}, "archs"), ({"rescore_top": 11, "block": 10}, "rescore_top"),
                          ({"candidates": 6, "archs": 5000}, "candidates"), ({"lr_schedule": "hourly"}, "lr_schedule")):
        with pytest.raises(ConfigError) as err:
            RSWSConfig(**kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        RSWSConfig(layers=2).resolved("darts")
    assert err.value.field == "layers"


def test_sampling_is_uniform_with_none_and_two_distinct_inputs_per_node():
    generator = torch.Generator().manual_seed(0)
    ops, inputs = collections.Counter(), collections.Counter()
    for _ in range(400):
        genotype = sample_darts(get_space("darts"), generator)
        get_space("darts").validate(genotype)
        for cell in (genotype.normal, genotype.reduce):
            for node in range(4):
                (op_a, a), (op_b, b) = cell[2 * node:2 * node + 2]
                assert a != b and 0 <= a < node + 2 and 0 <= b < node + 2
                ops.update([op_a, op_b])
                if node == 3:
                    inputs.update([a, b])
    assert set(ops) == set(PRIMITIVES)  # `none` included
    assert min(ops.values()) > 0.7 * max(ops.values())
    assert min(inputs.values()) > 0.7 * max(inputs.values())  # node 5: 2 of its 5 inputs, uniformly
    archs = {str(sample_nb201(get_space("nb201"), generator)) for _ in range(50)}
    assert len(archs) == 50


def test_single_path_runs_only_the_sampled_ops_and_matches_one_hot_mixing():
    with torch_threads(1):
        _check_single_path()


def _check_single_path():
    torch.manual_seed(0)
    for model, space, sample, to_path in ((NB201Supernet(C=4, N=1, in_channels=1), "nb201", sample_nb201, nb201_path),
                                          (DartsSupernet(C=4, layers=3, in_channels=1), "darts", sample_darts,
                                           darts_path)):
        model = model.double().eval()
        arch = sample(get_space(space), torch.Generator().manual_seed(1))
        path = to_path(arch, model.primitives)
        one_hot = [torch.zeros_like(a) for a in model.alphas]
        for weights, edges in zip(one_hot, path):
            for e, ops in enumerate(edges):
                assert len(ops) <= 1  # two distinct inputs per node: an edge runs one op at most
                for op in ops:
                    weights[e, op] = 1.0
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        model.arch_weights = lambda one_hot=one_hot: one_hot  # the mixed forward, every weight 0 or 1
        assert torch.allclose(model(x), model(x, path), rtol=0, atol=1e-12)
        del model.arch_weights
        model.train()
        F.cross_entropy(model(x, path), torch.tensor([0, 1])).backward()
        ran = {id(p) for p in model.parameters() if p.grad is not None}
        on_path = set()
        for cell in (c for c in model.cells if hasattr(c, "edges")):
            edges = path[int(getattr(cell, "reduction", False))]
            for e, mixed in enumerate(cell.edges):
                assert isinstance(mixed, MixedOp)
                for op in edges[e]:
                    on_path |= {id(p) for p in mixed.ops[op].parameters()}
        in_ops = {id(p) for m in model.modules() if isinstance(m, MixedOp) for p in m.parameters()}
        assert ran & in_ops and ran & in_ops <= on_path  # no op off the path took part
        assert all(a.grad is None for a in model.alphas)


def test_single_path_refuses_what_the_supernet_cannot_run():
    noisy_ops = [p for p in PRIMITIVES if p != "none"]
    genotype = sample_darts(get_space("darts"), torch.Generator().manual_seed(0))
    while all(op != "none" for op, _ in genotype.normal + genotype.reduce):
        genotype = sample_darts(get_space("darts"), torch.Generator().manual_seed(len(str(genotype))))
    with pytest.raises(ConfigError):
        darts_path(genotype, noisy_ops)
    assert [len(edges) for edges in darts_path(genotype, PRIMITIVES)] == [14, 14]
    assert nb201_path(get_space("nb201").parse("|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|"
                                               "avg_pool_3x3~1|none~2|"), NB201_OPS) == [[(0,), (1,), (2,), (3,), (4,),
                                                                                          (0,)]]
    assert NB201_OPS[3] == "nor_conv_3x3"


@pytest.mark.slow
def test_the_stages_report_train_epochs_then_ranking_blocks_and_are_seeded(digits):
    reports = list(search_epochs(get_space("nb201"), digits, RSWSConfig(**TINY), seed=3))
    assert [(r["stage"], r["epoch"]) for r in reports] == [("train", 1), ("train", 2), ("rank", 1), ("rank", 2)]
    assert [r["scored"] for r in reports[2:]] == [3, 6]
    last = reports[-1]
    best = max(reports[2:], key=lambda r: r["block_val_acc"])
    assert last["candidates"] == [last["genotype"]] and last["val_acc"] == best["block_val_acc"]
    get_space("nb201").parse(last["genotype"])
    assert strip(list(search_epochs(get_space("nb201"), digits, RSWSConfig(**TINY), seed=3))) == strip(reports)
    assert strip(list(search_epochs(get_space("nb201"), digits, RSWSConfig(**TINY), seed=4))) != strip(reports)
    two = list(search_epochs(get_space("nb201"), digits, RSWSConfig(**{**TINY, "candidates": 2}), seed=3))
    assert two[-1]["candidates"][0] == last["genotype"] and len(two[-1]["candidates"]) <= 2


@pytest.mark.slow
def test_a_search_stopped_mid_ranking_continues_from_its_checkpoint(digits, tmp_path):
    space, config = get_space("nb201"), RSWSConfig(**TINY)
    straight = list(search_epochs(space, digits, config, 5, str(tmp_path / "straight.ckpt")))
    stopped = search_epochs(space, digits, config, 5, str(tmp_path / "stopped.ckpt"))
    first = [next(stopped) for _ in range(3)]  # both training epochs and the first ranking block
    stopped.close()
    continued = list(search_epochs(space, digits, config, 5, str(tmp_path / "stopped.ckpt")))
    assert strip(continued[:3]) == strip(first)  # replayed from the checkpoint
    assert strip(continued) == strip(straight)
    with pytest.raises(ConfigError) as err:
        list(search_epochs(space, digits, RSWSConfig(**{**TINY, "archs": 9}), 5, str(tmp_path / "stopped.ckpt")))
    assert err.value.field == "checkpoint"


def _conv_edge(model):
    """(edge, index, its weights) of a conv on the first cell's first edge."""
    edge = model.cells[0].edges[0]
    index = edge.names.index("sep_conv_3x3")
    return edge, index, [p for p in edge.ops[index].parameters()]


def test_weight_decay_and_momentum_reach_ops_the_step_did_not_sample():
    """Both references zero the gradients in place (torch 0.3's zero_grad), so an op sampled once
    keeps a zero gradient and moves by weight decay and momentum at every later step, sampled or
    not; only an op never sampled yet is left alone."""
    from raynas.workers.oneshot.search import weight_optimizer, weight_step

    torch.manual_seed(0)
    cfg = RSWSConfig(**{**TINY, "layers": 3}).resolved("darts")
    model = DartsSupernet(C=4, layers=3, in_channels=1, num_classes=10)
    optimizer = weight_optimizer(model, cfg)
    space = get_space("darts")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    edge, conv, weights = _conv_edge(model)
    others = [p for p in model.network_parameters() if all(p is not w for w in weights)]

    def path(uses_conv):
        while True:
            arch = sample_darts(space, generator)
            route = darts_path(arch, model.primitives)
            if (conv in route[0][0]) == uses_conv:
                return route

    weight_step(model, optimizer, cfg, 0.1, x, y, path(True))
    before = [w.detach().clone() for w in weights]
    initial = [p.detach().clone() for p in others]
    for _ in range(3):
        weight_step(model, optimizer, cfg, 0.1, x, y, path(False))
    moved = sum(int((w != b).sum()) for w, b in zip(weights, before))
    assert moved == sum(w.numel() for w in weights)  # every weight of the conv, none of it sampled
    never = [(p, b) for p, b in zip(others, initial) if p.grad is None]  # ops no path has run yet
    assert never and all(torch.equal(p, b) for p, b in never)


def test_a_search_stopped_after_a_training_epoch_keeps_which_ops_decay(digits, tmp_path):
    config = RSWSConfig(**{**TINY, "epochs": 3, "layers": 3})
    space = get_space("darts")
    straight = list(search_epochs(space, digits, config, 2))
    stopped = search_epochs(space, digits, config, 2, str(tmp_path / "rsws.ckpt"))
    next(stopped)
    stopped.close()
    assert strip(list(search_epochs(space, digits, config, 2, str(tmp_path / "rsws.ckpt")))) == strip(straight)
