"""The DARTS/ENAS recurrent cell space: `steps` nodes after the cell's first
state (node 0); node i picks one earlier node and an activation, and the
cell's output averages nodes 1..steps.

Genotypes use quark0/darts rnn notation. Published ones with another step
count (ENAS has 11 nodes) or another concat (ENAS averages six nodes) parse and
validate for building; the concat is not a decision, so such a genotype keeps
it only through its string, and `to_values` needs steps == self.steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import register
from raynas.search_spaces.base import Categorical, SearchSpace
from raynas.search_spaces.cell import check_concat, check_pairs, read_genotype_call
from raynas.search_spaces.types import RNNGenotype

# DARTS' rnn PRIMITIVES without `none`, which derivation never keeps.
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
GENOTYPE_FIELDS = ("recurrent", "concat")
#: The most steps a space may be built with: node i's input decision has i choices, so the
#: decisions grow with the square of the steps. ENAS used 11, DARTS 8.
MAX_STEPS = 32

# quark0/darts@f276dd3 rnn/genotypes.py.
GENOTYPES: dict[str, RNNGenotype] = {
    "DARTS_V1": RNNGenotype(
        recurrent=(("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3),
                   ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)),
        concat=tuple(range(1, 9)),
    ),
    "DARTS_V2": RNNGenotype(
        recurrent=(("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1),
                   ("tanh", 2), ("sigmoid", 5), ("tanh", 3), ("relu", 5)),
        concat=tuple(range(1, 9)),
    ),
    "ENAS": RNNGenotype(
        recurrent=(("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3),
                   ("relu", 4), ("relu", 7), ("relu", 8), ("relu", 8), ("relu", 8)),
        concat=(2, 5, 6, 9, 10, 11),
    ),
}
GENOTYPES["DARTS"] = GENOTYPES["DARTS_V2"]
#: DARTS' PTB model (Liu et al., ICLR 2019, Tab. 2): the cell in one layer, 850 wide, 23M parameters.
PUBLISHED = {"DARTS_V2": (850, 23.0, 1), "DARTS": (850, 23.0, 1)}


def check_genotype(arch: object) -> RNNGenotype:
    """Return `arch` if it is a well-formed recurrent genotype (any step count)."""
    if not isinstance(arch, RNNGenotype):
        raise InvalidArchitecture("arch", f"expected an RNNGenotype, got {type(arch).__name__}")
    # The i-th pair (0-based) is node i + 1, which may read nodes 0..i.
    check_pairs(arch.recurrent, "arch.recurrent", "activation", ACTIVATIONS, lambda i: i + 1)
    check_concat(arch.concat, "arch.concat", range(1, arch.steps + 1))
    return arch


@register
class RNNSpace(SearchSpace):
    name = "rnn"
    summary = "the DARTS/ENAS recurrent cell of 8 nodes, for language models"

    def __init__(self, steps: int = 8):
        if type(steps) is not int or not 1 <= steps <= MAX_STEPS:
            raise ConfigError("steps", f"got {steps!r}", f"an integer in 1..{MAX_STEPS}")
        self.steps = steps
        # Node i's input choices grow with i, so each node has its own input head.
        self._decisions = tuple(
            d
            for i in range(1, steps + 1)
            for d in (
                Categorical(f"step{i}.input", tuple(range(i)), group=f"input{i}"),
                Categorical(f"step{i}.activation", ACTIVATIONS, group="activation"),
            )
        )

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> RNNGenotype:
        self.check_values(values)
        recurrent = tuple((values[i + 1], values[i]) for i in range(0, len(values), 2))
        return RNNGenotype(recurrent, concat=tuple(range(1, self.steps + 1)))

    def to_values(self, arch: RNNGenotype) -> tuple:
        check_genotype(arch)
        if arch.steps != self.steps:
            raise InvalidArchitecture(
                "arch", f"{arch.steps} steps differ from this rnn space's steps={self.steps}; "
                f"use get_space('rnn', steps={arch.steps})"
            )
        return tuple(v for activation, source in arch.recurrent for v in (source, activation))

    def validate(self, arch: RNNGenotype) -> RNNGenotype:
        return check_genotype(arch)

    def parse(self, text: str) -> RNNGenotype:
        name = text.strip()
        if name in GENOTYPES:
            return GENOTYPES[name]
        return check_genotype(RNNGenotype(**read_genotype_call(text, GENOTYPE_FIELDS, tuple(GENOTYPES))))

    def published_size(self, text: str) -> tuple[int, float, int | None] | None:
        return PUBLISHED.get(text.strip())

    def draw(self, arch: RNNGenotype) -> str:
        check_genotype(arch)
        # Every node is a highway step, as in DARTS: h = s + c * (act(W s) - s), c a sigmoid gate.
        lines = ["h0 = highway(tanh, [x_t, h_{t-1}])"]
        lines += [f"h{i} = highway({act}, h{source})" for i, (act, source) in enumerate(arch.recurrent, start=1)]
        lines.append("h_t = mean(" + ", ".join(f"h{i}" for i in arch.concat) + ")")
        return "\n".join(lines)
