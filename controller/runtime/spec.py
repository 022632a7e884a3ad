"""The search spec: one typed, frozen description of a search, validated at the
boundary (config file, CLI flags, gRPC request) with errors that name the field and
the allowed values. Each field's metadata gives its help text (and flag), from which
the command line derives its flags."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, check_choice, check_int, check_number
from raynas.controller.strategies import Strategy, strategy_class
from raynas.param_server import ShardConfig
from raynas.search_spaces import get_space, space_names
from raynas.workers.evaluation import EVALUATORS

RUNTIMES = ("ray", "local")
#: The mapping fields: options passed on to a space, strategy or evaluator.
OPTION_FIELDS = ("space_options", "strategy_options", "train", "table")


def _field(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    """A spec field with the help text (and flag name, when not derived from the field's) of its flag."""
    metadata = {"help": help, **({"flag": flag} if flag else {})}
    if callable(default):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass(frozen=True)
class SearchSpec:
    space: str = _field("macro", "search space: nb201, darts, nasnet, macro, rnn (default macro)")
    strategy: str = _field("rl", "random, evolution, rl (default), or one-shot: darts, darts2 (second order), "
                                 "noisy-darts; options via --strategy-option")
    evaluator: str = _field("train", "train (train each child) or table (NAS-Bench-201 lookup)")
    dataset: str = _field("digits", "digits (default, bundled), mnist, cifar10, ptb")
    data_path: str | None = _field(None, "path to the dataset's files (mnist, cifar10, ptb)", flag="--data")
    evaluations: int = _field(24, "number of architectures to evaluate (default 24)")
    seed: int = _field(0, "seed of the whole search (default 0)")
    #: "ray": the distributed scheme on a Ray cluster; "local": one process, one child at a time.
    runtime: str = _field("ray", "ray (default: the distributed scheme) or local (one process, one child at a time)")
    #: Zoph & Le's scheme: K controller replicas, m children each, S parameter shards, W workers.
    controllers: int = _field(2, "K controller replicas (rl; the paper used 100; default 2)")
    children: int = _field(4, "m children sampled per replica step (the paper: 8; default 4)")
    ps_shards: int = _field(2, "S parameter-server shards (the paper: 20; default 2)")
    workers: int = _field(2, "W worker actors that evaluate children (default 2)")
    cpus_per_child: float = _field(1.0, "CPUs reserved per worker (fractions allowed; default 1)")
    gpus_per_child: float = _field(0.0, "GPUs reserved per worker (fractions allowed; default 0)")
    #: Times an evaluation is re-sent after its worker died, before it is recorded as failed.
    max_retries: int = _field(2, "re-sends of an evaluation whose worker died (default 2)")
    #: Gradients a shard accumulates before one update (the paper's PTB setting: 10).
    ps_accumulate: int = _field(1, "gradients a shard accumulates per update (default 1)")
    #: What shards do with stale gradients: none, drop (beyond max_staleness) or scale (by 1/(1+staleness)).
    staleness_policy: str = _field("none", "none, drop or scale: what shards do with stale gradients")
    max_staleness: int | None = _field(None, "staleness bound in versions (drop/scale)")
    #: Shard checkpoint interval, in applied updates.
    checkpoint_every: int = _field(10, "parameter-shard checkpoint interval, in applied updates (default 10)")
    #: Stop handing out evaluations after this many seconds (None: only the evaluation budget).
    max_wall_time_s: float | None = _field(None, "time budget in seconds", flag="--max-wall-time")
    space_options: dict[str, Any] = _field(dict, "search-space option, e.g. num_layers=8 for macro (repeatable)",
                                           flag="--space-option")
    strategy_options: dict[str, Any] = _field(dict, "strategy option, e.g. lr=0.001 for rl (repeatable)",
                                              flag="--strategy-option")
    #: TrainConfig fields for the train evaluator (epochs, batch_size, lr, channels, layers, ...).
    train: dict[str, Any] = _field(dict, "child-training option, e.g. lr=0.05 (repeatable)", flag="--train-option")
    #: Options of the table evaluator (e.g. dataset: cifar10 | cifar100 | imagenet16).
    table: dict[str, Any] = _field(dict, "table-evaluator option, e.g. dataset=cifar100 (repeatable)",
                                   flag="--table-option")

    def validate(self) -> SearchSpec:
        """Check every field without building anything heavy; returns self so callers can chain."""
        check_choice("space", self.space, space_names())
        for name in OPTION_FIELDS:
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, f"must be a mapping of option names to values, got {getattr(self, name)!r}")
        check_choice("evaluator", self.evaluator, EVALUATORS)
        check_int("evaluations", self.evaluations)
        check_choice("runtime", self.runtime, RUNTIMES)
        for name in ("controllers", "children", "ps_shards", "workers", "ps_accumulate", "checkpoint_every"):
            check_int(name, getattr(self, name))
        check_int("max_retries", self.max_retries, 0)
        check_number("cpus_per_child", self.cpus_per_child, 0)
        check_number("gpus_per_child", self.gpus_per_child, 0)
        check_number("max_wall_time_s", self.max_wall_time_s, 0, low_open=True, optional=True)
        ShardConfig(accumulate=self.ps_accumulate, staleness_policy=self.staleness_policy,
                    max_staleness=self.max_staleness)
        check_int("seed", self.seed, 0)
        cls, options = self.strategy_config()
        if self.runs_scheme(cls):
            cls.scheme(options)
        return self

    def strategy_config(self) -> tuple[type[Strategy], Any]:
        """The strategy's class and its typed options."""
        space = get_space(self.space, **self.space_options)
        cls = strategy_class(self.strategy)
        return cls, cls.parse_options(space, self.strategy_options)

    def runs_scheme(self, cls: type[Strategy]) -> bool:
        """Whether this search runs as Zoph & Le's scheme (shards and replicas on Ray)."""
        return self.runtime == "ray" and cls.needs.shared_policy

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> SearchSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}", "unknown field", sorted(known))
        return cls(**data)

    def replace(self, **changes: Any) -> SearchSpec:
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
