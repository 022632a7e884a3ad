"""The search spec: one typed, frozen description of a search, validated at the
boundary (config file, CLI flags, gRPC request) with errors that name the field and
the allowed values. Each field's metadata gives its help text (and flag), from which
the command line derives its flags, and the upper bound of every size (`most`), which
the help states.

Validation is the search service's first line against a careless or hostile request, so
it is cheap whatever the request asks for: every size is checked against its bound
before anything is built, and what is then built (the search space, to check the
strategy's options against it) is bounded by those checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, check_choice, check_int, check_number
from raynas.controller.strategies import Strategy, strategy_class
from raynas.param_server import ShardConfig
from raynas.search_spaces import get_space, space_names
from raynas.workers.data import DATASETS, check_dataset_options
from raynas.workers.evaluation import DATASET_OPTIONS, EVALUATORS, TABLE_OPTIONS
from raynas.workers.evaluation.table import TABLE_DATASETS
from raynas.workers.training import TrainConfig

RUNTIMES = ("ray", "local")
#: The mapping fields: options passed on to a space, strategy or evaluator.
OPTION_FIELDS = ("space_options", "strategy_options", "train", "table")
#: Bounds of each option mapping: entries, name length, text length, list length.
MAX_OPTIONS, MAX_OPTION_NAME, MAX_OPTION_TEXT, MAX_OPTION_LIST = 32, 64, 256, 16
#: Upper bounds of the options that size what a search builds or allocates. The spaces bound
#: their own options (macro's max_layers, rnn's steps) before building anything.
OPTION_LIMITS: dict[str, dict[str, int]] = {
    "train": {"epochs": 1000, "batch_size": 4096, "eval_batch_size": 4096, "channels": 1024, "layers": 64,
              "bptt": 1000, "cutout": 64, "max_train_batches_per_epoch": 1_000_000, "num_threads": 256,
              "max_train": 10_000_000},
    "strategy_options": {"epochs": 1000, "batch_size": 4096, "channels": 1024, "layers": 64,
                         "max_batches_per_epoch": 1_000_000, "num_threads": 256, "population_size": 10_000,
                         "sample_size": 10_000},
    "table": {"sleep": 100},
}


def _field(default: Any, help: str, flag: str | None = None, most: int | None = None, **kw: Any) -> Any:
    """A spec field with the help text (and flag name, when not derived from the field's) of its flag.

    `most` is the largest value (for text: the most characters) the spec accepts; `{most}`
    in the help text states it, so the flag's help and the check cannot disagree.
    """
    metadata = {"help": help.format(most=f"at most {most:,}") if most is not None else help,
                **({"flag": flag} if flag else {}), **({"most": most} if most is not None else {})}
    if callable(default):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@contextlib.contextmanager
def _prefixed(prefix: str, names: Iterable[str]) -> Iterator[None]:
    """Errors about one of the options `names` name it as `<prefix>.<name>`."""
    try:
        yield
    except ConfigError as exc:
        if exc.field not in names:
            raise
        raise ConfigError(f"{prefix}.{exc.field}", exc.problem, exc.allowed) from None


def _check_most(name: str, value: Any, most: int) -> None:
    if value is not None and value > most:
        raise ConfigError(name, f"{value} is too large", f"at most {most:,}")


def _check_option_value(name: str, value: Any) -> None:
    """An option's value: a finite number, a short text, a boolean, null, or a short list of them."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if len(items) > MAX_OPTION_LIST:
        raise ConfigError(name, f"a list of {len(items)} values is too long", f"at most {MAX_OPTION_LIST}")
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(name, f"must be a finite number, got {item}")
        if isinstance(item, str) and len(item) > MAX_OPTION_TEXT:
            raise ConfigError(name, f"a text of {len(item):,} characters is too long",
                              f"at most {MAX_OPTION_TEXT} characters")
        if not isinstance(item, (type(None), bool, int, float, str)):
            raise ConfigError(name, f"must be a number, text, boolean or a list of them, got {type(item).__name__}")


def _check_options(name: str, options: Any) -> None:
    if not isinstance(options, dict):
        raise ConfigError(name, f"must be a mapping of option names to values, got {type(options).__name__}")
    if len(options) > MAX_OPTIONS:
        raise ConfigError(name, f"{len(options)} options are too many", f"at most {MAX_OPTIONS}")
    for key, value in options.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_OPTION_NAME:
            raise ConfigError(name, "option names must be texts", f"1 to {MAX_OPTION_NAME} characters")
        _check_option_value(f"{name}.{key}", value)
        most = OPTION_LIMITS.get(name, {}).get(key)
        if most is not None and isinstance(value, (int, float)):
            _check_most(f"{name}.{key}", value, most)


@dataclass(frozen=True)
class SearchSpec:
    space: str = _field("macro", "search space: nb201, darts, nasnet, macro, rnn (default macro)")
    strategy: str = _field("rl", "random, evolution, rl (default), nao, or one-shot: darts, darts2 (second order), "
                                 "noisy-darts, nao-ws; options via --strategy-option")
    evaluator: str = _field("train", "train (train each child) or table (NAS-Bench-201 lookup)")
    dataset: str = _field("digits", "digits (default, bundled), mnist, cifar10, ptb")
    data_path: str | None = _field(None, "path to the dataset's files (mnist, cifar10, ptb; {most} characters)",
                                   flag="--data", most=4096)
    evaluations: int = _field(24, "number of architectures to evaluate (default 24, {most})", most=1_000_000)
    seed: int = _field(0, "seed of the whole search (default 0, {most})", most=2**63 - 1)
    #: "ray": the distributed scheme on a Ray cluster; "local": one process, one child at a time.
    runtime: str = _field("ray", "ray (default: the distributed scheme) or local (one process, one child at a time)")
    #: Zoph & Le's scheme: K controller replicas, m children each, S parameter shards, W workers.
    controllers: int = _field(2, "K controller replicas (rl; the paper used 100; default 2, {most})", most=128)
    children: int = _field(4, "m children sampled per replica step (the paper: 8; default 4, {most})", most=64)
    ps_shards: int = _field(2, "S parameter-server shards (the paper: 20; default 2, {most})", most=64)
    workers: int = _field(2, "W worker actors that evaluate children (default 2, {most})", most=1024)
    cpus_per_child: float = _field(1.0, "CPUs reserved per worker (fractions allowed; default 1, {most})", most=256)
    gpus_per_child: float = _field(0.0, "GPUs reserved per worker (fractions allowed; default 0, {most})", most=16)
    #: Times an evaluation is re-sent after its worker died, before it is recorded as failed.
    max_retries: int = _field(2, "re-sends of an evaluation whose worker died (default 2, {most})", most=100)
    #: Gradients a shard accumulates before one update (the paper's PTB setting: 10).
    ps_accumulate: int = _field(1, "gradients a shard accumulates per update (default 1, {most})", most=1000)
    #: What shards do with stale gradients: none, drop (beyond max_staleness) or scale (by 1/(1+staleness)).
    staleness_policy: str = _field("none", "none, drop or scale: what shards do with stale gradients")
    max_staleness: int | None = _field(None, "staleness bound in versions (drop/scale; {most})", most=1_000_000)
    #: Shard checkpoint interval, in applied updates.
    checkpoint_every: int = _field(10, "parameter-shard checkpoint interval, in applied updates (default 10, {most})",
                                   most=1_000_000)
    #: Stop handing out evaluations after this many seconds (None: only the evaluation budget).
    max_wall_time_s: float | None = _field(None, "time budget in seconds ({most}, a year)", flag="--max-wall-time",
                                           most=365 * 24 * 3600)
    space_options: dict[str, Any] = _field(
        dict, f"search-space option, e.g. num_layers=8 for macro (repeatable, at most {MAX_OPTIONS})",
        flag="--space-option")
    strategy_options: dict[str, Any] = _field(
        dict, f"strategy option, e.g. lr=0.001 for rl (repeatable, at most {MAX_OPTIONS})", flag="--strategy-option")
    #: TrainConfig fields for the train evaluator (epochs, batch_size, lr, channels, layers, ...).
    train: dict[str, Any] = _field(dict, f"child-training option, e.g. lr=0.05 (repeatable, at most {MAX_OPTIONS})",
                                   flag="--train-option")
    #: Options of the table evaluator (e.g. dataset: cifar10 | cifar100 | imagenet16).
    table: dict[str, Any] = _field(
        dict, f"table-evaluator option, e.g. dataset=cifar100 (repeatable, at most {MAX_OPTIONS})",
        flag="--table-option")

    def validate(self) -> SearchSpec:
        """Check every field without building anything heavy; returns self so callers can chain.

        Sizes first, against their bounds, so that nothing below sees an unbounded request."""
        self._check_sizes()
        check_choice("space", self.space, space_names())
        check_choice("evaluator", self.evaluator, EVALUATORS)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("dataset", self.dataset, DATASETS)
        ShardConfig(accumulate=self.ps_accumulate, staleness_policy=self.staleness_policy,
                    max_staleness=self.max_staleness)
        if self.evaluator == "train":
            self._check_train_options()
        else:
            self._check_table_options()
        cls, options = self.strategy_config()
        if self.runs_scheme(cls):
            cls.scheme(options)
        return self

    def _check_sizes(self) -> None:
        hints = {f.name: f for f in dataclasses.fields(self)}
        check_int("evaluations", self.evaluations)
        check_int("seed", self.seed, 0)
        for name in ("controllers", "children", "ps_shards", "workers", "ps_accumulate", "checkpoint_every"):
            check_int(name, getattr(self, name))
        check_int("max_retries", self.max_retries, 0)
        check_int("max_staleness", self.max_staleness, 0, optional=True)
        check_number("cpus_per_child", self.cpus_per_child, 0)
        check_number("gpus_per_child", self.gpus_per_child, 0)
        check_number("max_wall_time_s", self.max_wall_time_s, 0, low_open=True, optional=True)
        if self.data_path is not None:
            if not isinstance(self.data_path, str) or not self.data_path or "\0" in self.data_path:
                raise ConfigError("data_path", "must be a path: non-empty text without NUL characters")
            _check_most("data_path", len(self.data_path), hints["data_path"].metadata["most"])
        for name, f in hints.items():
            if "most" in f.metadata and name != "data_path":
                _check_most(name, getattr(self, name), f.metadata["most"])
        for name in OPTION_FIELDS:
            _check_options(name, getattr(self, name))

    def _check_train_options(self) -> None:
        known = TrainConfig.field_names() + DATASET_OPTIONS
        unknown = sorted(set(self.train) - set(known))
        if unknown:
            raise ConfigError(f"train.{unknown[0]}", "unknown option", sorted(known))
        with _prefixed("train", known):
            TrainConfig(**{k: v for k, v in self.train.items() if k not in DATASET_OPTIONS})
            check_dataset_options(self.dataset, **{k: v for k, v in self.train.items() if k in DATASET_OPTIONS})

    def _check_table_options(self) -> None:
        unknown = sorted(set(self.table) - set(TABLE_OPTIONS))
        if unknown:
            raise ConfigError(f"table.{unknown[0]}", "unknown option", TABLE_OPTIONS)
        check_choice("table.dataset", self.table.get("dataset", TABLE_DATASETS[0]), TABLE_DATASETS)
        check_number("table.sleep", self.table.get("sleep", 0.0), 0)

    def strategy_config(self) -> tuple[type[Strategy], Any]:
        """The strategy's class and its typed options."""
        with _prefixed("space_options", self.space_options):
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
