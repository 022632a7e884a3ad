"""Auto-DeepLab: the space (cell + path), the trellis and Viterbi decoding, the decoded network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raynas.common import InvalidArchitecture
from raynas.search_spaces import get_space
from raynas.search_spaces.autodeeplab import (
    ADL_OPS,
    AUTODEEPLAB,
    LEVELS,
    MOVES,
    PUBLISHED,
    brute_force_path,
    path_log_prob,
    reachable,
    transition_mask,
    transitions,
    viterbi,
)
from raynas.search_spaces.types import AutoDeepLabArch
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.ops import AUTODEEPLAB_OPS


def test_ops_and_sizes_are_the_papers():
    space = get_space("autodeeplab")
    assert len(ADL_OPS) == 8 and {"none", "skip_connect"} <= set(ADL_OPS)
    assert space.layers == 12 and len(space.decisions()) == 4 * 5 + 12


def test_published_networks_load_by_name_and_round_trip():
    space = get_space("autodeeplab")
    for name in ("AutoDeepLab", *PUBLISHED):
        arch = space.parse(name)
        assert arch == AUTODEEPLAB and space.parse(str(arch)) == arch
    assert AUTODEEPLAB.path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert space.from_values(space.to_values(AUTODEEPLAB)) == AUTODEEPLAB
    assert "stem 4 -> 4 4 4 8 16 8 16 16 32 32 16 8" in space.draw(AUTODEEPLAB)


@pytest.mark.parametrize("path, field", [((0, 2), "arch.path[1]"), ((2,), "arch.path[0]"), ((0, 4), "arch.path[1]"),
                                         ((), "arch.path")])
def test_bad_paths_name_the_layer(path, field):
    with pytest.raises(InvalidArchitecture) as info:
        get_space("autodeeplab").validate(AutoDeepLabArch(AUTODEEPLAB.cell, path))
    assert str(info.value).startswith(field)


def test_bad_cell_input_and_parse_errors():
    space = get_space("autodeeplab")
    bad = list(AUTODEEPLAB.cell)
    bad[0] = ("sep_conv_3x3", 2)  # block 0 cannot read itself
    with pytest.raises(InvalidArchitecture, match=r"^arch.cell\[0\]"):
        space.validate(AutoDeepLabArch(tuple(bad), AUTODEEPLAB.path))
    with pytest.raises(InvalidArchitecture, match=r"^arch.cell"):
        space.validate(AutoDeepLabArch(AUTODEEPLAB.cell[:8], AUTODEEPLAB.path))
    with pytest.raises(InvalidArchitecture, match="Auto-DeepLab-S"):
        space.parse("Genotype(cell=[], path=[])")


def test_moves_past_the_edge_of_the_trellis_stay_there():
    space = get_space("autodeeplab", layers=4)
    cell_values = space.to_values(AutoDeepLabArch(AUTODEEPLAB.cell, (0, 0, 0, 0)))[:20]
    assert space.from_values(cell_values + (-1, 1, 1, 1)).path == (0, 1, 2, 3)
    assert space.from_values(cell_values + (1, 1, 1, 1)).path == (1, 2, 3, 3)


def test_samples_stay_on_the_trellis():
    space = get_space("autodeeplab")
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.validate(arch) is arch and space.parse(str(arch)) == arch


def test_trellis_transitions():
    assert list(reachable(0)) == [0, 1] and list(reachable(1)) == [0, 1, 2] and list(reachable(5)) == [0, 1, 2, 3]
    edges = transitions(3)
    # Layer 0 leaves the stem (level 0): stay or go coarser.
    assert [e for e in edges if e[0] == 0] == [(0, 0, 0), (0, 0, 1)]
    # Layer 1 from levels 0 and 1; layer 2 from 0, 1, 2; nothing leaves the trellis.
    assert {(s, m) for layer, s, m in edges if layer == 1} == {(0, 0), (0, 1), (1, -1), (1, 0), (1, 1)}
    assert all(0 <= s + m < LEVELS for _, s, m in edges)
    assert len([e for e in edges if e[0] == 2]) == 8
    assert transition_mask(3).sum() == len(edges)


def _random_log_probs(rng, layers):
    """Outgoing-normalised log transition probabilities on the trellis, -inf off it."""
    mask = transition_mask(layers)
    raw = np.where(mask, rng.normal(size=mask.shape) * 2, -np.inf)
    return raw - np.log(np.exp(raw).sum(-1, keepdims=True) + (~mask.any(-1, keepdims=True)))


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6, 7])
def test_viterbi_equals_brute_force(layers):
    rng = np.random.default_rng(layers)
    for _ in range(40):
        log_probs = _random_log_probs(rng, layers)
        best = viterbi(log_probs)
        assert best == brute_force_path(log_probs)
        assert np.isfinite(path_log_prob(log_probs, best))


def test_viterbi_is_not_greedy():
    """A greedy walk takes the locally best move into a dead end; the most probable path does not."""
    log_probs = np.full((2, LEVELS, len(MOVES)), np.log(1e-9))
    log_probs[0, 0, MOVES.index(1)] = np.log(0.6)   # greedy goes coarser first ...
    log_probs[0, 0, MOVES.index(0)] = np.log(0.4)
    log_probs[1, 1, :] = np.log(1 / 3)             # ... where every move is a third,
    log_probs[1, 0, MOVES.index(0)] = np.log(0.99)  # while staying leads to a sure move
    assert viterbi(log_probs) == (0, 0) == brute_force_path(log_probs)


@pytest.mark.parametrize("path", [(0, 1, 2, 3), (1, 1, 0, 0), (0, 1, 2, 1)])
def test_decoded_network_shapes(path):
    arch = AutoDeepLabArch(AUTODEEPLAB.cell, path)
    model = build_model("autodeeplab", arch, NetConfig(in_channels=1, num_classes=5, channels=2))
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 5, 64, 64)
    assert len(model.cells) == len(path)
    # Each layer's output: 5 blocks of F * 2^level channels, at stride 4 * 2^level.
    h2, h1 = model.stem(torch.zeros(1, 1, 64, 64))
    for cell, level in zip(model.cells, path):
        h2, h1 = h1, cell(h2, h1)
        assert h1.shape[1:] == (5 * 2 * 2 ** level, 64 // (4 * 2 ** level), 64 // (4 * 2 ** level))


def test_published_sizes_grow_with_the_filter_multiplier():
    counts = [sum(p.numel() for p in build_model("autodeeplab", AUTODEEPLAB, NetConfig(channels=f, num_classes=19))
                  .parameters()) for f, _ in PUBLISHED.values()]
    assert counts == sorted(counts)


def test_atrous_convs_are_dense_as_in_the_paper():
    """Auto-DeepLab's "3x3 and 5x5 atrous conv with rate 2" (hnasnet's atrous_kxk): ReLU, a full
    k x k conv at rate 2, BN; k^2 C^2 weights, not DARTS' depthwise-separable k^2 C + C^2."""
    from raynas.workers.oneshot.autodeeplab import AutoDeepLabSupernet

    C = 6
    for k in (3, 5):
        op = AUTODEEPLAB_OPS[f"dil_conv_{k}x{k}"](C, 1, True)
        conv = next(m for m in op.modules() if isinstance(m, torch.nn.Conv2d))
        assert (conv.kernel_size, conv.dilation, conv.groups, conv.padding) == ((k, k), (2, 2), 1, (k - 1, k - 1))
        assert sum(p.numel() for p in op.parameters()) == k * k * C * C + 2 * C
        x = torch.randn(1, C, 9, 9)
        torch.testing.assert_close(op(x), op[2](torch.nn.functional.conv2d(torch.relu(x), conv.weight, padding=k - 1,
                                                                           dilation=2)))
    net = build_model("autodeeplab", AUTODEEPLAB, NetConfig(channels=4, num_classes=3))
    first = net.cells[0].ops[0]  # dil_conv_5x5 on h_{l-2} at level 0: F = 4 channels
    assert sum(p.numel() for p in first.parameters()) == 25 * 16 + 8
    mixed = next(m for m in AutoDeepLabSupernet(4, 2, 3, 3).modules() if type(m).__name__ == "MixedOp")
    dense = mixed.ops[ADL_OPS.index("dil_conv_3x3")]
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.kernel_size == (3, 3) for m in dense.modules())


def test_inspect_builds_published_networks_at_their_width_and_shows_their_figure():
    from raynas.workers.describe import inspect_arch

    reports = {name: inspect_arch("autodeeplab", name, num_classes=19, image_size=64) for name in PUBLISHED}
    for name, (filters, millions) in PUBLISHED.items():
        assert reports[name]["config"]["channels"] == filters and reports[name]["published_params_M"] == millions
    # With the paper's dense atrous convs S/M/L hold 8.08M / 20.30M / 45.28M against the published
    # 10.15M / 21.62M / 44.42M: docs/architecture.md accounts for the rest (decoder, ASPP, downsampling).
    counts = {name: round(r["params"] / 1e6, 2) for name, r in reports.items()}
    assert counts == {"Auto-DeepLab-S": 8.08, "Auto-DeepLab-M": 20.30, "Auto-DeepLab-L": 45.28}
    assert inspect_arch("autodeeplab", "Auto-DeepLab-S", channels=8)["config"]["channels"] == 8
    assert inspect_arch("darts", "DARTS_V2")["published_params_M"] == 3.3
    cell = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    assert inspect_arch("nb201", cell)["published_params_M"] is None
