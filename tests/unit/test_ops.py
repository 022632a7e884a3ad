"""The op registries: coverage of every space's names, shapes, gradients and the
reference structures that fix parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raynas.search_spaces import nb201 as nb201_space
from raynas.search_spaces import rnn as rnn_space
from raynas.search_spaces.cell import CELL_OPS, NASNET_OPS, PRIMITIVES
from raynas.workers.ops import DARTS_OPS, NB201_OPS, RNN_ACTIVATIONS, FactorizedReduce

C = 4


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_forward_backward(op: nn.Module, x: torch.Tensor, expected_shape: tuple[int, ...]) -> None:
    x = x.clone().requires_grad_()
    out = op(x)
    assert out.shape == expected_shape
    if out.requires_grad:  # `none` is constant: nothing to differentiate
        out.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in op.parameters())


def test_registries_cover_every_space_name():
    assert set(DARTS_OPS) == set(CELL_OPS) == set(PRIMITIVES) | set(NASNET_OPS)
    assert set(NB201_OPS) == set(nb201_space.NB201_OPS)
    assert set(RNN_ACTIVATIONS) == set(rnn_space.ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(DARTS_OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_darts_op_runs_and_keeps_width(name, stride, size):
    torch.manual_seed(0)
    op = DARTS_OPS[name](C, stride, True)
    out_size = -(-size // stride)
    check_forward_backward(op, torch.randn(2, C, size, size), (2, C, out_size, out_size))


@pytest.mark.parametrize("name", sorted(NB201_OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("c_out", [C, 2 * C])
@pytest.mark.parametrize("affine", [True, False])
def test_nb201_op_runs_and_changes_width(name, stride, c_out, affine):
    torch.manual_seed(0)
    op = NB201_OPS[name](C, c_out, stride, affine, True)
    check_forward_backward(op, torch.randn(2, C, 8, 8), (2, c_out, 8 // stride, 8 // stride))


def test_darts_structures_match_the_reference():
    bn = 2 * C
    # sep_conv: (ReLU, depthwise, pointwise, BN) twice.
    assert n_params(DARTS_OPS["sep_conv_3x3"](C, 1, True)) == 2 * (C * 9 + C * C + bn)
    assert n_params(DARTS_OPS["sep_conv_5x5"](C, 1, True)) == 2 * (C * 25 + C * C + bn)
    # dil_conv: one such stage, dilation 2 (padding 2 keeps the size).
    dil = DARTS_OPS["dil_conv_3x3"](C, 1, True)
    assert n_params(dil) == C * 9 + C * C + bn
    assert [m.dilation for m in dil.modules() if isinstance(m, nn.Conv2d)][0] == (2, 2)
    # 1x7 then 7x1, one BN.
    assert n_params(DARTS_OPS["conv_7x1_1x7"](C, 1, True)) == 2 * 7 * C * C + bn
    assert n_params(DARTS_OPS["conv_3x1_1x3"](C, 1, True)) == 2 * 3 * C * C + bn
    assert isinstance(DARTS_OPS["skip_connect"](C, 1, True), nn.Identity)
    assert isinstance(DARTS_OPS["skip_connect"](C, 2, True), FactorizedReduce)
    assert not DARTS_OPS["avg_pool_3x3"](C, 1, True).count_include_pad
    # DARTS convs carry no bias: BN supplies the shift.
    assert all(m.bias is None for name in DARTS_OPS for m in DARTS_OPS[name](C, 2, True).modules()
               if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("affine", [True, False])
def test_nb201_conv_has_a_bias_only_without_affine_bn(affine):
    conv = next(m for m in NB201_OPS["nor_conv_3x3"](C, C, 1, affine, True).modules() if isinstance(m, nn.Conv2d))
    assert (conv.bias is not None) == (not affine)
    assert n_params(NB201_OPS["nor_conv_1x1"](C, C, 1, True, True)) == C * C + 2 * C


def test_nb201_skip_and_pool_change_width_with_their_own_paths():
    assert isinstance(NB201_OPS["skip_connect"](C, C, 1, True, True), nn.Identity)
    assert isinstance(NB201_OPS["skip_connect"](C, 2 * C, 1, True, True), FactorizedReduce)
    assert isinstance(NB201_OPS["avg_pool_3x3"](C, C, 1, True, True), nn.AvgPool2d)
    # A width change needs a 1x1 projection before the pool.
    assert n_params(NB201_OPS["avg_pool_3x3"](C, 2 * C, 1, True, True)) == C * 2 * C + 2 * 2 * C


def test_factorized_reduce_reads_the_odd_grid_like_darts():
    torch.manual_seed(0)
    op = FactorizedReduce(C, 2 * C).eval()
    x = torch.randn(1, C, 8, 8)
    relu = x.relu()
    expected = torch.cat([op.convs[0](relu), op.convs[1](relu[:, :, 1:, 1:])], dim=1)
    torch.testing.assert_close(op(x), op.bn(expected))


def test_rnn_activations():
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(RNN_ACTIVATIONS["tanh"](x), torch.tanh(x))
    torch.testing.assert_close(RNN_ACTIVATIONS["relu"](x), x.clamp(min=0))
    torch.testing.assert_close(RNN_ACTIVATIONS["sigmoid"](x), 1 / (1 + torch.exp(-x)))
    assert RNN_ACTIVATIONS["identity"](x) is x
