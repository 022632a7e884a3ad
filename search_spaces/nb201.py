"""NAS-Bench-201's cell space: 4 nodes, 6 edges, 5 ops on each edge (5^6 = 15,625 cells)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from raynas.common import InvalidArchitecture
from raynas.search_spaces import register
from raynas.search_spaces.base import Categorical, SearchSpace

# Order as in NAS-Bench-201's `NAS_BENCH_201` op list.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# The benchmark string lists edges by target node, then source: 0->1 | 0->2 1->2 | 0->3 1->3 2->3.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

_NODE = re.compile(r"^\|(.*)\|$")


@dataclass(frozen=True)
class NB201Arch:
    """The op on each of the 6 edges, in `EDGES` order."""

    ops: tuple[str, ...]

    def __str__(self) -> str:
        nodes = []
        for target in (1, 2, 3):
            parts = [f"{op}~{src}" for (t, src), op in zip(EDGES, self.ops) if t == target]
            nodes.append("|" + "|".join(parts) + "|")
        return "+".join(nodes)

    def edge_ops(self) -> dict[tuple[int, int], str]:
        """{(target, source): op}."""
        return dict(zip(EDGES, self.ops))


@register
class NB201Space(SearchSpace):
    name = "nb201"
    summary = "NAS-Bench-201's cell: 6 edges of 5 ops (tabulated: --evaluator table)"

    def __init__(self):
        self._decisions = tuple(
            Categorical(f"edge_{src}_{target}", NB201_OPS, group="op") for target, src in EDGES
        )

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> NB201Arch:
        arch = NB201Arch(tuple(values))
        self.check_values(arch.ops)
        return arch

    def to_values(self, arch: NB201Arch) -> tuple:
        if not isinstance(arch, NB201Arch):
            raise InvalidArchitecture("arch", f"expected an nb201 architecture, got {type(arch).__name__}")
        return arch.ops

    def parse(self, text: str) -> NB201Arch:
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != 3:
            raise InvalidArchitecture(
                "arch", f"{text!r} is not an NB201 string; expected 3 nodes like "
                "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
            )
        ops = {}
        for target, node in enumerate(nodes, start=1):
            m = _NODE.match(node)
            parts = m.group(1).split("|") if m else []
            if len(parts) != target:
                raise InvalidArchitecture(
                    "arch", f"node {target} of {text!r} must list {target} edge(s) as |op~source|"
                )
            for part in parts:
                op, _, src = part.partition("~")
                if op not in NB201_OPS:
                    raise InvalidArchitecture(f"arch.node{target}", f"unknown op {op!r}", NB201_OPS)
                if not src.isdigit() or int(src) >= target:
                    raise InvalidArchitecture(
                        f"arch.node{target}", f"source {src!r} must be a node before {target}",
                        range(target),
                    )
                if (target, int(src)) in ops:
                    raise InvalidArchitecture(f"arch.node{target}", f"source {src} listed twice")
                ops[(target, int(src))] = op
        return NB201Arch(tuple(ops[e] for e in EDGES))
