"""What the searches that use every result share: an architecture's one-token neighbours, a
one-hot encoding of any space, and fresh random architectures. Built on the space's token
view (`encode`, `token_choices`, `decode`), so they hold for every token space, not only
NAS-Bench-201: a one-token change is one categorical decision changed, or one subset
candidate (a skip connection) flipped."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence

import numpy as np

from raynas.search_spaces import SearchSpace

#: Draws of a random architecture before `fresh` settles for one already seen: a tiny space may
#: be spent, and then a repeat is better than no proposal at all.
FRESH_TRIES = 100


def neighbours(space: SearchSpace, arch: Hashable) -> list[Hashable]:
    """Every architecture one token away from `arch`, in token order, each once."""
    tokens = space.encode(arch)
    found: dict[str, Hashable] = {}
    for i, choices in enumerate(space.token_choices()):
        for token in choices:
            if token != tokens[i]:
                other = space.decode([*tokens[:i], token, *tokens[i + 1:]])
                found.setdefault(str(other), other)
    found.pop(str(arch), None)
    return list(found.values())


def one_hot(space: SearchSpace, archs: Sequence[Hashable]) -> np.ndarray:
    """One row per architecture: for each token position, a one-hot of the token chosen among
    those the position allows (NB201: 6 edges x 5 ops = 30 columns, its adjacency one-hot)."""
    choices = space.token_choices()
    offsets = np.cumsum([0] + [len(c) for c in choices])
    index = [{token: j for j, token in enumerate(c)} for c in choices]
    x = np.zeros((len(archs), int(offsets[-1])), dtype=np.float64)
    for row, arch in enumerate(archs):
        for i, token in enumerate(space.encode(arch)):
            x[row, offsets[i] + index[i][token]] = 1.0
    return x


def fresh(space: SearchSpace, rng: np.random.Generator, seen: Collection[str]) -> Hashable:
    """A uniform random architecture not in `seen` (canonical strings), if one turns up within
    FRESH_TRIES draws."""
    arch = space.sample(rng)
    for _ in range(FRESH_TRIES - 1):
        if str(arch) not in seen:
            break
        arch = space.sample(rng)
    return arch
