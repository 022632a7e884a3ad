"""Shared logic of the NASNet/DARTS-style cell spaces (darts, nasnet).

A cell has two inputs (0 = c_{k-2}, 1 = c_{k-1}) and `steps` intermediate
nodes 2..steps+1; each node sums two ops, each applied to an earlier node.
A genotype holds a normal and a reduction cell in quark0/darts' form, so the
published genotypes are read from their repr as printed in that repository.

The reader of that repr (`read_genotype_call`) and the checks of its
(name, input) pair lists (`check_pairs`, `check_concat`) also serve the
recurrent space, whose genotype uses the same notation.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence

from raynas.common import InvalidArchitecture
from raynas.search_spaces.base import Categorical, SearchSpace
from raynas.search_spaces.types import Genotype

# quark0/darts cnn/genotypes.py, in its order: the order fixes the controller's op ids.
PRIMITIVES = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
# The 13 ops of the NASNet paper (sec. 3), in the paper's order, under the DARTS port's
# names; the port calls the 1x7-then-7x1 conv `conv_7x1_1x7`.
NASNET_OPS = (
    "skip_connect", "conv_3x1_1x3", "conv_7x1_1x7", "dil_conv_3x3", "avg_pool_3x3",
    "max_pool_3x3", "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3",
    "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
)
# Every op a cell genotype may name, hence every op the network builder implements.
CELL_OPS = PRIMITIVES + tuple(op for op in NASNET_OPS if op not in PRIMITIVES)

CELLS = ("normal", "reduce")
GENOTYPE_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")

# Published cells, from quark0/darts@f276dd3 cnn/genotypes.py (NASNet, AmoebaNet: that
# repository's DARTS-port transcriptions) and xiaomi-automl/NoisyDARTS genotypes.py.
GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": Genotype(
        normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
        reduce_concat=(2, 3, 4, 5),
    ),
    "DARTS_V2": Genotype(
        normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
        reduce_concat=(2, 3, 4, 5),
    ),
    "NoisyDARTS_a": Genotype(
        normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
                ("dil_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4), ("dil_conv_3x3", 3)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("max_pool_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("skip_connect", 2), ("skip_connect", 3), ("skip_connect", 2), ("dil_conv_5x5", 4)),
        reduce_concat=(2, 3, 4, 5),
    ),
    "NASNet": Genotype(
        normal=(("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
                ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
                ("sep_conv_3x3", 1), ("skip_connect", 1)),
        normal_concat=(2, 3, 4, 5, 6),
        reduce=(("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
                ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
                ("sep_conv_3x3", 2), ("max_pool_3x3", 1)),
        reduce_concat=(4, 5, 6),
    ),
    "AmoebaNet": Genotype(
        normal=(("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
                ("skip_connect", 0), ("avg_pool_3x3", 1)),
        normal_concat=(4, 5, 6),
        reduce=(("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
                ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
                ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)),
        reduce_concat=(3, 4, 6),
    ),
}
GENOTYPES["DARTS"] = GENOTYPES["DARTS_V2"]
# The official NASNet-A (TF-slim nasnet_utils.py), in this notation. Its blocks are the port's: TF's
# hidden state 0 is the previous cell (our input 1) and 1 the cell before it (our 0); its `none` is an
# identity where the port writes skip_connect, and every `none` of NASNet-A keeps stride and width, so
# the two agree op for op. The cell output differs: TF concatenates each state its `used` list does not
# flag, the older cell input too in the normal cell ([1, 0, 0, 0, 0, 0, 0]: all but input 1) and block 1
# of the reduction cell although block 4 reads it ([1, 1, 1, 0, 0, 0, 0]).
GENOTYPES["NASNet-A"] = dataclasses.replace(GENOTYPES["NASNet"], normal_concat=(0, 2, 3, 4, 5, 6),
                                            reduce_concat=(3, 4, 5, 6))
#: (initial channels, parameters in millions, cells) of published CIFAR-10 networks (REFERENCES'
#: table; NASNet-A 6@768: 32 channels, 6 normal cells per stage, 768 filters before the classifier).
PUBLISHED_SIZES: dict[str, tuple[int, float, int]] = {"NASNet-A": (32, 3.3, 20), "DARTS_V2": (36, 3.3, 20),
                                                      "DARTS": (36, 3.3, 20), "DARTS_V1": (36, 3.3, 20)}


# -- reading and checking quark0/darts genotype text (shared with the rnn space) ------------

def read_genotype_call(text: str, fields: Sequence[str], names: Sequence[str], function: str = "Genotype"
                       ) -> dict[str, object]:
    """The keyword values of a `Genotype(field=..., ...)` repr (or another `function`'s), lists turned into tuples.

    Read with `ast`, never eval, since the text comes from users and the wire.
    Besides literals, `range(a, b)` is accepted because quark0/darts prints concats
    that way. `names` are the published names the caller also accepts, for the error.
    """
    expected = f"{function}(" + ", ".join(f"{f}=..." for f in fields) + ")"
    allowed = f"{expected} or a published name: {', '.join(names)}"
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise InvalidArchitecture("arch", f"cannot read {text!r}: {exc.msg}", allowed) from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == function):
        raise InvalidArchitecture("arch", f"{text!r} is neither a genotype nor a published name", allowed)
    if call.args or any(keyword.arg is None for keyword in call.keywords):
        raise InvalidArchitecture("arch", "genotype fields must be given by keyword", expected)
    values: dict[str, object] = {}
    for keyword in call.keywords:
        field = f"arch.{keyword.arg}"
        if keyword.arg not in fields:
            raise InvalidArchitecture(field, "unknown genotype field", fields)
        if keyword.arg in values:
            raise InvalidArchitecture(field, "given twice")
        values[keyword.arg] = _frozen(_literal(keyword.value, field))
    missing = [f for f in fields if f not in values]
    if missing:
        raise InvalidArchitecture(f"arch.{missing[0]}", "missing", expected)
    return values


def _literal(node: ast.expr, field: str) -> object:
    try:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            bounds = [ast.literal_eval(a) for a in node.args]
            if not node.keywords and 1 <= len(bounds) <= 3 and all(type(b) is int for b in bounds):
                return range(*bounds)
        else:
            return ast.literal_eval(node)
    except (ValueError, TypeError):
        pass
    raise InvalidArchitecture(field, f"not a literal list or range(a, b): {ast.unparse(node)!r}")


def _frozen(value: object) -> object:
    """Lists to tuples, so that the genotype is hashable and equal to a sampled one."""
    if isinstance(value, (list, tuple, range)):
        return tuple(_frozen(v) for v in value)
    return value


def check_pairs(
    pairs: object, field: str, kind: str, names: Sequence[str], inputs_of: Callable[[int], int]
) -> None:
    """`pairs` is a non-empty tuple of (name, input) with name in `names` and
    0 <= input < inputs_of(i) for the i-th pair; errors name the pair, e.g. arch.normal[3]."""
    if not isinstance(pairs, tuple) or not pairs:
        raise InvalidArchitecture(field, f"must be a non-empty tuple of ({kind}, input) pairs, got {pairs!r}")
    for i, pair in enumerate(pairs):
        at = f"{field}[{i}]"
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise InvalidArchitecture(at, f"must be a ({kind}, input) pair, got {pair!r}")
        name, source = pair
        if name not in names:
            raise InvalidArchitecture(at, f"unknown {kind} {name!r}", names)
        limit = inputs_of(i)
        if type(source) is not int or not 0 <= source < limit:
            raise InvalidArchitecture(at, f"input {source!r} must be an earlier node", range(limit))


def check_concat(concat: object, field: str, nodes: range) -> None:
    """`concat` is a non-empty tuple of distinct nodes from `nodes` (a range)."""
    if not (
        isinstance(concat, tuple) and concat and all(type(n) is int and n in nodes for n in concat)
        and len(set(concat)) == len(concat)
    ):
        raise InvalidArchitecture(field, f"must list distinct nodes from {nodes.start} to {nodes.stop - 1}, "
                                  f"got {concat!r}", nodes)


# -- the cell spaces --------------------------------------------------------------------------

def _node_of(i: int) -> int:
    """The node that the i-th (op, input) pair of a cell feeds: two pairs per node, from node 2."""
    return 2 + i // 2


def check_genotype(arch: object) -> Genotype:
    """Return `arch` if it is a well-formed cell genotype over CELL_OPS (any step count)."""
    if not isinstance(arch, Genotype):
        raise InvalidArchitecture("arch", f"expected a cell Genotype, got {type(arch).__name__}")
    for cell in CELLS:
        pairs = getattr(arch, cell)
        check_pairs(pairs, f"arch.{cell}", "op", CELL_OPS, _node_of)
        if len(pairs) % 2:
            raise InvalidArchitecture(f"arch.{cell}", f"has {len(pairs)} pairs; each node takes two")
        if len(pairs) != len(arch.normal):
            raise InvalidArchitecture(
                f"arch.{cell}", f"has {len(pairs) // 2} nodes but the normal cell has {arch.steps}"
            )
        # A normal cell may concatenate its inputs too, as TF-slim's NASNet-A does; a reduction cell's
        # inputs are at the resolution before it.
        check_concat(getattr(arch, f"{cell}_concat"), f"arch.{cell}_concat",
                     range(0 if cell == "normal" else 2, arch.steps + 2))
    return arch


class CellSpace(SearchSpace):
    """A normal and a reduction cell of `steps` nodes, each node two (input, op) choices.

    Decisions follow ENAS's order (input, op, input, op per node), normal cell
    first. Inputs of node k share a head per cell (`normal.in{k}`), since the
    number of choices grows with k; ops share one head per cell. Which nodes
    the cell concatenates is not decided but follows `concat`, so
    from_values(to_values(a)) == a only where a's concat obeys that rule;
    any other published genotype round-trips through its string.

    `validate` and `parse` accept every well-formed genotype over CELL_OPS, so
    one space can load any published cell for building; `to_values` raises
    for a genotype its decisions cannot express.
    """

    def __init__(self, ops: Sequence[str], steps: int):
        self.ops = tuple(ops)
        self.steps = steps
        self._decisions = tuple(
            Categorical(f"{cell}.node{k}.{kind}{j}", tuple(range(k)) if kind == "in" else self.ops,
                        group=f"{cell}.in{k}" if kind == "in" else f"{cell}.op")
            for cell in CELLS
            for k in range(2, steps + 2)
            for j in (0, 1)
            for kind in ("in", "op")
        )

    def concat(self, pairs: tuple[tuple[str, int], ...]) -> tuple[int, ...]:
        """The nodes a sampled cell concatenates: all intermediate nodes, as in DARTS."""
        return tuple(range(2, self.steps + 2))

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> Genotype:
        self.check_values(values)
        half = len(values) // 2
        cells = {}
        for cell, chunk in zip(CELLS, (values[:half], values[half:])):
            # chunk holds (input, op) per pair; a genotype stores (op, input).
            pairs = tuple((chunk[i + 1], chunk[i]) for i in range(0, len(chunk), 2))
            cells[cell] = pairs
            cells[f"{cell}_concat"] = self.concat(pairs)
        return Genotype(**cells)

    def to_values(self, arch: Genotype) -> tuple:
        check_genotype(arch)
        if arch.steps != self.steps:
            raise InvalidArchitecture(
                "arch", f"has {arch.steps} nodes per cell but the {self.name} space decides {self.steps}"
            )
        values = []
        for cell in CELLS:
            for i, (op, source) in enumerate(getattr(arch, cell)):
                if op not in self.ops:
                    raise InvalidArchitecture(
                        f"arch.{cell}[{i}]", f"op {op!r} is not in the {self.name} space", self.ops
                    )
                values += [source, op]
        return tuple(values)

    def validate(self, arch: Genotype) -> Genotype:
        return check_genotype(arch)

    def parse(self, text: str) -> Genotype:
        name = text.strip()
        if name in GENOTYPES:
            return GENOTYPES[name]
        return check_genotype(Genotype(**read_genotype_call(text, GENOTYPE_FIELDS, tuple(GENOTYPES))))

    def published_size(self, text: str) -> tuple[int, float, int | None] | None:
        return PUBLISHED_SIZES.get(text.strip())

    def draw(self, arch: Genotype) -> str:
        check_genotype(arch)

        def node(j: int) -> str:
            return ("c_{k-2}", "c_{k-1}")[j] if j < 2 else f"node {j}"

        lines = []
        for cell in CELLS:
            pairs = getattr(arch, cell)
            concat = ", ".join(node(j) for j in getattr(arch, f"{cell}_concat"))
            lines.append(f"{cell} cell -> concat({concat})")
            for i in range(0, len(pairs), 2):
                terms = " + ".join(f"{op}({node(j)})" for op, j in pairs[i:i + 2])
                lines.append(f"  node {_node_of(i)} = {terms}")
        return "\n".join(lines)
