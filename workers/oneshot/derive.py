"""From alphas to an architecture, and the collapse monitors recorded every epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from raynas.common import ConfigError
from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import NB201_OPS, NB201Arch
from raynas.search_spaces.types import Genotype
from raynas.workers.oneshot.supernet import SKIP, Path


def derive_cell(w: torch.Tensor, primitives: Sequence[str], steps: int) -> tuple[tuple[str, int], ...]:
    """DARTS' rule for one cell's op weights [edges, ops]: each node keeps its 2 incoming edges
    whose strongest non-`none` op weighs most, and on each kept edge that op (Auto-DeepLab
    derives its cell the same way)."""
    w = w.detach().cpu()
    candidates = [i for i, p in enumerate(primitives) if p != "none"]
    pairs, start = [], 0
    for node in range(steps):
        inputs = 2 + node
        edges = w[start:start + inputs]
        best = [(max(edges[j, k].item() for k in candidates), j) for j in range(inputs)]
        for _, j in sorted(best, key=lambda t: (-t[0], t[1]))[:2]:
            k = max(candidates, key=lambda k: edges[j, k].item())
            pairs.append((primitives[k], j))
        start += inputs
    return tuple(pairs)


def derive_darts(weights: Sequence[torch.Tensor], primitives: Sequence[str], steps: int = 4,
                 multiplier: int = 4) -> Genotype:
    """DARTS' rule (`derive_cell`) for the normal and the reduction cell."""
    concat = tuple(range(2 + steps - multiplier, 2 + steps))
    normal, reduce = weights
    return Genotype(normal=derive_cell(normal, primitives, steps), normal_concat=concat,
                    reduce=derive_cell(reduce, primitives, steps), reduce_concat=concat)


def derive_nb201(weights: Sequence[torch.Tensor], primitives: Sequence[str]) -> NB201Arch:
    """NAS-Bench-201's rule: the argmax op on every edge, `none` included; all edges kept."""
    (w,) = weights
    return NB201Arch(tuple(primitives[int(i)] for i in w.detach().argmax(dim=-1).cpu()))


def derive(space: str, weights: Sequence[torch.Tensor], primitives: Sequence[str] | None = None
           ) -> Genotype | NB201Arch:
    """The architecture a search's op weights (softmax of the alphas: [normal, reduce] for darts,
    [edges] for nb201) stand for, by the space's rule. `primitives` names the weights' columns:
    by default the space's ops (pass the 7 ops without `none` for a noisy-darts darts supernet)."""
    if space == "darts":
        return derive_darts(weights, primitives or PRIMITIVES)
    if space == "nb201":
        return derive_nb201(weights, primitives or NB201_OPS)
    raise ConfigError("space", f"no derivation rule for {space!r}", ("darts", "nb201"))


def single_path(space: str, arch: Genotype | NB201Arch, primitives: Sequence[str] | None = None) -> Path:
    """The supernet path of a discrete architecture (the inverse of derivation): per alpha
    matrix, per edge, the column of the op the architecture puts there, None where it has none.
    Raises ConfigError for an op the supernet lacks or two ops on one edge."""
    if space == "nb201":
        names = list(primitives or NB201_OPS)
        return [[_column(names, op) for op in arch.ops]]
    if space != "darts":
        raise ConfigError("space", f"no supernet path for {space!r}", ("darts", "nb201"))
    names = list(primitives or PRIMITIVES)
    path = []
    for cell in (arch.normal, arch.reduce):
        edges: list[int | None] = [None] * sum(2 + node for node in range(len(cell) // 2))
        for i, (op, source) in enumerate(cell):
            node = i // 2
            e = sum(2 + n for n in range(node)) + source
            if edges[e] is not None:
                raise ConfigError("arch", f"node {node + 2} reads input {source} twice; a supernet edge runs one op")
            edges[e] = _column(names, op)
        path.append(edges)
    return path


def _column(names: list[str], op: str) -> int:
    if op not in names:
        raise ConfigError("arch", f"op {op!r} is not in the supernet", names)
    return names.index(op)


def skip_count(arch: Genotype | NB201Arch) -> int:
    """Skip-connections in a derived architecture (normal cell only for darts: the collapse
    DARTS is known for fills the normal cell, where skips replace all computation)."""
    ops = [op for op, _ in arch.normal] if isinstance(arch, Genotype) else list(arch.ops)
    return sum(op == SKIP for op in ops)


def edge_entropy(weights: Sequence[torch.Tensor]) -> list[float]:
    """Entropy (nats) of each edge's op distribution; it falls as the search commits
    (log(#ops) is uniform)."""
    out = []
    for w in weights:
        p = w.detach().clamp_min(1e-12)
        out += [float(x) for x in -(p * p.log()).sum(dim=-1).cpu()]
    return out


def mean_entropy_fraction(weights: Sequence[torch.Tensor]) -> float:
    """Mean edge entropy over its maximum: 1 = undecided, 0 = one-hot."""
    entropies = edge_entropy(weights)
    return sum(entropies) / (len(entropies) * math.log(weights[0].shape[-1]))
