"""From alphas to an architecture and back (an architecture's path through the supernet), and the
collapse monitors recorded every epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.search_spaces.nb201 import NB201Arch
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


def nb201_path(arch: NB201Arch, primitives: Sequence[str]) -> Path:
    """The nb201 supernet's path of `arch`: its op on every edge of the one alpha matrix."""
    return [[(_column(primitives, op),) for op in arch.ops]]


def darts_path(arch: Genotype, primitives: Sequence[str]) -> Path:
    """The darts supernet's path of `arch` (the inverse of derivation): per cell, per edge, the
    ops the genotype puts there; a node that reads one input twice (NAO's cells may) runs both
    ops on that edge. Raises ConfigError for an op the supernet lacks."""
    path = []
    for cell in (arch.normal, arch.reduce):
        edges: list[tuple[int, ...]] = [()] * sum(2 + node for node in range(len(cell) // 2))
        for i, (op, source) in enumerate(cell):
            e = sum(2 + n for n in range(i // 2)) + source
            edges[e] = (*edges[e], _column(primitives, op))
        path.append(edges)
    return path


def _column(names: Sequence[str], op: str) -> int:
    if op not in names:
        raise ConfigError("arch", f"op {op!r} is not in the supernet", list(names))
    return list(names).index(op)


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


def alpha_monitors(weights: Sequence[torch.Tensor]) -> dict[str, Any]:
    """What an epoch's report holds of the alphas' softmax: each edge's entropy, their mean
    fraction of the maximum, and the weights themselves."""
    return {"alpha_entropy": edge_entropy(weights), "alpha_entropy_fraction": mean_entropy_fraction(weights),
            "alphas": [w.detach().cpu().tolist() for w in weights]}
