"""Auto-DeepLab's hierarchical space (Liu et al., CVPR 2019): a cell and the network's path.

Cell level: B = 5 blocks; each adds two ops, each applied to h_{l-2}, h_{l-1} or an earlier
block of the cell; the cell's output concatenates all five blocks (the paper's combine is add
only). Ops: the paper's eight (sec. 3.1), under the names the DARTS family uses; here
`dil_conv_3x3` / `dil_conv_5x5` name the paper's dense atrous convs at rate 2 (the networks build
them from workers/ops.py's AUTODEEPLAB_OPS), not DARTS' separable ones.

Network level: L layers (12 in the paper), each at one of four resolution levels, output
strides 4, 8, 16, 32 (level 0..3). The two-layer stem leaves the image at stride 4, and from
there each layer keeps, halves or doubles the resolution. Decisions: per layer a move -1, 0 or
+1 (finer, same, coarser); a move past the finest or coarsest level stays there, so every
combination of decision values is a network. An architecture stores the levels themselves.

The network-level search ends in a Viterbi decoding over the transition weights (beta):
`viterbi` finds the path of highest product of transition probabilities, `brute_force_path`
checks it on small trellises.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from raynas.common import ConfigError, InvalidArchitecture
from raynas.search_spaces import register
from raynas.search_spaces.base import Categorical, SearchSpace
from raynas.search_spaces.cell import check_pairs, read_genotype_call
from raynas.search_spaces.types import AutoDeepLabArch

#: The paper's ops, in its order (sec. 3.1): 3x3 and 5x5 depthwise-separable conv, 3x3 and 5x5
#: atrous conv with rate 2, 3x3 average pooling, 3x3 max pooling, skip connection, no connection.
ADL_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "avg_pool_3x3", "max_pool_3x3",
           "skip_connect", "none")
BLOCKS = 5
LAYERS = 12
LEVELS = 4
STRIDES = (4, 8, 16, 32)
#: Moves between consecutive layers: to the finer level, stay, to the coarser one.
MOVES = (-1, 0, 1)
MAX_LAYERS = 32

#: The searched Auto-DeepLab network (tensorflow/models research/deeplab nas_network.py
#: `hnasnet`), its cell inputs renumbered from that code's (0 = h_{l-1}, 1 = h_{l-2}) to ours;
#: sep3x3_2 / sep5x5_2 are the DARTS-style twice-applied separable convs, atrous_3x3 / 5x5
#: the rate-2 convs.
AUTODEEPLAB = AutoDeepLabArch(
    cell=(("dil_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
          ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("sep_conv_5x5", 4), ("sep_conv_5x5", 2),
          ("sep_conv_5x5", 3), ("dil_conv_5x5", 5)),
    path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
)
#: Auto-DeepLab-S/M/L share the network and differ in the filter multiplier F (paper Tab. 2),
#: with their published parameter counts in millions (Cityscapes, 19 classes).
PUBLISHED = {"Auto-DeepLab-S": (20, 10.15), "Auto-DeepLab-M": (32, 21.62), "Auto-DeepLab-L": (48, 44.42)}
NAMES = ("AutoDeepLab", *PUBLISHED)
FIELDS = ("cell", "path")


def _block_of(i: int) -> int:
    """The node that the i-th (op, input) pair feeds: two pairs per block, blocks are nodes 2..6."""
    return 2 + i // 2


def check_path(path: object, field: str = "arch.path", layers: int | None = None) -> tuple[int, ...]:
    """`path` is a tuple of levels 0..3 starting at level 0 or 1 (the stem sits at 0), each
    within one level of the one before."""
    if not (isinstance(path, tuple) and path and all(type(s) is int for s in path)):
        raise InvalidArchitecture(field, f"must be a non-empty list of levels 0..{LEVELS - 1}, got {path!r}")
    if not 1 <= len(path) <= MAX_LAYERS:
        raise InvalidArchitecture(field, f"has {len(path)} layers", f"1..{MAX_LAYERS}")
    if layers is not None and len(path) != layers:
        raise InvalidArchitecture(field, f"has {len(path)} layers but the space decides {layers}")
    previous = 0
    for i, level in enumerate(path):
        if not 0 <= level < LEVELS:
            raise InvalidArchitecture(f"{field}[{i}]", f"level {level} is outside the trellis", range(LEVELS))
        if abs(level - previous) > 1:
            raise InvalidArchitecture(f"{field}[{i}]", f"jumps from level {previous} to {level}; a layer keeps, "
                                      "halves or doubles the resolution", (previous - 1, previous, previous + 1))
        previous = level
    return path


def check_arch(arch: object, layers: int | None = None) -> AutoDeepLabArch:
    if not isinstance(arch, AutoDeepLabArch):
        raise InvalidArchitecture("arch", f"expected an AutoDeepLabArch, got {type(arch).__name__}")
    check_pairs(arch.cell, "arch.cell", "op", ADL_OPS, _block_of)
    if len(arch.cell) != 2 * BLOCKS:
        raise InvalidArchitecture("arch.cell", f"has {len(arch.cell)} pairs; a cell has {BLOCKS} blocks of two")
    check_path(arch.path, layers=layers)
    return arch


@register
class AutoDeepLabSpace(SearchSpace):
    """`layers` layers (the paper's 12); any depth up to MAX_LAYERS parses and validates."""

    name = "autodeeplab"
    summary = "Auto-DeepLab's cell and network-level trellis, for segmentation"

    def __init__(self, layers: int = LAYERS):
        if type(layers) is not int or not 1 <= layers <= MAX_LAYERS:
            raise ConfigError("layers", f"got {layers!r}", f"an integer in 1..{MAX_LAYERS}")
        self.layers = layers
        cell = tuple(
            Categorical(f"cell.block{k}.{kind}{j}", tuple(range(2 + k)) if kind == "in" else ADL_OPS,
                        group=f"cell.in{k}" if kind == "in" else "cell.op")
            for k in range(BLOCKS) for j in (0, 1) for kind in ("in", "op")
        )
        path = tuple(Categorical(f"path.layer{i}", MOVES, group="path") for i in range(layers))
        self._decisions = cell + path

    def decisions(self):
        return self._decisions

    def from_values(self, values: Sequence) -> AutoDeepLabArch:
        self.check_values(values)
        cell_values = values[:4 * BLOCKS]
        cell = tuple((cell_values[i + 1], cell_values[i]) for i in range(0, len(cell_values), 2))
        levels, level = [], 0
        for move in values[4 * BLOCKS:]:
            level = min(max(level + move, 0), LEVELS - 1)
            levels.append(level)
        return AutoDeepLabArch(cell, tuple(levels))

    def to_values(self, arch: AutoDeepLabArch) -> tuple:
        check_arch(arch, self.layers)
        values: list = []
        for op, source in arch.cell:
            values += [source, op]
        return tuple(values) + tuple(b - a for a, b in zip((0, *arch.path), arch.path))

    def validate(self, arch: AutoDeepLabArch) -> AutoDeepLabArch:
        return check_arch(arch)

    def mutate(self, arch: AutoDeepLabArch, rng: np.random.Generator) -> AutoDeepLabArch:
        """One decision changed: a move that would leave the trellis (and so change nothing, or
        more than itself) is drawn again."""
        before = self.to_values(arch)
        while True:
            child = super().mutate(arch, rng)
            if sum(a != b for a, b in zip(before, self.to_values(child))) == 1:
                return child

    def parse(self, text: str) -> AutoDeepLabArch:
        name = text.strip()
        if name in NAMES:
            return AUTODEEPLAB
        values = read_genotype_call(text, FIELDS, NAMES, function="AutoDeepLab")
        return check_arch(AutoDeepLabArch(**values))

    def published_size(self, text: str) -> tuple[int, float, int | None] | None:
        """Auto-DeepLab-S/M/L: the filter multiplier F and the paper's parameter count (the path fixes the depth)."""
        published = PUBLISHED.get(text.strip())
        return None if published is None else (*published, None)

    def draw(self, arch: AutoDeepLabArch) -> str:
        check_arch(arch)

        def node(j: int) -> str:
            return ("h_{l-2}", "h_{l-1}")[j] if j < 2 else f"block {j - 2}"

        lines = ["cell -> concat(blocks 0..4)"]
        for i in range(0, len(arch.cell), 2):
            terms = " + ".join(f"{op}({node(j)})" for op, j in arch.cell[i:i + 2])
            lines.append(f"  block {i // 2} = {terms}")
        lines.append("path (output stride per layer): stem 4 -> " + " ".join(str(STRIDES[s]) for s in arch.path))
        return "\n".join(lines)


# -- the network level: transitions of the trellis and Viterbi decoding ---------------------------

def reachable(layer: int) -> range:
    """The levels layer `layer` (0-based) can be at: the stem is at level 0 and each layer moves
    at most one level, so layer l reaches levels 0..min(l + 1, 3)."""
    return range(min(layer + 1, LEVELS - 1) + 1)


def transitions(layers: int) -> list[tuple[int, int, int]]:
    """Every edge of the trellis as (layer, source level, move): into `layer` from the node at
    `source` of the layer before (the stem, at level 0, before layer 0)."""
    edges = []
    for layer in range(layers):
        sources = range(1) if layer == 0 else reachable(layer - 1)
        for source in sources:
            edges += [(layer, source, m) for m in MOVES if 0 <= source + m < LEVELS]
    return edges


def transition_mask(layers: int) -> np.ndarray:
    """[layers, LEVELS, 3] booleans, True where (layer, source level, move index) is an edge."""
    mask = np.zeros((layers, LEVELS, len(MOVES)), dtype=bool)
    for layer, source, move in transitions(layers):
        mask[layer, source, MOVES.index(move)] = True
    return mask


def viterbi(log_probs: np.ndarray) -> tuple[int, ...]:
    """The path of highest total log-probability through the trellis.

    `log_probs[l, s, m]` is the log-probability of the move MOVES[m] into layer l from level s
    of the layer before (the paper's beta, normalised over each node's outgoing moves);
    entries off the trellis are ignored.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    layers = log_probs.shape[0]
    mask = transition_mask(layers)
    score = np.full(LEVELS, -np.inf)
    score[0] = 0.0
    back = np.zeros((layers, LEVELS), dtype=int)
    for layer in range(layers):
        new = np.full(LEVELS, -np.inf)
        for target in range(LEVELS):
            for m, move in enumerate(MOVES):
                source = target - move
                if 0 <= source < LEVELS and mask[layer, source, m]:
                    candidate = score[source] + log_probs[layer, source, m]
                    if candidate > new[target]:
                        new[target], back[layer, target] = candidate, source
        score = new
    level = int(np.argmax(score))
    path = [level]
    for layer in range(layers - 1, 0, -1):
        level = int(back[layer, level])
        path.append(level)
    return tuple(reversed(path))


def path_log_prob(log_probs: np.ndarray, path: Sequence[int]) -> float:
    """The log-probability of `path` under `log_probs` (as `viterbi` takes them)."""
    check_path(tuple(path), "path", layers=len(log_probs))
    return float(sum(log_probs[layer, source, MOVES.index(level - source)]
                     for layer, (source, level) in enumerate(zip((0, *path), path))))


def brute_force_path(log_probs: np.ndarray) -> tuple[int, ...]:
    """The best path by scoring every path of the trellis (3^L of them at most): Viterbi's check."""
    layers = len(log_probs)
    best, best_score = None, -np.inf
    for moves in itertools.product(MOVES, repeat=layers):
        levels = tuple(itertools.accumulate(moves))
        if min(levels) < 0 or max(levels) >= LEVELS:
            continue
        score = path_log_prob(log_probs, levels)
        if score > best_score:
            best, best_score = levels, score
    return best
