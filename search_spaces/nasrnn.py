"""Zoph & Le's recurrent cell space (NAS with RL, ICLR 2017, sec. 3.4): a tree of `base`
leaves (8 in the paper) whose nodes each pick a combination (add, element-wise multiply) and an
activation (tanh, ReLU, sigmoid, identity), then the cell inject (how c_{t-1} joins the tree:
a combination and an activation) and the two cell indices (the tree node that receives
c_{t-1}, and the node whose combination, before its activation, becomes c_t).

Decisions come in the controller's order of the paper: tree index 0, 1, ... (leaves first,
then each level up to the root), combination before activation; then the cell inject; then
the cell indices.

`NAS` is the paper's published cell (its figure; TensorFlow's NASCell implements the same
one): c_{t-1} is injected at the first node of the second level, and c_t is the first node of
the third level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import register
from raynas.search_spaces.base import Categorical, SearchSpace
from raynas.search_spaces.types import TreeCell

COMBINATIONS = ("add", "mul")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
BASES = (2, 4, 8, 16)

GENOTYPES: dict[str, TreeCell] = {
    "NAS": TreeCell(
        nodes=(("add", "sigmoid"), ("add", "relu"), ("add", "sigmoid"), ("mul", "relu"),
               ("add", "tanh"), ("add", "sigmoid"), ("add", "tanh"), ("add", "sigmoid"),
               ("mul", "tanh"), ("add", "tanh"), ("mul", "tanh"), ("add", "sigmoid"),
               ("mul", "identity"), ("add", "tanh"),
               ("mul", "tanh")),
        inject=("add", "tanh"), inject_at=8, memory_from=12,
    ),
}

#: Zoph & Le's PTB models (their Tab. 2: "base 8 and shared embeddings", two layers): 25M and
#: 54M parameters. The paper gives the counts, not the widths [U]: these are the widths at which
#: two layers of the cell with a tied 10k embedding hold those counts (16 H^2 per layer + 10k H +
#: 10k biases), named after their sizes.
PUBLISHED = {"NAS-25M": (741, 25.0, 2), "NAS-54M": (1152, 54.0, 2)}
GENOTYPES.update(dict.fromkeys(PUBLISHED, GENOTYPES["NAS"]))

_PAIR = re.compile(r"^(\w+)/(\w+)$")


def children(node: int, base: int) -> tuple[int, int]:
    """The two nodes an internal node (index >= base) combines."""
    first = 2 * (node - base)
    return first, first + 1


def check_cell(arch: object) -> TreeCell:
    if not isinstance(arch, TreeCell):
        raise InvalidArchitecture("arch", f"expected a TreeCell, got {type(arch).__name__}")
    n = len(arch.nodes)
    if arch.base not in BASES or n != 2 * arch.base - 1:
        raise InvalidArchitecture("arch.nodes", f"{n} tree nodes do not make a tree of 2, 4, 8 or 16 leaves",
                                  tuple(2 * b - 1 for b in BASES))
    for i, pair in enumerate((*arch.nodes, arch.inject)):
        field = f"arch.nodes[{i}]" if i < n else "arch.inject"
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise InvalidArchitecture(field, f"expected (combination, activation), got {pair!r}")
        if pair[0] not in COMBINATIONS:
            raise InvalidArchitecture(field, f"unknown combination {pair[0]!r}", COMBINATIONS)
        if pair[1] not in ACTIVATIONS:
            raise InvalidArchitecture(field, f"unknown activation {pair[1]!r}", ACTIVATIONS)
    for name in ("inject_at", "memory_from"):
        value = getattr(arch, name)
        if type(value) is not int or not 0 <= value < n:
            raise InvalidArchitecture(f"arch.{name}", f"got {value!r}", f"a tree node 0..{n - 1}")
    return arch


@register
class NASRNNSpace(SearchSpace):
    name = "nasrnn"
    summary = "Zoph & Le's recurrent tree cell, for language models"

    def __init__(self, base: int = 8):
        if base not in BASES:
            raise ConfigError("base", f"got {base!r}", BASES)
        self.base = base
        nodes = 2 * base - 1
        decisions = []
        for i in range(nodes):
            decisions += [Categorical(f"node{i}.combination", COMBINATIONS, group="combination"),
                          Categorical(f"node{i}.activation", ACTIVATIONS, group="activation")]
        decisions += [Categorical("inject.combination", COMBINATIONS, group="combination"),
                      Categorical("inject.activation", ACTIVATIONS, group="activation"),
                      Categorical("cell.inject_at", tuple(range(nodes)), group="cell_index"),
                      Categorical("cell.memory_from", tuple(range(nodes)), group="cell_index")]
        self._decisions = tuple(decisions)

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> TreeCell:
        self.check_values(values)
        pairs = [tuple(values[i:i + 2]) for i in range(0, len(values) - 2, 2)]
        return TreeCell(nodes=tuple(pairs[:-1]), inject=pairs[-1], inject_at=values[-2], memory_from=values[-1])

    def to_values(self, arch: TreeCell) -> tuple:
        check_cell(arch)
        if arch.base != self.base:
            raise InvalidArchitecture("arch", f"a tree of {arch.base} leaves, not this space's base={self.base}; "
                                      f"use get_space('nasrnn', base={arch.base})")
        return (*(v for pair in arch.nodes for v in pair), *arch.inject, arch.inject_at, arch.memory_from)

    def validate(self, arch: TreeCell) -> TreeCell:
        return check_cell(arch)

    def published_size(self, text: str) -> tuple[int, float, int | None] | None:
        return PUBLISHED.get(text.strip())

    def parse(self, text: str) -> TreeCell:
        """A published name, or str(TreeCell): `comb/act` per node, `inject=comb/act`, `cell=I,M`."""
        words = text.split()
        if len(words) == 1 and words[0] in GENOTYPES:
            return GENOTYPES[words[0]]
        allowed = ("a published name", *GENOTYPES, "or 'add/tanh ... inject=add/tanh cell=8,12'")
        if len(words) < 3 or not words[-2].startswith("inject=") or not words[-1].startswith("cell="):
            raise InvalidArchitecture("arch", f"cannot read {text!r}", allowed)
        pairs = []
        for word in (*words[:-2], words[-2][len("inject="):]):
            match = _PAIR.match(word)
            if not match:
                raise InvalidArchitecture("arch", f"{word!r} is not combination/activation", allowed)
            pairs.append(match.groups())
        try:
            inject_at, memory_from = (int(v) for v in words[-1][len("cell="):].split(","))
        except ValueError:
            raise InvalidArchitecture("arch.cell", f"{words[-1]!r} is not cell=INJECT_AT,MEMORY_FROM") from None
        return check_cell(TreeCell(tuple(pairs[:-1]), pairs[-1], inject_at, memory_from))

    def draw(self, arch: TreeCell) -> str:
        check_cell(arch)
        base = arch.base

        def expr(node: int) -> str:
            comb, act = arch.nodes[node]
            left, right = (f"W{node} x_t", f"U{node} h_t-1") if node < base else (
                f"a{c}" for c in children(node, base))
            return f"{act}({left} {'+' if comb == 'add' else '*'} {right})"

        lines = [f"a{i} = {expr(i)}" for i in range(len(arch.nodes))]
        comb, act = arch.inject
        lines.insert(arch.inject_at + 1, f"a{arch.inject_at} = {act}(a{arch.inject_at} "
                     f"{'+' if comb == 'add' else '*'} c_t-1)")
        lines += [f"c_t = a{arch.memory_from} before its activation", f"h_t = a{len(arch.nodes) - 1}"]
        return "\n".join(lines)
