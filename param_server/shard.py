"""One parameter-server shard: a slice of the controller policy, its optimizer and its version.

NAS-RL (Zoph & Le 2017) trains the controller with DistBelief-style
asynchronous SGD: each of K controller replicas pulls the weights from every
shard, samples m child architectures, and pushes the REINFORCE gradient of each
slice back. A shard applies what it receives in arrival order, so a gradient may
have been computed on weights that have since moved on.

Every shard must end up with the same updates. So what a shard does with a
gradient never depends on the shard: its staleness (the gradients recorded
between the replica's pull and this gradient) is counted once, by the job's
recorder, and sent with every slice; and each gradient carries its name
(replica, cycle), so a retried push (Ray retries calls to a restarted shard) or
a replica re-pushing after its own restart is applied at most once.

The class is plain PyTorch: the Ray actor that serves it is applied at wiring
time, and Ray runs one call at a time on an actor, so nothing here locks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from raynas.common import ConfigError
from raynas.param_server.shard_map import check_named_tensors

STALENESS_POLICIES = ("none", "drop", "scale")
Outcome = Literal["applied", "accumulated", "dropped", "duplicate"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ShardConfig:
    """How a shard turns pushed gradients into updates.

    lr, betas, eps: Adam's, as torch.optim.Adam takes them (6e-4 is NAS-RL's controller rate).
    accumulate: apply one Adam step on the mean of every `accumulate` accepted
        gradients (NAS-RL's PTB setting accumulated 10).
    staleness_policy: 'none' applies every gradient as is; 'drop' discards
        gradients staler than `max_staleness`; 'scale' divides the learning rate
        of the step by (1 + staleness), the staleness-aware async SGD of Zhang et
        al. 2016 ("Staleness-aware Async-SGD for Distributed Deep Learning",
        IJCAI), and also drops beyond `max_staleness` when one is set. The step,
        not the gradient, is scaled: Adam divides a gradient by its own running
        magnitude, which cancels a scaled gradient. With `accumulate` > 1 the
        step's rate is scaled by the mean factor of the gradients it averages.
    max_staleness: the bound, in gradients; required by 'drop', optional for
        'scale', and rejected with 'none' so that a bound is never silently ignored.
    """

    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    accumulate: int = 1
    staleness_policy: str = "none"
    max_staleness: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {self.betas!r}")
        # Frozen: store the canonical tuple so configs read back from JSON (lists) compare equal.
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        if not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps < 0:
            raise ConfigError("eps", f"must be a finite number >= 0, got {self.eps!r}")
        if not _is_int(self.accumulate) or self.accumulate < 1:
            raise ConfigError("accumulate", f"must be an integer >= 1, got {self.accumulate!r}")
        if self.staleness_policy not in STALENESS_POLICIES:
            raise ConfigError("staleness_policy", f"unknown policy {self.staleness_policy!r}", STALENESS_POLICIES)
        if self.max_staleness is not None and (not _is_int(self.max_staleness) or self.max_staleness < 0):
            raise ConfigError("max_staleness", f"must be an integer >= 0 or None, got {self.max_staleness!r}")
        if self.staleness_policy == "drop" and self.max_staleness is None:
            raise ConfigError("max_staleness", "staleness_policy 'drop' needs a bound", "integers >= 0")
        if self.staleness_policy == "none" and self.max_staleness is not None:
            raise ConfigError("max_staleness", "has no effect with staleness_policy 'none'", ["None"])

    def adam_options(self) -> dict:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps}


@dataclass(frozen=True)
class PushReceipt:
    """What a shard did with one push.

    outcome: 'applied' (this push completed an update), 'accumulated' (held
    until `accumulate` gradients are in), 'dropped' (too stale) or 'duplicate'
    (this gradient was processed before; nothing changed).
    version: the shard's version after the push; pending: gradients held.
    """

    shard_id: int
    replica: str | int
    cycle: int
    outcome: Outcome
    staleness: int
    version: int
    pending: int


class ParameterShard:
    """Holds one slice of the policy's parameters and updates it with Adam.

    The version counts applied updates. Gradients must match the slice exactly
    (same names, same shapes).
    """

    def __init__(self, shard_id: int, initial: Mapping[str, torch.Tensor], config: ShardConfig | None = None):
        if not _is_int(shard_id) or shard_id < 0:
            raise ConfigError("shard_id", f"must be an integer >= 0, got {shard_id!r}")
        for name, value in initial.items():
            if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value):
                raise ConfigError(f"initial[{name!r}]", "must be a floating-point tensor")
        self.shard_id = shard_id
        self.config = config or ShardConfig()
        # Sorted, so the optimizer's positional state lines up across save and restore.
        self._params = {name: initial[name].detach().clone() for name in sorted(initial)}
        self._shapes = {name: tuple(p.shape) for name, p in self._params.items()}
        self._optimizer: torch.optim.Adam | None = None  # see _adam
        self._pending = {name: torch.zeros_like(p) for name, p in self._params.items()}
        self._pending_count = 0
        # The step-size factors of the gradients held in `_pending` ('scale').
        self._pending_scale = 0.0
        self._version = 0
        # The last cycle processed per replica: a replica's cycles only grow, so this names every gradient seen.
        self._last_cycle: dict[str | int, int] = {}
        self._outcomes = {outcome: 0 for outcome in get_args(Outcome)}
        self._staleness: dict[int, int] = {}
        self._by_replica: dict[str | int, int] = {}

    @property
    def version(self) -> int:
        return self._version

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The slice's parameter names (sorted) and shapes: what a push must match."""
        return dict(self._shapes)

    def pull(self) -> tuple[int, dict[str, torch.Tensor]]:
        """The current version and a copy of the slice (copies, so callers cannot alias the shard)."""
        return self._version, {name: p.detach().clone() for name, p in self._params.items()}

    def has(self, replica: str | int, cycle: int) -> bool:
        """Whether the gradient (replica, cycle) was processed here (a replica's cycles only grow)."""
        return cycle <= self._last_cycle.get(replica, -1)

    def push(self, gradients: Mapping[str, torch.Tensor | np.ndarray], staleness: int, replica: str | int,
             cycle: int) -> PushReceipt:
        """Offer the gradient of this slice that `replica` computed in its `cycle`, `staleness`
        gradients after the weights it was computed on (counted by the job's recorder, the same
        number on every shard). Tensors or numpy arrays (what travels between actors)."""
        if not _is_int(staleness) or staleness < 0:
            raise ConfigError("staleness", f"must be an integer >= 0, got {staleness!r}")
        if not _is_int(cycle) or cycle < 0:
            raise ConfigError("cycle", f"must be an integer >= 0, got {cycle!r}")
        if self.has(replica, cycle):
            self._outcomes["duplicate"] += 1
            return PushReceipt(self.shard_id, replica, cycle, "duplicate", staleness, self._version,
                               self._pending_count)
        gradients = {name: torch.tensor(g) if isinstance(g, np.ndarray) else g for name, g in gradients.items()}
        check_named_tensors(gradients, self._shapes, "gradients")
        # Checked before anything is recorded: one NaN would poison Adam's moments for good.
        for name, g in gradients.items():
            if not torch.isfinite(g).all():
                raise ConfigError(f"gradients[{name!r}]", "contains NaN or inf")
        self._last_cycle[replica] = cycle
        self._staleness[staleness] = self._staleness.get(staleness, 0) + 1
        self._by_replica[replica] = self._by_replica.get(replica, 0) + 1
        outcome = self._accept(gradients, staleness)
        self._outcomes[outcome] += 1
        return PushReceipt(self.shard_id, replica, cycle, outcome, staleness, self._version, self._pending_count)

    def _accept(self, gradients: Mapping[str, torch.Tensor], staleness: int) -> Outcome:
        policy, bound = self.config.staleness_policy, self.config.max_staleness
        if bound is not None and staleness > bound:
            return "dropped"
        for name, g in gradients.items():
            pending = self._pending[name]
            pending.add_(g.detach().to(device=pending.device, dtype=pending.dtype))
        self._pending_scale += 1 / (1 + staleness) if policy == "scale" else 1.0
        self._pending_count += 1
        # "<" rather than "!=": a checkpoint restored under a smaller `accumulate` may already hold more.
        if self._pending_count < self.config.accumulate:
            return "accumulated"
        for name, p in self._params.items():
            p.grad = self._pending[name] / self._pending_count
        adam = self._adam()
        group = adam.param_groups[0]
        group["lr"] = self.config.lr * self._pending_scale / self._pending_count
        adam.step()
        group["lr"] = self.config.lr
        for name, p in self._params.items():
            p.grad = None
            self._pending[name].zero_()
        self._pending_count = 0
        self._pending_scale = 0.0
        self._version += 1
        return "applied"

    def _adam(self) -> torch.optim.Adam:
        """The optimizer, built at the first update: building any torch optimizer imports
        torch._dynamo (about 1 CPU-s), which at a job's start, with every actor starting on the
        same cores, delayed each shard's readiness and with it the first child."""
        if self._optimizer is None:
            # One group given as a dict: torch rejects an empty plain list, and an
            # empty shard (more shards than tensors) is allowed.
            self._optimizer = torch.optim.Adam([{"params": list(self._params.values())}],
                                               **self.config.adam_options())
        return self._optimizer

    def stats(self) -> dict:
        """Counters for dashboards and logs (plain data).

        pushes = applied + accumulated + dropped (duplicates are counted apart),
        and applied (pushes that completed an update) equals the version. Staleness covers every push,
        dropped ones included, since it describes the replicas rather than the updates.
        """
        count = sum(self._staleness.values())
        outcomes = {k: v for k, v in self._outcomes.items() if k != "duplicate"}
        return {
            "shard_id": self.shard_id,
            "pushes": count,
            **outcomes,
            "duplicates": self._outcomes["duplicate"],
            "pending": self._pending_count,
            "staleness": {
                "count": count,
                "mean": sum(s * n for s, n in self._staleness.items()) / count if count else 0.0,
                "max": max(self._staleness, default=0),
                "histogram": dict(sorted(self._staleness.items())),
            },
            "pushes_by_replica": dict(self._by_replica),
        }

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: weights, Adam moments and steps, version, pending sum, stats.

        Tensors are copies, so the result is a snapshot that later pushes do not change.
        """
        return {
            "shard_id": self.shard_id,
            "config": dataclasses.asdict(self.config),
            "version": self._version,
            "params": self.pull()[1],
            # None until the first update (Adam not built yet: nothing to keep).
            "optimizer": None if self._optimizer is None else copy.deepcopy(self._optimizer.state_dict()),
            "pending": {"count": self._pending_count, "scale": self._pending_scale,
                        "sum": {name: t.clone() for name, t in self._pending.items()}},
            "last_cycle": dict(self._last_cycle),
            "stats": {"outcomes": dict(self._outcomes),
                      "staleness": dict(self._staleness),
                      "by_replica": dict(self._by_replica)},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Resume from `state_dict()` output of the same shard.

        The hyper-parameters stay this shard's own config (torch's Adam would
        otherwise take the saved ones), so a job can resume with a changed lr.
        """
        if state["shard_id"] != self.shard_id:
            raise ConfigError("shard_id", f"checkpoint is of shard {state['shard_id']}, not {self.shard_id}")
        check_named_tensors(state["params"], self._shapes, "state['params']")
        check_named_tensors(state["pending"]["sum"], self._shapes, "state['pending']")
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(state["params"][name])
                self._pending[name].copy_(state["pending"]["sum"][name])
        if state["optimizer"] is None:
            self._optimizer = None
        else:
            # Deep copy: torch's load keeps references to same-dtype tensors, which would alias `state`.
            adam = self._adam()
            adam.load_state_dict(copy.deepcopy(state["optimizer"]))
            adam.param_groups[0].update(self.config.adam_options())
        self._pending_count = state["pending"]["count"]
        self._pending_scale = state["pending"]["scale"]
        self._last_cycle = dict(state["last_cycle"])
        self._version = state["version"]
        self._outcomes = dict(state["stats"]["outcomes"])
        self._staleness = dict(state["stats"]["staleness"])
        self._by_replica = dict(state["stats"]["by_replica"])
