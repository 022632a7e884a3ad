"""Search spaces: every registered space round-trips its architectures through
strings, decision values and tokens; published genotypes read as printed by
their authors; bad input fails naming the field and the allowed values."""

import itertools
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import Subset, get_space, space_names
from raynas.search_spaces.cell import CELL_OPS, GENOTYPES, NASNET_OPS, PRIMITIVES
from raynas.search_spaces.macro import FILTER_HEIGHTS, NUM_FILTERS, MacroSpace
from raynas.search_spaces.nb201 import NB201_OPS
from raynas.search_spaces.rnn import GENOTYPES as RNN_GENOTYPES
from raynas.search_spaces.rnn import RNNSpace
from raynas.search_spaces.types import Genotype, MacroArch, MacroLayer

SPACES = space_names()
seeds = st.integers(0, 2**32 - 1)
fast = settings(max_examples=20, deadline=None)


def sample(name, seed):
    space = get_space(name)
    return space, space.sample(np.random.default_rng(seed))


@contextmanager
def raises_naming(field, *allowed):
    """Expect an InvalidArchitecture (a ConfigError) whose message names `field` and each of `allowed`."""
    with pytest.raises(InvalidArchitecture) as info:
        yield
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert message.startswith(field + ":"), message
    for a in allowed:
        assert a in message, (a, message)


# -- every space -------------------------------------------------------------------------------

def test_all_spaces_registered():
    assert {"nb201", "darts", "nasnet", "macro", "rnn"} <= set(SPACES)


@pytest.mark.parametrize("name", SPACES)
@fast
@given(seed=seeds)
def test_string_round_trip(name, seed):
    space, arch = sample(name, seed)
    assert space.validate(arch) is arch
    assert space.parse(str(arch)) == arch
    assert space.format(arch) == str(arch)


@pytest.mark.parametrize("name", SPACES)
@fast
@given(seed=seeds)
def test_values_round_trip(name, seed):
    space, arch = sample(name, seed)
    values = space.to_values(arch)
    space.check_values(values)
    assert space.from_values(values) == arch


@pytest.mark.parametrize("name", SPACES)
@fast
@given(seed=seeds)
def test_tokens_round_trip(name, seed):
    space, arch = sample(name, seed)
    tokens = space.encode(arch)
    assert all(0 <= t < space.vocab_size() for t in tokens)
    assert space.decode(tokens) == arch


@pytest.mark.parametrize("name", SPACES)
@fast
@given(seed=seeds)
def test_mutate_changes_exactly_one_decision(name, seed):
    space, arch = sample(name, seed)
    child = space.mutate(arch, np.random.default_rng(seed + 1))
    before, after = space.to_values(arch), space.to_values(child)
    assert sum(a != b for a, b in zip(before, after)) == 1
    assert space.parse(str(child)) == child


@pytest.mark.parametrize("name", SPACES)
def test_same_seed_same_samples(name):
    space = get_space(name)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [space.sample(rng) for _ in range(5)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("name", SPACES)
@fast
@given(data=st.data())
def test_bad_decision_value_names_the_field(name, data):
    space, arch = sample(name, data.draw(seeds))
    values = list(space.to_values(arch))
    i = data.draw(st.integers(0, len(values) - 1))
    d = space.decisions()[i]
    values[i] = (max(d.candidates, default=-1) + 1,) if isinstance(d, Subset) else "bogus"
    with raises_naming(f"arch.{d.name}"):
        space.from_values(values)


@pytest.mark.parametrize("name", SPACES)
def test_bad_tokens_and_foreign_archs_are_rejected(name):
    space, arch = sample(name, 0)
    with raises_naming("tokens"):
        space.decode(space.encode(arch) + [0])
    with raises_naming("arch"):
        space.validate("not an architecture")
    with pytest.raises(InvalidArchitecture, match=r"^arch\b"):
        space.parse("garbage")
    assert space.draw(arch).strip()


# -- NAS-Bench-201 -----------------------------------------------------------------------------

def test_nb201_has_15625_distinct_cells():
    space = get_space("nb201")
    assert space.size() == 15625
    strings = {str(space.from_values(values)) for values in itertools.product(NB201_OPS, repeat=6)}
    assert len(strings) == 15625


def test_nb201_exact_string():
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    space = get_space("nb201")
    arch = space.parse(s)
    assert str(arch) == s
    assert arch.edge_ops()[(2, 1)] == "avg_pool_3x3"


# -- cell spaces (darts, nasnet) -----------------------------------------------------------------

# Verbatim from quark0/darts cnn/genotypes.py (REFERENCES.md section 1).
DARTS_V1 = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
)
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
# xiaomi-automl/NoisyDARTS genotypes.py prints its concats as ranges.
NOISY_DARTS_A = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('dil_conv_3x3', 2), "
    "('dil_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4), ('dil_conv_3x3', 3)], normal_concat=range(2, 6), "
    "reduce=[('max_pool_3x3', 0), ('dil_conv_5x5', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('skip_connect', 2), "
    "('skip_connect', 3), ('skip_connect', 2), ('dil_conv_5x5', 4)], reduce_concat=range(2, 6))"
)
# quark0/darts writes these two over many lines, with trailing commas.
NASNET = """Genotype(
  normal = [
    ('sep_conv_5x5', 1), ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 1), ('skip_connect', 0),
    ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1), ('skip_connect', 1),
  ],
  normal_concat = [2, 3, 4, 5, 6],
  reduce = [
    ('sep_conv_5x5', 1), ('sep_conv_7x7', 0),
    ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1), ('sep_conv_5x5', 0),
    ('skip_connect', 3), ('avg_pool_3x3', 2),
    ('sep_conv_3x3', 2), ('max_pool_3x3', 1),
  ],
  reduce_concat = [4, 5, 6],
)"""
AMOEBANET = """Genotype(
  normal = [
    ('avg_pool_3x3', 0), ('max_pool_3x3', 1),
    ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
    ('sep_conv_3x3', 0), ('avg_pool_3x3', 3),
    ('sep_conv_3x3', 1), ('skip_connect', 1),
    ('skip_connect', 0), ('avg_pool_3x3', 1),
    ],
  normal_concat = [4, 5, 6],
  reduce = [
    ('avg_pool_3x3', 0), ('sep_conv_3x3', 1),
    ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
    ('sep_conv_7x7', 0), ('avg_pool_3x3', 1),
    ('max_pool_3x3', 0), ('max_pool_3x3', 1),
    ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5),
  ],
  reduce_concat = [3, 4, 6]
)"""
PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "NoisyDARTS_a": NOISY_DARTS_A,
             "NASNet": NASNET, "AmoebaNet": AMOEBANET}


def test_op_lists():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert len(NASNET_OPS) == len(set(NASNET_OPS)) == 13
    assert set(CELL_OPS) == set(PRIMITIVES) | set(NASNET_OPS) and len(CELL_OPS) == len(set(CELL_OPS))
    assert get_space("darts").ops == PRIMITIVES and get_space("nasnet").ops == NASNET_OPS


@pytest.mark.parametrize("space_name", ["darts", "nasnet"])
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_genotypes_parse_by_name_and_repr(space_name, name):
    space = get_space(space_name)
    by_name = space.parse(name)
    assert by_name == GENOTYPES[name] == space.parse(PUBLISHED[name])
    assert space.validate(by_name) is by_name
    assert space.parse(str(by_name)) == by_name
    assert space.draw(by_name).startswith("normal cell")


def test_darts_is_v2_and_verbatim_strings_are_canonical():
    space = get_space("darts")
    assert space.parse("DARTS") == space.parse("DARTS_V2") != space.parse("DARTS_V1")
    for s in (DARTS_V1, DARTS_V2):
        assert str(space.parse(s)) == s
        assert space.from_values(space.to_values(space.parse(s))) == space.parse(s)


def test_repr_variations_parse():
    space = get_space("darts")
    varied = DARTS_V2.replace("'", '"').replace(", ", " ,  ").replace("[2 ,  3 ,  4 ,  5]", "range(2, 6)")
    assert space.parse("\n  " + varied + "\n") == GENOTYPES["DARTS_V2"]
    tuples = DARTS_V2.replace("normal=[", "normal=(").replace("], normal_concat", "), normal_concat")
    assert space.parse(tuples) == GENOTYPES["DARTS_V2"]


def test_nasnet_space_holds_nasnet_and_amoebanet():
    space = get_space("nasnet")
    for name in ("NASNet", "AmoebaNet"):
        arch = space.parse(name)
        assert space.from_values(space.to_values(arch)) == arch


@fast
@given(seed=seeds)
def test_nasnet_concats_the_unused_nodes(seed):
    _, arch = sample("nasnet", seed)
    for cell, concat in ((arch.normal, arch.normal_concat), (arch.reduce, arch.reduce_concat)):
        used = {i for _, i in cell}
        assert concat == tuple(k for k in range(2, 7) if k not in used)
        assert 6 in concat


def test_cell_genotypes_outside_the_decisions_validate_but_have_no_values():
    darts, nasnet = get_space("darts"), get_space("nasnet")
    with raises_naming("arch", "5 nodes", "decides 4"):
        darts.to_values(GENOTYPES["NASNet"])
    with raises_naming("arch", "4 nodes", "decides 5"):
        nasnet.to_values(GENOTYPES["DARTS_V2"])
    seven = darts.parse(DARTS_V2.replace("('dil_conv_3x3', 2)", "('sep_conv_7x7', 2)"))
    assert darts.validate(seven) is seven
    with raises_naming("arch.normal[7]", "sep_conv_7x7", "dil_conv_5x5"):
        darts.to_values(seven)


@pytest.mark.parametrize(
    "text, field, allowed",
    [
        (DARTS_V2.replace("('dil_conv_3x3', 2)", "('conv_9x9', 2)"), "arch.normal[7]", "sep_conv_3x3"),
        (DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "arch.normal[7]", "0, 1, 2, 3"),
        (DARTS_V2.replace("[('max_pool_3x3', 0), ", "[(0, 'max_pool_3x3'), "), "arch.reduce[0]", "max_pool_3x3"),
        (DARTS_V2.replace("('skip_connect', 0), ('dil_conv_3x3', 2)", "('skip_connect', 0)"), "arch.normal", ""),
        (DARTS_V2.replace(", ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)", ""),
         "arch.reduce", ""),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[1, 7]"), "arch.normal_concat", "0 to 5"),
        (DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[1, 2]"), "arch.reduce_concat", "2 to 5"),
        (DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 2]"), "arch.reduce_concat", ""),
        (DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[{}]"), "arch.reduce_concat", ""),
        (DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=sorted(x)"), "arch.reduce_concat", ""),
        (DARTS_V2.replace(", reduce_concat=[2, 3, 4, 5]", ""), "arch.reduce_concat", "normal_concat=..."),
        (DARTS_V2.replace("reduce_concat=", "concat="), "arch.concat", "reduce_concat"),
        (DARTS_V2.replace("reduce_concat=", "normal_concat="), "arch.normal_concat", ""),
        ("Genotype(normal=[('sep_conv_3x3', 9)", "arch", "DARTS_V2"),
        ("DARTS_V3", "arch", "DARTS_V1, DARTS_V2"),
        ("__import__('os').system('false')", "arch", "Genotype(normal=..."),
        ("Genotype([], [], [], [])", "arch", "normal=..."),
        ("Genotype(**fields)", "arch", "normal=..."),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6.0)"), "arch.normal_concat", "range"),
        ("", "arch", ""),
    ],
)
def test_malformed_cell_genotypes(text, field, allowed):
    with raises_naming(field, allowed):
        get_space("darts").parse(text)


def test_directly_built_genotypes_are_checked():
    lists = Genotype(normal=[("skip_connect", 0)] * 2, normal_concat=(2,), reduce=((("skip_connect", 0),) * 2),
                     reduce_concat=(2,))
    with raises_naming("arch.normal"):
        get_space("darts").validate(lists)


# -- macro -------------------------------------------------------------------------------------

def test_macro_decisions_and_depth():
    space = get_space("macro")
    assert space.num_layers == 6 and space.max_layers == 24
    names = [d.name for d in space.decisions()]
    assert names[:8] == ["layer0.filter_height", "layer0.filter_width", "layer0.num_filters", "layer0.skips",
                         "layer1.filter_height", "layer1.filter_width", "layer1.num_filters", "layer1.skips"]
    assert space.decisions()[3].candidates == ()  # the first layer's connections step: its anchor, nothing to choose
    assert len(names) == 6 * 4
    deeper = space.with_depth(8)
    assert isinstance(deeper, MacroSpace) and deeper.num_layers == 8 and deeper.max_layers == 24
    assert len(deeper.sample(np.random.default_rng(0)).layers) == 8
    assert get_space("macro", num_layers=8).decisions() == deeper.decisions()
    assert {d.group for d in deeper.decisions()} == {"filter_height", "filter_width", "num_filters", "skip"}


@fast
@given(seed=seeds)
def test_macro_skips_are_subsets_of_earlier_layers(seed):
    _, arch = sample("macro", seed)
    assert arch.layers[0].skips == ()
    for i, layer in enumerate(arch.layers):
        assert layer.skips == tuple(sorted(set(layer.skips))) and set(layer.skips) <= set(range(i))
        assert layer.filter_height in FILTER_HEIGHTS and layer.num_filters in NUM_FILTERS


def test_macro_parses_any_depth_but_decides_one():
    text = "3x5-36 | 1x1-24<0 | 5x5-48<0,1"
    space = get_space("macro")
    arch = space.parse(text)
    assert str(arch) == text and arch.layers[2] == MacroLayer(5, 5, 48, (0, 1))
    assert space.validate(arch) is arch and "layers 0, 1" in space.draw(arch)
    with raises_naming("arch", "depth 3", "num_layers=6", "with_depth(3)"):
        space.to_values(arch)
    three = space.with_depth(3)
    assert three.from_values(three.to_values(arch)) == arch


@pytest.mark.parametrize(
    "text, field, allowed",
    [
        ("3x5-36 | 1x1-24<0 | 5x5-50<0,1", "arch.layer2.num_filters", "24, 36, 48, 64"),
        ("3x4-36", "arch.layer0.filter_width", "1, 3, 5, 7"),
        ("3x5-36 | 1x1-24<1", "arch.layer1.skips", "0"),
        ("3x5-36 | 1x1-24 | 1x1-24<1,0", "arch.layer2.skips", "0, 1"),
        ("3x5-36 | 1x1-24<0 | conv", "arch.layer2", "3x5-36"),
        ("garbage", "arch.layer0", "HxW-F"),
        (" | ".join(["1x1-24"] * 25), "arch", "1..24"),
    ],
)
def test_malformed_macro_strings(text, field, allowed):
    with raises_naming(field, allowed):
        get_space("macro").parse(text)


def test_macro_first_layer_has_no_skips_and_options_are_checked():
    with raises_naming("arch.layer0.skips"):
        get_space("macro").validate(MacroArch((MacroLayer(3, 3, 24, (0,)),)))
    for options in ({"num_layers": 0}, {"num_layers": 30}, {"max_layers": 0}):
        with pytest.raises(ConfigError, match=next(iter(options))):
            get_space("macro", **options)


# -- rnn ---------------------------------------------------------------------------------------

# REFERENCES.md's compact copy, and quark0/darts rnn/genotypes.py verbatim.
RNN_DARTS_V2 = ("Genotype(recurrent=[('sigmoid',0),('relu',1),('relu',1),('identity',1),('tanh',2),('sigmoid',5),"
                "('tanh',3),('relu',5)], concat=range(1,9))")
RNN_DARTS_V2_QUARK0 = ("Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), "
                       "('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))")
RNN_DARTS_V1_QUARK0 = ("Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), "
                       "('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))")
RNN_ENAS_QUARK0 = """Genotype(
    recurrent = [
        ('tanh', 0), ('tanh', 1), ('relu', 1), ('tanh', 3), ('tanh', 3), ('relu', 3),
        ('relu', 4), ('relu', 7), ('relu', 8), ('relu', 8), ('relu', 8),
    ],
    concat = [2, 5, 6, 9, 10, 11]
)"""


def test_rnn_darts_genotypes():
    space = get_space("rnn")
    assert space.steps == 8 and len(space.decisions()) == 16
    v2 = space.parse("DARTS_V2")
    assert v2 == space.parse("DARTS") == space.parse(RNN_DARTS_V2) == space.parse(RNN_DARTS_V2_QUARK0)
    assert v2.steps == 8 and v2.recurrent[5] == ("sigmoid", 5) and v2.concat == tuple(range(1, 9))
    assert str(v2) == RNN_DARTS_V2_QUARK0
    assert str(space.parse("DARTS_V1")) == RNN_DARTS_V1_QUARK0
    assert space.from_values(space.to_values(v2)) == v2


def test_rnn_enas_has_other_steps_and_concat():
    space = get_space("rnn")
    enas = space.parse("ENAS")
    assert enas == space.parse(RNN_ENAS_QUARK0) == RNN_GENOTYPES["ENAS"]
    assert enas.steps == 11 and space.validate(enas) is enas and space.parse(str(enas)) == enas
    assert "mean(h2, h5, h6, h9, h10, h11)" in space.draw(enas)
    with raises_naming("arch", "11 steps", "steps=8", "steps=11"):
        space.to_values(enas)
    eleven = RNNSpace(steps=11)
    assert eleven.from_values(eleven.to_values(enas)).recurrent == enas.recurrent


@pytest.mark.parametrize(
    "text, field, allowed",
    [
        (RNN_DARTS_V2.replace("('sigmoid',0)", "('none',0)"), "arch.recurrent[0]", "tanh, relu, sigmoid, identity"),
        (RNN_DARTS_V2.replace("('sigmoid',0)", "('sigmoid',1)"), "arch.recurrent[0]", "0"),
        (RNN_DARTS_V2.replace("range(1,9)", "[0, 1]"), "arch.concat", "1, 2, 3, 4, 5, 6, 7, 8"),
        (RNN_DARTS_V2.replace("range(1,9)", "range(1, 2, 3, 4)"), "arch.concat", ""),
        ("Genotype(recurrent=[], concat=[1])", "arch.recurrent", ""),
        ("Genotype(normal=[], concat=[1])", "arch.normal", "recurrent"),
        ("ENAS_V2", "arch", "DARTS_V1"),
    ],
)
def test_malformed_rnn_genotypes(text, field, allowed):
    with raises_naming(field, allowed):
        get_space("rnn").parse(text)


def test_rnn_steps_option_is_checked():
    with pytest.raises(ConfigError, match="steps"):
        get_space("rnn", steps=0)
