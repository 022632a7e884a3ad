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

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, check_choice, check_int, check_number, prefixed_errors
from raynas.controller.strategies import Strategy, strategy_class
from raynas.search_spaces import get_space, space_names
from raynas.workers.evaluation import DATASET_OPTIONS, EVALUATORS, TABLE_OPTIONS
from raynas.workers.evaluation.table import BUDGETS as TABLE_BUDGETS
from raynas.workers.evaluation.table import TABLE_DATASETS

RUNTIMES = ("ray", "local")
#: How a replica batches its children: the paper's barrier (sample m, wait for all m, push), or
#: rolling (keep its m workers busy, sampling from the latest weights whenever one frees up, and
#: push after every m results).
BATCHING = ("barrier", "rolling")
#: "asha": Ray Tune's ASHAScheduler stops unpromising children at rungs (Li & Talwalkar's baseline).
SCHEDULERS = ("none", "asha")
#: Li & Talwalkar's ASHA: R = 300 epochs (r = 1 epoch and eta = 4 are the fields' defaults).
ASHA_MAX_EPOCHS = 300
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
                         "sample_size": 10_000, "archs": 1_000_000, "score_batches": 10_000, "block": 100_000,
                         "rescore_top": 1000, "candidates": 100, "warmup_epochs": 1000,
                         # NAO: its networks' sizes and how much it trains and proposes per round.
                         "hidden_size": 4096, "embedding_size": 4096, "mlp_hidden_size": 4096, "mlp_layers": 64,
                         "encoder_layers": 16, "decoder_layers": 16, "seed_archs": 100_000, "new_archs": 100_000,
                         "top_k": 100_000, "max_step_size": 100_000, "expand": 1000},
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
class Ladder:
    """A scheduler's budgets: the first rung r, the most a child reaches R, and the budgets at
    which a trial stops to report a whole evaluation: its rungs and R (the table's 12 and 200)."""

    grace: int
    maximum: int
    budgets: tuple[int, ...]


@dataclass(frozen=True)
class SearchSpec:
    space: str = _field("macro", "search space: nb201, darts, nasnet, macro, rnn, nasrnn, autodeeplab "
                                 "(default macro)")
    strategy: str = _field("rl", "random, evolution, rl (default), nao, or one-shot: darts, darts2 (second order), "
                                 "noisy-darts, rsws (random search with weight sharing), nao-ws, autodeeplab; "
                                 "options via --strategy-option")
    evaluator: str = _field("train", "train (train each child) or table (NAS-Bench-201 lookup)")
    dataset: str = _field("digits", "digits (default, bundled), mnist, cifar10, ptb, or for segmentation "
                                    "digits-seg (bundled), cityscapes, voc; a one-shot strategy also trains its "
                                    "supernet on it")
    #: A one-shot search scored by the table trains its supernet on `dataset`; unless this is set,
    #: that must be the table's own dataset.
    proxy_dataset: bool = _field(False, "let a one-shot search scored by the table train its supernet on --dataset "
                                        "although the table holds another dataset's figures (result.json says so)")
    data_path: str | None = _field(None, "path to the dataset's files (mnist, cifar10, ptb; {most} characters)",
                                   flag="--data", most=4096)
    evaluations: int = _field(24, "number of architectures to evaluate (default 24, {most})", most=1_000_000)
    seed: int = _field(0, "seed of the whole search (default 0, {most})", most=2**63 - 1)
    #: "ray": the distributed scheme on a Ray cluster; "local": one process, one child at a time.
    runtime: str = _field("ray", "ray (default: the distributed scheme) or local (one process, one child at a time)")
    #: Zoph & Le's scheme: K controller replicas, m children each, S parameter shards, W workers.
    controllers: int = _field(2, "K controller replicas (rl; the paper used 100, 400 on PTB; default 2, {most})",
                              most=512)
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
    #: How a replica batches its m children (BATCHING).
    replica_batch: str = _field("barrier", "barrier (the paper's: sample m, wait for all m, push) or rolling (keep "
                                           "each replica's own m workers busy; needs --workers >= K x m)")
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

    #: Ray Tune's scheduler; the strategy proposes, Tune's ASHAScheduler stops children at rungs.
    scheduler: str = _field("none", "none (default) or asha: Ray Tune's ASHAScheduler stops unpromising children "
                                    "early (random, evolution, rl; --runtime ray)")
    grace_period: int | None = _field(None, "ASHA's r, the first rung, in epochs (default 1, the paper's; 12 for "
                                            "the table; {most})", most=1000)
    max_budget: int | None = _field(None, "ASHA's R, the epochs a child may reach; the train evaluator's schedule "
                                          "spans R (default train.epochs if set, else the paper's 300; 200 for the "
                                          "table; {most})", most=1000)
    reduction_factor: float = _field(4.0, "ASHA's eta: each rung keeps the best 1/eta (default 4, the paper's; "
                                          "{most})", most=100)
    brackets: int = _field(1, "Hyperband-style brackets of asynchronous successive halving (default 1: ASHA; "
                              "{most})", most=16)

    def validate(self) -> SearchSpec:
        """Check every field without building anything heavy; returns self so callers can chain.

        Sizes first, against their bounds, so that nothing below sees an unbounded request."""
        self._check_sizes()
        check_choice("space", self.space, space_names())
        check_choice("evaluator", self.evaluator, EVALUATORS)
        check_choice("runtime", self.runtime, RUNTIMES)
        # Imported here, not at the top: a worker unpickling a spec to build a table evaluator need
        # not load torch (seconds per process at start-up).
        from raynas.param_server import ShardConfig
        from raynas.workers.datasets import dataset_names

        check_choice("dataset", self.dataset, dataset_names())
        ShardConfig(accumulate=self.ps_accumulate, staleness_policy=self.staleness_policy,
                    max_staleness=self.max_staleness)
        check_choice("replica_batch", self.replica_batch, BATCHING)
        if self.replica_batch == "rolling" and self.workers < self.controllers * self.children:
            raise ConfigError("replica_batch", f"rolling batches keep each replica's own workers busy: "
                              f"give --workers {self.controllers * self.children} (K x m) or more, or use barrier")
        if self.evaluator == "train":
            self._check_train_options()
        else:
            self._check_table_options()
        cls, options = self.strategy_config()
        if self.runs_scheme(cls):
            cls.scheme(options)
        self._check_search_data(cls)
        self._check_scheduler(cls)
        return self

    def scoring_dataset(self) -> str:
        """The dataset whose figures score the architectures: the training data, or the table's."""
        return self.dataset if self.evaluator == "train" else self.table.get("dataset", TABLE_DATASETS[0])

    def _check_search_data(self, cls: type[Strategy]) -> None:
        """A supernet trained on other data than the table scores is a proxy, allowed only when asked for."""
        if not isinstance(self.proxy_dataset, bool):
            raise ConfigError("proxy_dataset", f"must be true or false, got {self.proxy_dataset!r}")
        searches = cls.needs.search is not None
        if self.proxy_dataset and not (searches and self.evaluator == "table"):
            raise ConfigError("proxy_dataset", "applies only to a one-shot strategy scored by the table evaluator")
        scored = self.scoring_dataset()
        if searches and self.dataset != scored and not self.proxy_dataset:
            raise ConfigError("dataset", f"the supernet would train on {self.dataset} while the table scores its "
                              f"architectures by {scored} figures",
                              f"--dataset {scored} (with --data), or --proxy-dataset to score a proxy search")

    def _check_scheduler(self, cls: type[Strategy]) -> None:
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.scheduler == "none":
            return
        if self.runtime != "ray":
            raise ConfigError("scheduler", "Ray Tune's schedulers run on Ray, not in the local runtime",
                              "--runtime ray (an embedded single-node Ray without --address)")
        if cls.needs.search is not None or cls.needs.budgets:
            raise ConfigError("scheduler", f"the {cls.name} strategy runs its own evaluations; a scheduler "
                              "stops the children of multi-trial strategies", "random, evolution, rl")
        ladder = self.ladder()
        rungs = int(math.log(ladder.maximum / ladder.grace) / math.log(self.reduction_factor) + 1e-9) + 1
        if self.brackets > rungs:
            raise ConfigError("brackets", f"{self.brackets} brackets need more rungs than the {rungs} between "
                              f"r={ladder.grace} and R={ladder.maximum} at eta={self.reduction_factor:g}",
                              f"1..{rungs}")

    def ladder(self) -> Ladder:
        """The scheduler's budgets, in epochs: r, R and the budgets a trial reports at."""
        if self.evaluator == "table":
            low, high = TABLE_BUDGETS
            if self.grace_period not in (None, low):
                raise ConfigError("grace_period", f"the table has no {self.grace_period}-epoch results", (low,))
            if self.max_budget not in (None, high):
                raise ConfigError("max_budget", f"the table has no {self.max_budget}-epoch results", (high,))
            return Ladder(low, high, TABLE_BUDGETS)
        epochs = self.train.get("epochs")
        if self.max_budget is not None and epochs is not None and epochs != self.max_budget:
            raise ConfigError("max_budget", f"{self.max_budget} differs from train.epochs={epochs}: under a "
                              "scheduler the children's schedule is max_budget epochs", "one of the two")
        maximum = self.max_budget or epochs or ASHA_MAX_EPOCHS
        grace = self.grace_period or 1
        if grace > maximum:
            raise ConfigError("grace_period", f"r={grace} exceeds R={maximum}", f"1..{maximum}")
        # Ray Tune's rungs, r * eta^k below R; a rung between two epochs is met at the next one.
        count = int(math.log(maximum / grace) / math.log(self.reduction_factor) + 1)
        rungs = {math.ceil(grace * self.reduction_factor ** k - 1e-9) for k in range(count)}
        return Ladder(grace, maximum, tuple(sorted({b for b in rungs if b < maximum} | {maximum})))

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
        check_int("grace_period", self.grace_period, optional=True)
        check_int("max_budget", self.max_budget, optional=True)
        check_number("reduction_factor", self.reduction_factor, 1.0, low_open=True)
        check_int("brackets", self.brackets)
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
        from raynas.workers.datasets import get_dataset
        from raynas.workers.training import TrainConfig

        known = TrainConfig.field_names() + DATASET_OPTIONS
        unknown = sorted(set(self.train) - set(known))
        if unknown:
            raise ConfigError(f"train.{unknown[0]}", "unknown option", sorted(known))
        with prefixed_errors("train", known):
            TrainConfig(**{k: v for k, v in self.train.items() if k not in DATASET_OPTIONS})
        get_dataset(self.dataset, self.data_path, {k: v for k, v in self.train.items() if k in DATASET_OPTIONS})

    def _check_table_options(self) -> None:
        unknown = sorted(set(self.table) - set(TABLE_OPTIONS))
        if unknown:
            raise ConfigError(f"table.{unknown[0]}", "unknown option", TABLE_OPTIONS)
        check_choice("table.dataset", self.table.get("dataset", TABLE_DATASETS[0]), TABLE_DATASETS)
        check_number("table.sleep", self.table.get("sleep", 0.0), 0)

    def strategy_config(self) -> tuple[type[Strategy], Any]:
        """The strategy's class and its typed options."""
        with prefixed_errors("space_options", self.space_options):
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
