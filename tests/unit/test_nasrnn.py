"""Zoph & Le's recurrent tree cell: the space, the cell's forward, the published NAS cell."""

import numpy as np
import pytest
import torch

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import get_space
from raynas.search_spaces.nasrnn import GENOTYPES
from raynas.search_spaces.types import TreeCell
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.profile import count_params


def test_decisions_follow_the_papers_controller_order():
    space = get_space("nasrnn")
    names = [d.name for d in space.decisions()]
    # 15 tree nodes (8 leaves, then each level up), combination before activation; then the
    # cell inject; then the two cell indices.
    assert len(names) == 15 * 2 + 2 + 2
    assert names[:4] == ["node0.combination", "node0.activation", "node1.combination", "node1.activation"]
    assert names[28:] == ["node14.combination", "node14.activation", "inject.combination", "inject.activation",
                          "cell.inject_at", "cell.memory_from"]
    assert space.decisions()[0].choices == ("add", "mul")
    assert space.decisions()[1].choices == ("tanh", "relu", "sigmoid", "identity")
    assert space.decisions()[-1].choices == tuple(range(15))


def test_published_cell_by_name_and_round_trips():
    space = get_space("nasrnn")
    nas = space.parse("NAS")
    assert nas is GENOTYPES["NAS"] and nas.base == 8
    assert (nas.inject, nas.inject_at, nas.memory_from) == (("add", "tanh"), 8, 12)
    assert space.parse(str(nas)) == nas
    assert space.from_values(space.to_values(nas)) == nas
    rng = np.random.default_rng(3)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.parse(str(arch)) == arch and space.decode(space.encode(arch)) == arch
        assert space.mutate(arch, rng) != arch


@pytest.mark.parametrize("text, field", [
    ("add/tanh inject=add/tanh cell=0,0", "arch.nodes"),
    ("add/tanh add/tanh add/cosh inject=add/tanh cell=0,0", "arch.nodes[2]"),
    ("add/tanh add/tanh sub/tanh inject=add/tanh cell=0,0", "arch.nodes[2]"),
    ("add/tanh add/tanh add/tanh inject=add/tanh cell=0,3", "arch.memory_from"),
    ("add/tanh add/tanh add/tanh inject=add/tanh cell=a,b", "arch.cell"),
    ("add/tanh add/tanh add/tanh", "arch"),
])
def test_malformed_cells_name_the_field(text, field):
    with pytest.raises(InvalidArchitecture) as exc:
        get_space("nasrnn").parse(text)
    assert exc.value.field == field


def test_base_option_is_checked_and_sizes_the_tree():
    assert len(get_space("nasrnn", base=2).decisions()) == 3 * 2 + 4
    with pytest.raises(ConfigError) as exc:
        get_space("nasrnn", base=3)
    assert exc.value.field == "base"
    small = get_space("nasrnn", base=2).parse("add/tanh add/tanh add/tanh inject=add/tanh cell=0,2")
    with pytest.raises(InvalidArchitecture):
        get_space("nasrnn").to_values(small)


def _cell(arch, hidden=1, input_size=1):
    model = build_model("nasrnn", arch, NetConfig(vocab_size=5, channels=hidden, dropout=0, dropout_h=0,
                                                   dropout_x=0, dropout_i=0))
    return model.cells[0].eval()


def test_tree_cell_forward_on_hand_made_inputs():
    # Base 2: leaf 0 = W0 x * U0 h (identity), leaf 1 = tanh(W1 x + U1 h), root = sigmoid(a0 + a1);
    # c_{t-1} joins leaf 1 by multiplication then ReLU, and c_t is leaf 0's product.
    arch = get_space("nasrnn", base=2).parse("mul/identity add/tanh add/sigmoid inject=mul/relu cell=1,0")
    cell = _cell(arch)
    w, u = {0: 0.5, 1: -1.0}, {0: 2.0, 1: 0.25}
    with torch.no_grad():
        for leaf in (0, 1):
            cell.x_proj.weight[cell.leaf_columns(leaf)] = w[leaf]
            cell.h_proj.weight[cell.leaf_columns(leaf)] = u[leaf]
    x, h, c = 0.8, -0.6, 1.5
    a0 = (w[0] * x) * (u[0] * h)
    a1 = max(0.0, np.tanh(w[1] * x + u[1] * h) * c)
    expected_h = 1 / (1 + np.exp(-(a0 + a1)))
    out, (h1, c1) = cell(torch.tensor([[[x]]]), (torch.tensor([[h]]), torch.tensor([[c]])))
    assert h1.item() == pytest.approx(expected_h, rel=1e-6)
    assert c1.item() == pytest.approx(a0, rel=1e-6)
    assert out[0].item() == h1.item()


def test_published_cell_computes_the_nas_cell_equations():
    torch.manual_seed(0)
    H, B = 6, 4
    cell = _cell(GENOTYPES["NAS"], hidden=H)
    x, h, c = torch.randn(1, B, H), torch.randn(B, H), torch.randn(B, H)
    xs, us = cell.x_proj(x[0]), cell.h_proj(h)
    i = [xs[:, cell.leaf_columns(k)] for k in range(8)]
    m = [us[:, cell.leaf_columns(k)] for k in range(8)]
    sig, tanh, relu = torch.sigmoid, torch.tanh, torch.relu
    l1 = [sig(i[0] + m[0]), relu(i[1] + m[1]), sig(i[2] + m[2]), relu(i[3] * m[3]),
          tanh(i[4] + m[4]), sig(i[5] + m[5]), tanh(i[6] + m[6]), sig(i[7] + m[7])]
    l2 = [tanh(l1[0] * l1[1]), tanh(l1[2] + l1[3]), tanh(l1[4] * l1[5]), sig(l1[6] + l1[7])]
    l2[0] = tanh(l2[0] + c)
    new_c = l2[0] * l2[1]
    new_h = tanh(new_c * tanh(l2[2] + l2[3]))
    _, (h1, c1) = cell(x, (h, c))
    torch.testing.assert_close(h1, new_h)
    torch.testing.assert_close(c1, new_c)


def test_published_cell_size():
    # TensorFlow's NASCell: W [input, 8H] and U [H, 8H], no biases; with the tied 10k
    # vocabulary the model adds one 10k x H embedding and the decoder's 10k biases.
    for hidden in (200, 650):
        model = build_model("nasrnn", GENOTYPES["NAS"], NetConfig(vocab_size=10_000, embed_size=hidden,
                                                                  hidden_size=hidden))
        assert count_params(model.cells[0]) == 8 * hidden * (2 * hidden)
        assert count_params(model) == 16 * hidden ** 2 + 10_000 * hidden + 10_000


def test_tree_language_model_trains_and_carries_its_memory():
    torch.manual_seed(0)
    model = build_model("nasrnn", GENOTYPES["NAS"], NetConfig(vocab_size=30, channels=8))
    assert model.decoder.weight is model.embedding.weight
    tokens = torch.randint(0, 30, (5, 3))
    h, c = model.init_hidden(3)
    logits, (h1, c1) = model(tokens, (h, c))
    assert logits.shape == (5, 3, 30) and h1.shape == c1.shape == (3, 8)
    assert not torch.equal(c1, c)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 30), tokens.reshape(-1)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_tree_cell_of_the_wrong_shape_is_refused():
    with pytest.raises(InvalidArchitecture) as exc:
        get_space("nasrnn").validate(TreeCell((("add", "tanh"),) * 4, ("add", "tanh"), 0, 0))
    assert exc.value.field == "arch.nodes"


def test_zoph_and_le_children_stack_two_layers():
    """Zoph & Le's PTB children had two layers: the second cell reads the first's outputs, and the
    model's state is every layer's (h, c) in order."""
    torch.manual_seed(0)
    model = build_model("nasrnn", GENOTYPES["NAS"], NetConfig(vocab_size=30, channels=8, layers=2))
    assert len(model.cells) == 2
    assert count_params(model) == 2 * 16 * 8 ** 2 + 30 * 8 + 30
    hidden = model.init_hidden(3)
    assert len(hidden) == 4 and all(t.shape == (3, 8) for t in hidden)
    tokens = torch.randint(0, 30, (5, 3))
    logits, state = model.eval()(tokens, hidden)
    x = model.embedding(tokens)
    first, (h1, c1) = model.cells[0](x, hidden[:2])
    second, (h2, c2) = model.cells[1](first, hidden[2:])
    torch.testing.assert_close(logits, model.decoder(second))
    for got, want in zip(state, (h1, c1, h2, c2)):
        torch.testing.assert_close(got, want)
    darts = build_model("rnn", get_space("rnn").parse("DARTS_V2"), NetConfig(vocab_size=30, channels=8, layers=3))
    assert len(darts.init_hidden(2)) == 3 and darts(tokens, darts.init_hidden(3))[0].shape == (5, 3, 30)


def test_inspect_flags_the_published_language_models():
    from raynas.workers.describe import inspect_arch

    darts = inspect_arch("rnn", "DARTS_V2")  # DARTS' PTB model: 850 wide, one layer, 23M
    assert (darts["config"]["channels"], darts["published_params_M"]) == (850, 23.0)
    assert abs(darts["params"] / 1e6 - 23.0) < 0.05
    for name, millions in (("NAS-25M", 25.0), ("NAS-54M", 54.0)):  # Zoph & Le's two-layer PTB models
        report = inspect_arch("nasrnn", name)
        assert report["config"]["layers"] == 2 and report["published_params_M"] == millions
        assert abs(report["params"] / 1e6 - millions) < 0.05
        assert get_space("nasrnn").parse(name) == GENOTYPES["NAS"]
    assert inspect_arch("nasrnn", "NAS", channels=8)["published_params_M"] is None
