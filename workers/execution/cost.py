"""What a child will cost, known before it runs: its FLOPs times the epochs it trains (its budget),
and, once workers have run children, how many seconds a unit takes on each of them.

Schedulers order waiting children by the units alone (the longest first, where several wait for
a worker); the seconds turn an estimate into a duration on a given worker, and the error of the
estimates is what a simulation of the scheduler must draw its durations around.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable

from raynas.search_spaces import SearchSpace

#: Weight of a new measurement in a worker's running mean of seconds per unit.
SPEED_DECAY = 0.2


class CostModel:
    """`flops(arch)`: one forward pass of the child (cached); `epochs`: the budget of a child that
    names none."""

    def __init__(self, flops: Callable[[Hashable], float], epochs: int):
        self._flops = functools.lru_cache(maxsize=65536)(flops)
        self.epochs = epochs
        self._rate: dict[str, float] = {}  # seconds per unit, per worker

    def __call__(self, arch: Hashable, budget: int | None = None) -> float:
        """The child's cost in units: FLOPs x epochs."""
        return float(self._flops(arch)) * (self.epochs if budget is None else budget)

    def observe(self, worker: str, units: float, seconds: float) -> None:
        """A child of `units` took `seconds` on `worker`."""
        if units <= 0 or seconds <= 0:
            return
        rate = seconds / units
        old = self._rate.get(worker)
        self._rate[worker] = rate if old is None else old + SPEED_DECAY * (rate - old)

    def seconds(self, units: float, worker: str | None = None) -> float | None:
        """The estimated duration of a child of `units` on `worker` (the mean over the workers
        measured so far when it has no measurement of its own); None before any measurement."""
        rate = self._rate.get(worker) if worker is not None else None
        if rate is None and self._rate:
            rate = sum(self._rate.values()) / len(self._rate)
        return None if rate is None else units * rate


def table_flops(dataset: str) -> Callable[[Hashable], float]:
    """FLOPs from the NAS-Bench-201 table (millions; a scale common to every child is all a cost needs)."""
    from raynas.workers.evaluation.table import load_table

    table = load_table(dataset)
    return lambda arch: table.row(str(arch))["flops_M"]


def network_flops(space: SearchSpace, channels: int | None, layers: int | None) -> Callable[[Hashable], float]:
    """FLOPs of the child network built at the search's sizes on a 32x32 RGB image (one token for a
    language model): the data's own shape scales every child alike, which leaves their order as it is."""
    import torch

    from raynas.workers.nets import LANGUAGE_SPACES, NetConfig, build_model
    from raynas.workers.profile import count_flops

    sizes = {k: v for k, v in (("channels", channels), ("layers", layers)) if v is not None}
    if space.name in LANGUAGE_SPACES:
        config, sample = NetConfig(vocab_size=1000, **sizes), torch.zeros(1, 1, dtype=torch.long)
    else:
        config, sample = NetConfig(in_channels=3, num_classes=10, image_size=32, **sizes), torch.zeros(1, 3, 32, 32)

    def flops(arch: Hashable) -> float:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return float(count_flops(build_model(space.name, arch, config), sample))

    return flops
