"""Which parameter-server shard holds which tensor of the controller policy.

NAS-RL (Zoph & Le) spreads the controller's weights over S parameter-server
shards, DistBelief style. Tensors are the unit of placement (a tensor is never
cut in two), so a replica pushes each shard whole gradients of whole tensors.

The map is part of a job's checkpoint: `to_dict`/`from_dict` keep the exact
assignment, so a resumed job does not depend on `build` never changing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from raynas.common import ConfigError

Shape = tuple[int, ...]


def check_named_tensors(given: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape], field: str) -> None:
    """Raise a ConfigError naming the first unexpected, missing or misshapen tensor in `given`.

    Shards and maps are matched by name only, so a replica built against a
    different policy would otherwise update the wrong weights silently.
    """
    unexpected = sorted(set(given) - set(shapes))
    if unexpected:
        raise ConfigError(field, f"unexpected parameter {unexpected[0]!r}", sorted(shapes) or "no parameters")
    missing = sorted(set(shapes) - set(given))
    if missing:
        raise ConfigError(field, f"missing parameter {missing[0]!r}")
    for name, expected in shapes.items():
        value = given[name]
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise ConfigError(f"{field}[{name!r}]", f"expected a tensor or an array, got {type(value).__name__}")
        if tuple(value.shape) != expected:
            raise ConfigError(f"{field}[{name!r}]",
                              f"shape {tuple(value.shape)} does not match the parameter's {expected}")


def _check_num_shards(num_shards: object) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError("ps_shards", f"need at least one shard, got {num_shards!r}", "integers >= 1")


@dataclass(frozen=True)
class ShardMap:
    """An assignment of parameter names to shards 0..num_shards-1.

    Shards may be empty when there are more shards than tensors: the shard
    count is a deployment setting (the paper used S=20) that should not have
    to track the size of whichever policy a search space produces, and an
    empty shard simply serves and accepts empty slices.
    """

    num_shards: int
    shapes: Mapping[str, Shape]
    assignment: Mapping[str, int]

    def __post_init__(self) -> None:
        _check_num_shards(self.num_shards)
        # Canonical (sorted) order whatever the source, so names() and merge() are stable.
        object.__setattr__(self, "shapes", {name: tuple(self.shapes[name]) for name in sorted(self.shapes)})
        object.__setattr__(self, "assignment", {name: self.assignment[name] for name in sorted(self.assignment)})
        if set(self.shapes) != set(self.assignment):
            raise ConfigError("shard_map", "shapes and assignment name different parameters")
        for name, shard in self.assignment.items():
            if not 0 <= shard < self.num_shards:
                raise ConfigError(f"shard_map[{name!r}]", f"shard {shard} out of range", f"0..{self.num_shards - 1}")

    @classmethod
    def build(cls, named: Mapping[str, torch.Tensor | Sequence[int]], num_shards: int) -> ShardMap:
        """Balance `named` (shapes, or tensors whose shapes are used) over `num_shards` shards.

        Largest tensor first onto the least-loaded shard (LPT scheduling): the
        most and least loaded shards then differ by at most the largest
        tensor. Ties go by name and shard index, so the result does not depend
        on the order of `named` and every replica computes the same map.
        """
        _check_num_shards(num_shards)
        shapes = {name: tuple(int(d) for d in getattr(value, "shape", value)) for name, value in named.items()}
        if not shapes:
            raise ConfigError("parameters", "the policy has no parameters to shard")
        loads = [0] * num_shards
        assignment = {}
        for name in sorted(shapes, key=lambda n: (-math.prod(shapes[n]), n)):
            shard = min(range(num_shards), key=lambda s: (loads[s], s))
            assignment[name] = shard
            loads[shard] += math.prod(shapes[name])
        return cls(num_shards, shapes, assignment)

    def shard_of(self, name: str) -> int:
        if name not in self.assignment:
            raise ConfigError("parameter", f"unknown parameter {name!r}", sorted(self.assignment))
        return self.assignment[name]

    def names(self, shard: int) -> list[str]:
        """The parameter names on `shard`, sorted."""
        if not 0 <= shard < self.num_shards:
            raise ConfigError("shard", f"shard {shard} out of range", f"0..{self.num_shards - 1}")
        return [name for name, s in self.assignment.items() if s == shard]

    def shard_shapes(self, shard: int) -> dict[str, Shape]:
        """The shapes of the parameters on `shard`: what a `ParameterShard` for it must hold."""
        return {name: self.shapes[name] for name in self.names(shard)}

    def loads(self) -> list[int]:
        """Number of scalar weights on each shard."""
        loads = [0] * self.num_shards
        for name, shard in self.assignment.items():
            loads[shard] += math.prod(self.shapes[name])
        return loads

    def split(self, named_tensors: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """One dict per shard (index = shard id), each holding that shard's tensors."""
        check_named_tensors(named_tensors, self.shapes, "tensors")
        parts: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_shards)]
        for name, shard in self.assignment.items():
            parts[shard][name] = named_tensors[name]
        return parts

    def merge(self, parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Inverse of `split`: reassemble the whole policy from every shard's slice, in shard order."""
        if len(parts) != self.num_shards:
            raise ConfigError("parts", f"got {len(parts)} slices for {self.num_shards} shards")
        merged: dict[str, torch.Tensor] = {}
        for shard, part in enumerate(parts):
            check_named_tensors(part, self.shard_shapes(shard), f"parts[{shard}]")
            merged.update(part)
        return {name: merged[name] for name in self.shapes}

    def to_dict(self) -> dict:
        """Plain data (ints, strings, lists) for checkpoints and config files."""
        return {
            "num_shards": self.num_shards,
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "assignment": dict(self.assignment),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ShardMap:
        missing = sorted({"num_shards", "shapes", "assignment"} - set(data))
        if missing:
            raise ConfigError("shard_map", f"missing key {missing[0]!r}", ["num_shards", "shapes", "assignment"])
        return cls(data["num_shards"], dict(data["shapes"]), dict(data["assignment"]))
