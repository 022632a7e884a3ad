"""The search spec: one typed, frozen description of a search, as a config file, the command
line or a gRPC request gives it. Each field's metadata gives its help text (and flag), from which
the command line derives its flags, and the upper bound of every size (`most`), which the help
states. A spec is resolved once into a `Plan` (controller/runtime/plan.py), which checks every
field and every plug-in's options and builds what the execution paths consume.

The checks here are the service's first line against a careless or hostile request, so they are
cheap whatever the request asks for: every size against its bound, every option mapping's shape,
before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, check_int, check_number

RUNTIMES = ("ray", "local")
#: How a replica batches its children: the paper's barrier (sample m, wait for all m, push), or
#: rolling (keep its m workers busy, sampling from the latest weights whenever one frees up, and
#: push after every m results).
BATCHING = ("barrier", "rolling")
#: "asha": Ray Tune's ASHAScheduler stops unpromising children at rungs (Li & Talwalkar's baseline).
SCHEDULERS = ("none", "asha")
#: What a resumed search may run on differently: where its children train, not what it searches.
RESUME_FIELDS = ("workers", "cpus_per_child", "gpus_per_child", "max_retries")
#: The mapping fields: options passed on to the space, strategy, evaluator and dataset plug-ins,
#: which bound their own values.
OPTION_FIELDS = ("space_options", "strategy_options", "evaluator_options", "dataset_options")
#: Child-training options that `nas search` (as flags) and `raynas.search` (as keywords) take
#: beside the spec's fields: `epochs=3` is `evaluator_options={"epochs": 3}`.
TRAIN_SHORTCUTS = {
    "epochs": "training epochs per child",
    "batch_size": "training batch size per child",
    "channels": "child network width (initial channels)",
    "layers": "child network depth (cells per stage for nb201, cells for darts)",
}
#: Bounds of each option mapping: entries, name length, text length, list length.
MAX_OPTIONS, MAX_OPTION_NAME, MAX_OPTION_TEXT, MAX_OPTION_LIST = 32, 64, 256, 16
#: Fields of specs written before evaluators and datasets were plug-ins, read as their new homes.
_FORMER = {"train": "evaluator_options", "table": "evaluator_options"}
_FORMER_DATASET_OPTIONS = ("max_train", "val_fraction", "augment")


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


@dataclass(frozen=True)
class SearchSpec:
    space: str = _field("macro", "search space (default macro)")
    strategy: str = _field("rl", "search strategy (default rl); its options via --strategy-option")
    evaluator: str = _field("train", "how children are scored (default train); its options via --evaluator-option")
    dataset: str = _field("digits", "the data children (and one-shot supernets) train on (default digits, bundled); "
                                    "its options via --dataset-option")
    #: A one-shot search scored by the table trains its supernet on `dataset`; unless this is set,
    #: that must be the table's own dataset.
    proxy_dataset: bool = _field(False, "let a one-shot search scored by the table train its supernet on --dataset "
                                        "although the table holds another dataset's figures (result.json says so)")
    data_path: str | None = _field(None, "path of the dataset's files: a folder or file on every node (a shared "
                                         "file system on a cluster; {most} characters)", flag="--data", most=4096)
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
    replica_batch: str = _field("rolling", "rolling (the default: a child the moment one of a replica's m ends, a "
                                           "gradient every m results, the budget's last children pooled) or barrier "
                                           "(the paper's: sample m, wait for all m, push)")
    max_staleness: int | None = _field(None, "staleness bound in versions (drop/scale; {most})", most=1_000_000)
    #: Updates a parameter shard logs between fsyncs of its update log (what a power cut may cost it).
    checkpoint_every: int = _field(10, "updates a parameter shard logs between fsyncs (default 10, {most})",
                                   most=1_000_000)
    #: Stop handing out evaluations after this many seconds (None: only the evaluation budget).
    max_wall_time_s: float | None = _field(None, "time budget in seconds ({most}, a year)", flag="--max-wall-time",
                                           most=365 * 24 * 3600)
    space_options: dict[str, Any] = _field(
        dict, f"search-space option, e.g. num_layers=8 for macro (repeatable, at most {MAX_OPTIONS})",
        flag="--space-option")
    strategy_options: dict[str, Any] = _field(
        dict, f"strategy option, e.g. lr=0.001 for rl (repeatable, at most {MAX_OPTIONS}; nas options --strategy "
              "NAME lists them)", flag="--strategy-option")
    #: The evaluator's options (train: TrainConfig's fields; table: dataset, sleep).
    evaluator_options: dict[str, Any] = _field(
        dict, f"evaluator option, e.g. lr=0.05 for train or dataset=cifar100 for table (repeatable, at most "
              f"{MAX_OPTIONS}; nas options --evaluator NAME lists them)", flag="--evaluator-option")
    #: The dataset's options (val_fraction, max_train, image_size, stream, ...).
    dataset_options: dict[str, Any] = _field(
        dict, f"dataset option, e.g. max_train=500 or image_size=64 (repeatable, at most {MAX_OPTIONS}; nas options "
              "--dataset NAME lists them)", flag="--dataset-option")

    #: Ray Tune's scheduler; the strategy proposes, Tune's ASHAScheduler stops children at rungs.
    scheduler: str = _field("none", "none (default) or asha: Ray Tune's ASHAScheduler stops unpromising children "
                                    "early (random, evolution, rl; --runtime ray)")
    grace_period: int | None = _field(None, "ASHA's r, the first rung, in epochs (default R / eta, one halving "
                                            "round: 75 of 300, Li & Talwalkar's; 12 for the table; {most})",
                                      most=1000)
    max_budget: int | None = _field(None, "ASHA's R, the epochs a child may reach; the train evaluator's schedule "
                                          "spans R (default: its epochs option if set, else the paper's 300; 200 for "
                                          "the table; {most})", most=1000)
    reduction_factor: float = _field(4.0, "ASHA's eta: a child passes a rung when its result is at least the "
                                          "(1 - 1/eta) quantile of those that reached the rung before it (Ray "
                                          "Tune's rule; default 4, the paper's; {most})", most=100)
    brackets: int = _field(1, "Hyperband-style brackets of asynchronous successive halving (default 1: ASHA; "
                              "{most})", most=16)

    def check_sizes(self) -> None:
        """Every field's type and bound, and every option mapping's shape: cheap, nothing built."""
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> SearchSpec:
        data = upgraded(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}", "unknown field", sorted(known))
        return cls(**data)

    def replace(self, **changes: Any) -> SearchSpec:
        return dataclasses.replace(self, **changes)

    def resumed_with(self, changes: dict[str, Any]) -> SearchSpec:
        """This search resumed on other resources (a smaller machine, a bigger cluster). Anything else
        would make it another search than the one its log holds: refused, naming the fields."""
        changed = sorted(k for k, v in changes.items() if getattr(self, k, None) != v)
        fixed = [k for k in changed if k not in RESUME_FIELDS]
        if fixed:
            raise ConfigError(fixed[0], f"{', '.join(fixed)} cannot change on --resume: the run directory's log "
                              "belongs to the search it started", f"only {', '.join(RESUME_FIELDS)}; or a new "
                              "search with another --out")
        return self.replace(**{k: changes[k] for k in changed}) if changed else self


def with_shortcuts(options: Any, shortcuts: dict[str, Any]) -> Any:
    """The evaluator's `options` with the training shortcuts that are set (TRAIN_SHORTCUTS, None:
    unset) under them: an explicit option is more specific than a shortcut. Options that are not
    a mapping come back as given, for the spec's check to name."""
    lifted = {name: value for name, value in shortcuts.items() if value is not None}
    if not lifted or not (options is None or isinstance(options, Mapping)):
        return options
    return {**lifted, **(options or {})}


def upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """A spec written before evaluators and datasets were plug-ins (a run directory's spec.json,
    a config file) in today's fields: `train` and `table` are the evaluator's options, and the
    dataset options that `train` used to carry are the dataset's."""
    if not isinstance(data, dict) or not any(k in data for k in _FORMER):
        return data
    data = dict(data)
    for former, now in _FORMER.items():
        options = data.pop(former, None)
        if not options:
            continue
        if not isinstance(options, dict):
            raise ConfigError(former, f"must be a mapping of option names to values, got {type(options).__name__}")
        moved = {k: v for k, v in options.items() if k in _FORMER_DATASET_OPTIONS}
        data[now] = {**data.get(now, {}), **{k: v for k, v in options.items() if k not in moved}}
        if moved:
            data["dataset_options"] = {**data.get("dataset_options", {}), **moved}
    return data


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
