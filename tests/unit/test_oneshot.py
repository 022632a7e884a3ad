"""One-shot search: supernets, the bilevel step, the Hessian-vector product, NoisyDARTS'
noise, genotype derivation and the search loop (tiny supernets on digits)."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from raynas.common import ConfigError
from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import NB201_OPS, NB201Space
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot import (
    Architect,
    Darts2Config,
    DartsSupernet,
    NB201Supernet,
    NoisyDartsConfig,
    OneShotConfig,
    RSWSConfig,
    derive_darts,
    derive_nb201,
    describe_supernet,
    finite_difference_hvp,
    register_supernet,
    registry,
    search_config,
    search_epochs,
    skip_count,
    supernet_for,
    supernet_spaces,
)
from raynas.workers.oneshot.supernet import DilatedDepthwiseConv, MixedOp, PointwiseConv


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def tiny_nb201(**kw):
    torch.manual_seed(0)
    return NB201Supernet(C=4, N=1, in_channels=1, **kw)


def smooth(model):
    """The model with Softplus for ReLU. Finite differences and double backprop agree only where
    the loss is twice differentiable; ReLU kinks crossed within +-eps make any difference jump."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Softplus())
    return model


def test_supernet_sizes_and_alphas_kept_apart():
    sizes = describe_supernet("darts", channels=16, layers=8, num_classes=10)
    # Counted on quark0/darts@f276dd3 model_search.Network(16, 10, 8) (its parameters(), alphas apart).
    assert sizes == {"params": 1_930_618, "arch_params": 2 * 14 * 8}
    # Counted on AutoDL-Projects@f46486e TinyNetworkDarts(16, 5, 4, 10, NAS_BENCH_201, False, True).
    assert describe_supernet("nb201") == {"params": 1_692_826, "arch_params": 6 * 5}
    assert describe_supernet("darts", algorithm="noisy-darts")["arch_params"] == 2 * 14 * 7  # `none` removed
    model = tiny_nb201()
    weights, alphas = model.network_parameters(), model.arch_parameters()
    assert not {id(p) for p in weights} & {id(a) for a in alphas}
    assert len(weights) + len(alphas) == len(list(model.parameters()))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (2, 4, 7, 5)])
def test_fast_convs_compute_the_library_convs(shape):
    """The supernet's re-implemented 1x1 and dilated depthwise convs against nn.Conv2d, values and
    gradients, on even and odd sizes, NCHW and NHWC, stride 1 and 2."""
    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(4, 6, 1, bias=True),
                 torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False),
                 torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4, bias=False),
                 torch.nn.Conv2d(4, 4, 5, stride=2, padding=4, dilation=2, groups=4, bias=False)):
        fast = copy.deepcopy(conv).double()
        fast.__class__ = PointwiseConv if conv.kernel_size == (1, 1) else DilatedDepthwiseConv
        conv = conv.double()
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
            expected, got = conv(x), fast(x)
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-12)
            g = torch.randn_like(expected)
            for a, b in zip(torch.autograd.grad(expected, [x, conv.weight], g),
                            torch.autograd.grad(got, [x, fast.weight], g)):
                assert torch.allclose(a, b, atol=1e-12)
    swapped = {type(m) for m in DartsSupernet(4, 3, in_channels=1).modules()}
    assert {PointwiseConv, DilatedDepthwiseConv} <= swapped


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["darts", "darts2"])
def test_bilevel_steps_reduce_the_validation_loss(digits, algorithm):
    model = tiny_nb201()
    config = search_config(algorithm)(arch_lr=0.03).resolved("nb201")
    w_opt = torch.optim.SGD(model.network_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, config)
    train_x, train_y = digits.tensors("train")
    x, y = train_x[:48], train_y[:48]
    xv, yv = train_x[48:96], train_y[48:96]
    alphas_before = [a.detach().clone() for a in model.arch_parameters()]
    before = F.cross_entropy(model(xv), yv).item()
    for _ in range(8):
        architect.step(x, y, xv, yv, 0.05, w_opt)
        w_opt.zero_grad()
        F.cross_entropy(model(x), y).backward(inputs=model.network_parameters())
        w_opt.step()
    assert F.cross_entropy(model(xv), yv).item() < before
    assert any(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas_before))


def test_finite_difference_hvp_matches_double_backprop(digits):
    model = smooth(tiny_nb201().double())
    train_x, train_y = digits.tensors("train")
    x, y = train_x[:16].double(), train_y[:16]
    weights = model.network_parameters()
    torch.manual_seed(1)
    v = [torch.randn_like(w) for w in weights]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, create_graph=True)
    exact = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), model.arch_parameters())
    approx = finite_difference_hvp(model, v, x, y)
    for e, a in zip(exact, approx):
        assert torch.allclose(a, e, rtol=1e-3, atol=1e-6 * e.abs().max().item())


def test_darts2_with_noise_differentiates_one_noise_sample():
    """Both finite-difference passes draw the same noise (and drop-path masks): the product then
    converges as eps shrinks, as it does without noise. Independent draws made it O(1/eps)."""
    torch.manual_seed(0)
    model = smooth(NB201Supernet(C=4, N=1, in_channels=1, noise_lambda=0.2, skip_drop_path=0.3).double())
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.arange(8) % 10
    v = [torch.randn_like(w) for w in model.network_parameters()]

    def product(r):
        torch.manual_seed(7)
        return torch.cat([h.flatten() for h in finite_difference_hvp(model, v, x, y, r=r)])

    coarse, fine = product(1e-2), product(1e-3)
    assert torch.linalg.vector_norm(coarse - fine) < 0.05 * torch.linalg.vector_norm(fine)
    torch.manual_seed(8)
    other = torch.cat([h.flatten() for h in finite_difference_hvp(model, v, x, y, r=1e-2)])
    assert not torch.equal(other, coarse)  # the noise is drawn, just the same in both passes


def test_second_order_gradient_is_the_unrolled_one(digits):
    """DARTS eq. 7 against autograd through the virtual step w' = w - xi (g + wd w + m buf)."""
    model = smooth(tiny_nb201().double())
    train_x, train_y = digits.tensors("train")
    x, y = train_x[:16].double(), train_y[:16]
    xv, yv = train_x[16:32].double(), train_y[16:32]
    xi, momentum, wd = 0.05, 0.9, 3e-4
    w_opt = torch.optim.SGD(model.network_parameters(), lr=xi, momentum=momentum, weight_decay=wd)
    F.cross_entropy(model(x), y).backward(inputs=model.network_parameters())
    w_opt.step()  # a momentum buffer for the virtual step to include
    named = model.named_network_parameters()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [p for _, p in named], create_graph=True)
    virtual = {n: p - xi * (g + wd * p + momentum * w_opt.state[p]["momentum_buffer"])
               for (n, p), g in zip(named, grads)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    val_loss = F.cross_entropy(functional_call(model, {**virtual, **buffers}, (xv,)), yv)
    exact = torch.autograd.grad(val_loss, model.arch_parameters())
    architect = Architect(model, Darts2Config().resolved("nb201"))
    weights_before = [p.detach().clone() for p in model.network_parameters()]
    approx = architect.gradient(x, y, xv, yv, xi, w_opt)
    # Central differences at DARTS' eps = 0.01 / ||v|| are off by O(eps^2): here 0.2 % of the largest entry.
    for e, a in zip(exact, approx):
        assert torch.allclose(a, e, rtol=0, atol=5e-3 * e.abs().max().item())
    assert all(torch.equal(p, q) for p, q in zip(model.network_parameters(), weights_before))


def test_noise_only_on_skip_and_only_in_training():
    torch.manual_seed(0)
    op = MixedOp(NB201_OPS, [torch.nn.Identity() if n == "skip_connect" else torch.nn.AvgPool2d(3, 1, 1)
                             for n in NB201_OPS], noise_lambda=0.2)
    x = torch.randn(8, 4, 6, 6)
    skip = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    pool = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    op.train()
    noisy = op(x, skip) - x
    assert noisy.abs().max() > 0 and abs(noisy.std().item() / (0.2 * x.std().item()) - 1) < 0.1
    assert abs(noisy.mean().item()) < 0.02
    assert torch.equal(op(x, pool), op(x, pool))  # other ops stay deterministic
    op.eval()
    assert torch.equal(op(x, skip), x)
    assert not any(m.noise_lambda for m in tiny_nb201().modules() if isinstance(m, MixedOp))


def test_nb201_derivation_is_the_argmax_including_none():
    w = torch.full((6, 5), 0.1)
    choice = ["none", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3"]
    for e, op in enumerate(choice):
        w[e, NB201_OPS.index(op)] = 0.9
    arch = derive_nb201([w], NB201_OPS)
    assert list(arch.ops) == choice and skip_count(arch) == 1
    assert str(arch) == str(get_space("nb201").parse(str(arch)))


def test_darts_derivation_keeps_two_strongest_non_none_edges_per_node():
    P = list(PRIMITIVES)
    normal = torch.full((14, 8), 0.01)
    normal[:, P.index("none")] = 0.9  # never chosen, never counts toward an edge's strength
    # node 0 (edges 0, 1): both kept. node 1 (edges 2-4): the strongest two of three.
    normal[0, P.index("sep_conv_3x3")] = 0.5
    normal[1, P.index("skip_connect")] = 0.4
    normal[2, P.index("max_pool_3x3")] = 0.1
    normal[3, P.index("dil_conv_5x5")] = 0.6
    normal[4, P.index("sep_conv_5x5")] = 0.3
    reduce = torch.full((14, 8), 0.01)
    reduce[:, P.index("avg_pool_3x3")] = 0.5
    genotype = derive_darts([normal, reduce], PRIMITIVES)
    assert genotype.normal[:4] == (("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 1),
                                   ("sep_conv_5x5", 2))
    assert all(op == "avg_pool_3x3" for op, _ in genotype.reduce)
    assert genotype.normal_concat == (2, 3, 4, 5) and skip_count(genotype) == 1
    assert get_space("darts").parse(str(genotype)) == genotype
    # NoisyDARTS' 7-op alphas name their columns.
    without_none = [p for p in P if p != "none"]
    assert derive_darts([normal[:, 1:], reduce[:, 1:]], without_none).normal == genotype.normal


def test_config_errors_name_the_field_and_defaults_are_the_papers():
    for kwargs, field in (({"second_order": "yes"}, "second_order"), ({"drop_none": 1}, "drop_none"),
                          ({"epochs": 0}, "epochs"), ({"skip_drop_path": 1.0}, "skip_drop_path"),
                          ({"arch_betas": (0.5,)}, "arch_betas"), ({"train_portion": 1.0}, "train_portion"),
                          ({"device": "tpu"}, "device"), ({"lr": -1}, "lr"), ({"noise_lambda": -0.1}, "noise_lambda"),
                          ({"nesterov": True, "momentum": 0.0}, "nesterov"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ConfigError) as err:
            OneShotConfig(**kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        OneShotConfig().resolved("macro")
    assert err.value.field == "space"
    darts = OneShotConfig().resolved("darts")
    assert (darts.epochs, darts.batch_size, darts.lr, darts.lr_min, darts.momentum, darts.weight_decay,
            darts.nesterov, darts.arch_lr, darts.arch_betas, darts.arch_weight_decay, darts.grad_clip,
            darts.layers, darts.channels, darts.train_portion, darts.noise_lambda) == (
        50, 64, 0.025, 0.001, 0.9, 3e-4, False, 3e-4, (0.5, 0.999), 1e-3, 5.0, 8, 16, 0.5, 0.0)
    assert (darts.second_order, darts.skip_drop_path, darts.drop_none) == (False, 0.0, False)
    assert dataclasses.asdict(Darts2Config().resolved("darts")) == {**dataclasses.asdict(darts), "second_order": True}
    noisy = NoisyDartsConfig().resolved("darts")  # NoisyDARTS' search settings
    assert (noisy.batch_size, noisy.lr, noisy.noise_lambda, noisy.skip_drop_path, noisy.drop_none) == (
        128, 0.05, 0.2, 0.3, True)
    assert (NoisyDartsConfig(batch_size=64).resolved("darts").batch_size, noisy.second_order) == (64, False)
    with pytest.raises(ConfigError) as err:
        search_config("gdas")
    assert err.value.field == "algorithm"
    nb201 = OneShotConfig().resolved("nb201")  # AutoDL-Projects' DARTS.config
    assert (nb201.layers, nb201.weight_decay, nb201.nesterov, nb201.lr, nb201.batch_size) == (5, 5e-4, True, 0.025, 64)


def _run(digits, space, algorithm, seed, layers=1, epochs=2, batches=3):
    config = search_config(algorithm)(epochs=epochs, channels=4, layers=layers, batch_size=32,
                           max_batches_per_epoch=batches, device="cpu")
    return list(search_epochs(get_space(space), digits, config, seed))


@pytest.mark.slow
def test_search_reports_monitors_each_epoch_and_is_seeded(digits):
    first = _run(digits, "nb201", "noisy-darts", seed=3)
    assert [r["epoch"] for r in first] == [1, 2] and first[-1]["candidates"] == [first[-1]["genotype"]]
    for r in first:
        assert len(r["alpha_entropy"]) == 6 and 0 <= r["skip_count"] <= 6 and r["val_acc"] >= 0
        assert len(r["alphas"]) == 1 and len(r["alphas"][0]) == 6
        get_space("nb201").parse(r["genotype"])
    again = _run(digits, "nb201", "noisy-darts", seed=3)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time_s", "images_per_s")} for r in rs]  # noqa: E731
    assert strip(first) == strip(again)
    assert strip(_run(digits, "nb201", "noisy-darts", seed=4)) != strip(first)


@pytest.mark.slow
def test_darts_space_second_order_search_derives_a_valid_genotype(digits):
    (report,) = _run(digits, "darts", "darts2", seed=0, layers=3, epochs=1, batches=1)
    genotype = get_space("darts").parse(report["genotype"])
    assert len(genotype.normal) == 8 and len(report["alpha_entropy"]) == 28
    assert report["skip_count"] == sum(op == "skip_connect" for op, _ in genotype.normal)


class WideNB201(NB201Space):
    name = "nb201-wide"


def test_a_new_supernet_is_one_registration_that_every_search_runs(digits, monkeypatch):
    """A space's supernet registered once (here nb201's under another name, with its own published
    settings) is searched by the DARTS family and by rsws alike, with no search knowing its name."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    nb201 = supernet_for("nb201")
    wide = {recipe: {**settings, "channels": 6} for recipe, settings in nb201.defaults.items()}
    register_supernet(dataclasses.replace(nb201, name="nb201-wide", defaults=wide))
    assert "nb201-wide" in supernet_spaces("rsws") and OneShotConfig().resolved("nb201-wide").channels == 6
    tiny = dict(epochs=1, layers=1, batch_size=32, max_batches_per_epoch=1, device="cpu", num_threads=1)
    with torch_threads(1):
        (darts,) = search_epochs(WideNB201(), digits, NoisyDartsConfig(**tiny), 0)
        *_, ranked = search_epochs(WideNB201(), digits, RSWSConfig(**tiny, archs=2, block=2, rescore_top=1), 0)
    for report in (darts, ranked):
        assert report["candidates"] == [report["genotype"]] and WideNB201().parse(report["genotype"])
    assert darts["algorithm"] == "noisy-darts" and ranked["algorithm"] == "rsws" and ranked["stage"] == "rank"
    with pytest.raises(ConfigError) as err:
        OneShotConfig().resolved("nasnet")
    assert err.value.field == "space" and "nb201-wide" in err.value.allowed
