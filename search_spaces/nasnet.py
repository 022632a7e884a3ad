"""NASNet's cell space (Zoph et al. 2018): 13 ops, B = 5 blocks per cell.

Each block sums its two ops ("add" combine, the form the DARTS port of NASNet-A
and AmoebaNet uses). The cell's output concatenates the blocks that no other
block of the cell reads, the paper's rule. TF-slim's NASNet also concatenates
an unused cell input, the DARTS port does not; we follow the port, so a
genotype's nodes are the same ones a DARTS-style builder wires.

from_values(to_values(a)) rebuilds the concat by that rule: NASNet-A and
AmoebaNet obey it, but a genotype with any other concat keeps it only
through its string.
"""

from __future__ import annotations

from raynas.search_spaces import register
from raynas.search_spaces.cell import NASNET_OPS, CellSpace


@register
class NASNetSpace(CellSpace):
    name = "nasnet"
    summary = "the NASNet cell space: normal and reduction cells of 5 blocks"

    def __init__(self):
        super().__init__(NASNET_OPS, steps=5)

    def concat(self, pairs: tuple[tuple[str, int], ...]) -> tuple[int, ...]:
        # Never empty: no node reads the last one, since inputs of node k come before k.
        used = {source for _, source in pairs}
        return tuple(k for k in range(2, self.steps + 2) if k not in used)
