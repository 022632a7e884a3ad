"""Networks built from architectures: published sizes, FLOPs, and tiny
forward/backward passes of every kind of network."""

from __future__ import annotations

import pytest
import torch

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import get_space, space_names
from raynas.search_spaces.cell import GENOTYPES
from raynas.search_spaces.nb201 import NB201Arch
from raynas.search_spaces.rnn import GENOTYPES as RNN_GENOTYPES
from raynas.search_spaces.types import MacroArch, MacroLayer
from raynas.workers import nets
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.profile import count_aux_params, count_flops, count_params

NB201_ARCH0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
NB201_ARCH1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
TINY_IMAGES = NetConfig(in_channels=1, image_size=8, channels=8, layers=5, auxiliary=True, drop_path=0.2)


def test_every_search_space_has_a_network():
    assert set(space_names()) <= set(nets.space_names())


def test_unknown_space_and_wrong_arch_type_are_refused():
    with pytest.raises(ConfigError) as info:
        build_model("nope", NB201Arch(("none",) * 6), NetConfig())
    assert info.value.field == "space"
    with pytest.raises(InvalidArchitecture):
        build_model("nb201", GENOTYPES["DARTS_V2"], NetConfig())


def test_net_config_validates_and_networks_refuse_fields_they_cannot_honour():
    with pytest.raises(ConfigError) as info:
        NetConfig(channels=0)
    assert info.value.field == "channels"
    with pytest.raises(ConfigError) as info:
        NetConfig(drop_path=1.0)
    assert info.value.field == "drop_path"
    with pytest.raises(ConfigError) as info:
        build_model("nb201", NB201Arch(("none",) * 6), NetConfig(auxiliary=True))
    assert info.value.field == "auxiliary"
    with pytest.raises(ConfigError) as info:
        build_model("rnn", RNN_GENOTYPES["DARTS_V2"], NetConfig(embed_size=32, hidden_size=64))
    assert info.value.field == "embed_size"
    with pytest.raises(ConfigError) as info:  # 4x4 images leave 1x1 maps at the auxiliary head
        build_model("darts", GENOTYPES["DARTS_V2"], NetConfig(image_size=4, channels=4, layers=3, auxiliary=True))
    assert info.value.field == "image_size"


# -- NAS-Bench-201 -----------------------------------------------------------------------

@pytest.mark.parametrize("arch, params", [
    (NB201_ARCH0, 129_306),
    (NB201_ARCH1, 802_426),
    (NB201Arch(("none",) * 6), 73_306),
    (NB201Arch(("nor_conv_3x3",) * 6), 1_531_546),
])
def test_nb201_params_equal_the_benchmark(arch, params):
    arch = get_space("nb201").parse(arch) if isinstance(arch, str) else arch
    assert count_params(build_model("nb201", arch, NetConfig())) == params


def test_nb201_flops_and_their_relation_to_the_benchmark_table():
    model = build_model("nb201", get_space("nb201").parse(NB201_ARCH0), NetConfig())
    flops = count_flops(model, torch.randn(1, 3, 32, 32))
    assert flops == 15_647_370
    # The table (NASLib: 17.958592M) also counts 3 per output element of every
    # ReLU-conv-BN op and 9 (the 3x3 window) per output element of every cell pool,
    # plus 160,822 in the fixed backbone; one output map per cell op, summed over the
    # 15 cells, is 16*32*32*5 + 32*16*16*5 + 64*8*8*5 = 143,360 elements. This relation
    # holds for all 15,625 rows of the table; arch 0 has 2 conv ops and 1 pool.
    assert flops + 160_822 + 143_360 * (3 * 2 + 9 * 1) == 17_958_592


def test_nb201_tiny_forward_backward():
    torch.manual_seed(0)
    model = build_model("nb201", get_space("nb201").parse(NB201_ARCH1),
                        NetConfig(in_channels=1, channels=4, layers=1))
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- DARTS / NASNet cells ----------------------------------------------------------------

def test_darts_v2_eval_network_size():
    model = build_model("darts", GENOTYPES["DARTS_V2"], NetConfig(auxiliary=True))
    # quark0/darts reports 3.349342M for DARTS_V2 (C=36, 20 cells), auxiliary head excluded.
    assert count_params(model) == 3_349_342
    assert count_aux_params(model) == sum(p.numel() for p in model.auxiliary_head.parameters()) > 0
    assert count_params(model) + count_aux_params(model) == sum(p.numel() for p in model.parameters())


def test_official_nasnet_a_against_a_hand_count():
    """NASNet-A 6@768 (32 channels, 18 normal and 2 reduction cells): TF-slim's concatenation, counted
    by hand from the ops (DARTS-form: a separable conv is two (depthwise k x k, pointwise, BN) layers; a
    1x1 ReLU-conv-BN and a factorized reduction both have C_in x C weights and a BN)."""
    def sep(c, k):
        return 2 * (k * k * c + c * c + 2 * c)

    def conv1x1(c_in, c):
        return c_in * c + 2 * c

    normal_ops = lambda c: 2 * sep(c, 5) + 3 * sep(c, 3)  # noqa: E731
    reduce_ops = lambda c: 2 * sep(c, 5) + 2 * sep(c, 7) + sep(c, 3)  # noqa: E731
    stem = 3 * 96 * 9 + 2 * 96
    total, prev_prev, prev, c = stem, 96, 96, 32
    for i in range(20):
        reduction = i in (6, 13)
        c *= 2 if reduction else 1
        # After a reduction the older input is factorized-reduced: C_in x C weights as well.
        total += conv1x1(prev_prev, c) + conv1x1(prev, c) + (reduce_ops(c) if reduction else normal_ops(c))
        prev_prev, prev = prev, (4 if reduction else 6) * c
    total += prev * 10 + 10
    assert prev == 768
    model = build_model("nasnet", GENOTYPES["NASNet-A"], NetConfig(in_channels=3, num_classes=10, image_size=32,
                                                                   channels=32, layers=20))
    assert count_params(model) == total == 3_328_234
    assert get_space("nasnet").published_size("NASNet-A") == (32, 3.3, 20)
    # The DARTS port's concatenation (blocks only) loses the older input and reduction block 1.
    port = build_model("nasnet", GENOTYPES["NASNet"], NetConfig(in_channels=3, num_classes=10, image_size=32,
                                                               channels=32, layers=20))
    assert count_params(port) == 3_061_738


def test_a_reduction_cell_cannot_concatenate_its_inputs():
    genotype = GENOTYPES["NASNet-A"]
    with pytest.raises(InvalidArchitecture, match="reduce_concat"):
        get_space("nasnet").validate(type(genotype)(genotype.normal, genotype.normal_concat, genotype.reduce, (0, 3)))


PORT_GENOTYPES = [
    GENOTYPES["DARTS_V2"],
    GENOTYPES["NASNet"],      # 5 steps, concat [2..6] / [4, 5, 6]
    GENOTYPES["AmoebaNet"],   # concat [4, 5, 6] / [3, 4, 6], conv_7x1_1x7, input 5
    GENOTYPES["NASNet-A"],    # TF-slim's concat: input 0 in the normal cell
]


@pytest.mark.parametrize("genotype", PORT_GENOTYPES, ids=["DARTS_V2", "NASNet", "AmoebaNet", "NASNet-A"])
def test_cell_network_tiny_training_step(genotype):
    torch.manual_seed(0)
    model = build_model("nasnet", genotype, TINY_IMAGES)
    assert model.drop_path_prob == 0.2
    model.train()
    logits, aux_logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == aux_logits.shape == (2, 10)
    (logits.sum() + 0.4 * aux_logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cell_network_without_auxiliary_returns_logits_in_training():
    model = build_model("darts", GENOTYPES["DARTS_V2"], NetConfig(in_channels=1, image_size=8, channels=4, layers=3))
    assert model.auxiliary_head is None
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# -- Zoph & Le macro CNN -----------------------------------------------------------------

def test_macro_network_follows_skips():
    torch.manual_seed(0)
    arch = MacroArch((
        MacroLayer(3, 5, 8),
        MacroLayer(1, 1, 4, (0,)),
        MacroLayer(5, 3, 6, (0, 1)),
        MacroLayer(3, 3, 4, ()),     # no skips: reads the image
        MacroLayer(7, 1, 4, (3,)),
    ))
    model = build_model("macro", arch, NetConfig(in_channels=1))
    # Layers 2 and 4 are read by no later layer, so the classifier sees 6 + 4 channels.
    assert model.outputs == (2, 4)
    assert model.classifier.in_features == 10
    assert [layer[0].in_channels for layer in model.layers] == [1, 8, 12, 1, 4]
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError) as info:
        build_model("macro", arch, NetConfig(channels=16))
    assert info.value.field == "channels"


# -- DARTS recurrent cell ----------------------------------------------------------------

def test_darts_v2_language_model_size():
    model = build_model("rnn", RNN_GENOTYPES["DARTS_V2"], NetConfig(vocab_size=10_000, embed_size=850, hidden_size=850))
    # 10k x 850 tied embedding + decoder bias + (1700 + 8 x 850) x 1700 cell weights.
    assert count_params(model) == 22_960_000
    assert count_params(model) == pytest.approx(23e6, rel=0.02)  # the paper's 23M


def test_language_model_tiny_forward_backward_and_flops():
    torch.manual_seed(0)
    config = NetConfig(vocab_size=50, channels=16, dropout_e=0.1)
    model = build_model("rnn", RNN_GENOTYPES["ENAS"], config)
    assert model.decoder.weight is model.embedding.weight
    tokens = torch.randint(0, 50, (5, 3))
    model.train()
    logits, hidden = model(tokens, model.init_hidden(3))
    assert logits.shape == (5, 3, 50) and hidden.shape == (3, 16)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tokens.reshape(-1)).backward()
    assert all(p.grad is not None for p in model.parameters())
    # Per step: node 0 reads [x, h] (32 -> 32), 11 nodes read h (16 -> 32); decoder 16 -> 50 + bias.
    per_token = 32 * 32 + 11 * 16 * 32 + 16 * 50 + 50
    assert count_flops(model, tokens[:, :1]) == 5 * per_token
    assert model.training  # count_flops restores the mode
