"""The search spec: one typed, frozen description of a search, validated at the
boundary (config file, CLI flags, later the gRPC request) with errors that name
the field and the allowed values."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import ConfigError, get_space, space_names
from search_spaces.errors import check_int, check_number
from workers.evaluators import EVALUATORS

RUNTIMES = ("ray", "local")


@dataclass(frozen=True)
class SearchSpec:
    space: str = "macro"
    strategy: str = "rl"
    evaluator: str = "train"
    dataset: str = "digits"
    data_path: str | None = None
    evaluations: int = 24
    seed: int = 0
    #: "ray": the distributed scheme on a Ray cluster; "local": one process, one child at a time.
    runtime: str = "ray"
    #: Zoph & Le's scheme: K controller replicas, m children each, S parameter shards, W workers.
    controllers: int = 2
    children: int = 4
    ps_shards: int = 2
    workers: int = 2
    cpus_per_child: float = 1.0
    gpus_per_child: float = 0.0
    #: Times an evaluation is re-sent after its worker died, before it is recorded as failed.
    max_retries: int = 2
    #: Gradients a shard accumulates before one update (the paper's PTB setting: 10).
    ps_accumulate: int = 1
    #: What shards do with stale gradients: none, drop (beyond max_staleness) or scale (by 1/(1+staleness)).
    staleness_policy: str = "none"
    max_staleness: int | None = None
    #: Shard checkpoint interval, in applied updates.
    checkpoint_every: int = 10
    #: Stop handing out evaluations after this many seconds (None: only the evaluation budget).
    max_wall_time_s: float | None = None
    space_options: dict[str, Any] = field(default_factory=dict)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    #: TrainConfig fields for the train evaluator (epochs, batch_size, lr, channels, layers, ...).
    train: dict[str, Any] = field(default_factory=dict)
    #: Options of the table evaluator (e.g. dataset: cifar10 | cifar100 | imagenet16).
    table: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "SearchSpec":
        """Check every field; returns self so callers can chain."""
        if self.space not in space_names():
            raise ConfigError("space", f"unknown search space {self.space!r}", space_names())
        for name in ("space_options", "strategy_options", "train", "table"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, f"must be a mapping of option names to values, got {getattr(self, name)!r}")
        if self.evaluator not in EVALUATORS:
            raise ConfigError("evaluator", f"unknown evaluator {self.evaluator!r}", EVALUATORS)
        check_int("evaluations", self.evaluations)
        if self.runtime not in RUNTIMES:
            raise ConfigError("runtime", f"unknown runtime {self.runtime!r}", RUNTIMES)
        for name in ("controllers", "children", "ps_shards", "workers", "ps_accumulate", "checkpoint_every"):
            check_int(name, getattr(self, name))
        check_int("max_retries", self.max_retries, 0)
        check_number("cpus_per_child", self.cpus_per_child, 0)
        check_number("gpus_per_child", self.gpus_per_child, 0)
        check_number("max_wall_time_s", self.max_wall_time_s, 0, low_open=True, optional=True)
        from param_server import ShardConfig

        ShardConfig(accumulate=self.ps_accumulate, staleness_policy=self.staleness_policy, max_staleness=self.max_staleness)
        check_int("seed", self.seed, 0)
        space = get_space(self.space, **self.space_options)
        from controller.strategy import get_strategy, strategy_names

        from .oneshot import ONE_SHOT_STRATEGIES, oneshot_config

        if self.strategy not in (*strategy_names(), *ONE_SHOT_STRATEGIES):
            raise ConfigError("strategy", f"unknown strategy {self.strategy!r}", (*strategy_names(), *ONE_SHOT_STRATEGIES))
        # Built once here so that a bad strategy option fails before any file is written.
        if self.strategy in ONE_SHOT_STRATEGIES:
            oneshot_config(self)
        elif self.runtime == "ray" and self.strategy == "rl":
            from .replica import PolicyCore, distributed_rl_options

            PolicyCore(space, self.seed, **distributed_rl_options(self.strategy_options)[1])
        else:
            get_strategy(self.strategy, space, seed=self.seed, **self.strategy_options)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "SearchSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}", "unknown field", sorted(known))
        return cls(**data)

    def replace(self, **changes: Any) -> "SearchSpec":
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a spec file (.json or .toml) into a plain dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file not found: {p}")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        if p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            raise ConfigError("config", f"unsupported file type {p.suffix!r}", (".json", ".toml"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("config", f"cannot parse {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p} must hold one object of spec fields")
    return data
