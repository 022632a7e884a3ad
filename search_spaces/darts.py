"""DARTS' CNN cell space (Liu et al. 2019): 8 primitives, 4 nodes per cell,
every intermediate node concatenated into the cell's output."""

from __future__ import annotations

from raynas.search_spaces import register
from raynas.search_spaces.cell import PRIMITIVES, CellSpace


@register
class DartsSpace(CellSpace):
    name = "darts"
    summary = "the DARTS cell space: a normal and a reduction cell of 4 nodes over 8 ops"

    def __init__(self):
        super().__init__(PRIMITIVES, steps=4)
