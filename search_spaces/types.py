"""Architecture value types shared by the spaces (which parse and sample them)
and the builders in workers/ (which turn them into networks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Genotype:
    """A NASNet/DARTS-style cell pair, as plain data (quark0/darts' namedtuple).

    `normal` and `reduce` list (op, input) pairs, two per intermediate node;
    input 0 is c_{k-2}, input 1 is c_{k-1}, input j >= 2 is intermediate node j.
    `*_concat` lists the nodes concatenated into the cell's output.
    str() is quark0/darts' repr, so published genotypes parse as-is.
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def __str__(self) -> str:
        def pairs(p):
            return "[" + ", ".join(f"('{op}', {i})" for op, i in p) + "]"

        def ints(c):
            return "[" + ", ".join(str(i) for i in c) + "]"

        return (
            f"Genotype(normal={pairs(self.normal)}, normal_concat={ints(self.normal_concat)}, "
            f"reduce={pairs(self.reduce)}, reduce_concat={ints(self.reduce_concat)})"
        )


@dataclass(frozen=True)
class MacroLayer:
    """One layer of Zoph & Le's CNN: a filter_height x filter_width conv with
    num_filters outputs, whose input is the concatenation of the outputs of
    the earlier layers listed in `skips` (its anchor point); a layer with no
    skips reads the image, as in the paper."""

    filter_height: int
    filter_width: int
    num_filters: int
    skips: tuple[int, ...] = ()


@dataclass(frozen=True)
class MacroArch:
    layers: tuple[MacroLayer, ...]

    def __str__(self) -> str:
        parts = []
        for layer in self.layers:
            s = f"{layer.filter_height}x{layer.filter_width}-{layer.num_filters}"
            if layer.skips:
                s += "<" + ",".join(str(j) for j in layer.skips)
            parts.append(s)
        return " | ".join(parts)


@dataclass(frozen=True)
class RNNGenotype:
    """A DARTS/ENAS recurrent cell: step i (1-based) applies `activation` to a
    transform of node `predecessor` (node 0 is the cell's first state, built
    from x_t and h_{t-1}); the output averages the nodes in `concat`."""

    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.recurrent)

    def __str__(self) -> str:
        pairs = "[" + ", ".join(f"('{a}', {i})" for a, i in self.recurrent) + "]"
        c = self.concat
        if c == tuple(range(1, len(self.recurrent) + 1)):
            concat = f"range(1, {len(self.recurrent) + 1})"
        else:
            concat = "[" + ", ".join(str(i) for i in c) + "]"
        return f"Genotype(recurrent={pairs}, concat={concat})"


@dataclass(frozen=True)
class AutoDeepLabArch:
    """An Auto-DeepLab network: one cell, repeated along a path through the L x 4 trellis.

    `cell` lists (op, input) pairs, two per block; input 0 is h_{l-2}, input 1 is h_{l-1},
    input j >= 2 is block j - 2 of the cell; the cell's output concatenates every block.
    `path[l]` is the resolution level of layer l: 0..3 for output strides 4, 8, 16, 32.
    """

    cell: tuple[tuple[str, int], ...]
    path: tuple[int, ...]

    def __str__(self) -> str:
        pairs = "[" + ", ".join(f"('{op}', {i})" for op, i in self.cell) + "]"
        return f"AutoDeepLab(cell={pairs}, path=[{', '.join(str(s) for s in self.path)}])"


@dataclass(frozen=True)
class TreeCell:
    """Zoph & Le's recurrent cell: a full binary tree over `base` leaves. Leaf i combines
    W_i x_t and U_i h_{t-1}; internal node n combines nodes 2(n - base) and 2(n - base) + 1;
    each node applies its (combination, activation) pair, and the root is h_t. The memory:
    c_{t-1} joins node `inject_at`'s output through `inject` (combination, activation), and
    c_t is node `memory_from`'s combination before its activation."""

    nodes: tuple[tuple[str, str], ...]
    inject: tuple[str, str]
    inject_at: int
    memory_from: int

    @property
    def base(self) -> int:
        return (len(self.nodes) + 1) // 2

    def __str__(self) -> str:
        nodes = " ".join(f"{c}/{a}" for c, a in self.nodes)
        return f"{nodes} inject={self.inject[0]}/{self.inject[1]} cell={self.inject_at},{self.memory_from}"
