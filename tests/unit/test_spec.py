"""SearchSpec validation as the service's first line: every size has a stated upper bound,
validation stays cheap whatever the request asks for, and bad options fail at submit."""

import dataclasses
import math
import re
import tracemalloc
from pathlib import Path

import pytest

from raynas.common import ConfigError
from raynas.controller.runtime.spec import OPTION_FIELDS, OPTION_LIMITS, SearchSpec

TABLE = {"space": "nb201", "evaluator": "table", "strategy": "random", "runtime": "local"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def refused(field: str, **spec) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        SearchSpec.from_dict(spec).validate()
    assert exc.value.field == field, exc.value
    return exc.value


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except ConfigError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_every_size_field_has_an_upper_bound_its_help_states():
    for f in dataclasses.fields(SearchSpec):
        if f.name in OPTION_FIELDS or f.type in ("str", "bool"):
            continue
        most = f.metadata.get("most")
        assert most is not None, f"{f.name} has no upper bound"
        assert f"at most {most:,}" in f.metadata["help"], f.name


@pytest.mark.parametrize("field", ["evaluations", "workers", "controllers", "children", "ps_shards", "max_retries",
                                   "checkpoint_every", "seed", "cpus_per_child", "gpus_per_child", "max_wall_time_s"])
def test_one_past_the_bound_is_refused(field):
    most = next(f.metadata["most"] for f in dataclasses.fields(SearchSpec) if f.name == field)
    SearchSpec.from_dict({**TABLE, field: most}).validate()
    assert "at most" in str(refused(field, **TABLE, **{field: most + 1}))


@pytest.mark.parametrize("spec, field", [
    ({"space": "macro", "space_options": {"num_layers": 2000, "max_layers": 2000}}, "space_options.max_layers"),
    ({"space": "rnn", "dataset": "ptb", "space_options": {"steps": 5000}}, "space_options.steps"),
    ({**TABLE, "train": {"epochs": 10**9}}, "train.epochs"),
    ({"space": "macro", "train": {"channels": 10**6}}, "train.channels"),
    ({"space": "nb201", "strategy": "darts", "strategy_options": {"layers": 10**5}}, "strategy_options.layers"),
    ({"space": "nb201", "strategy": "evolution", "strategy_options": {"population_size": 10**9}},
     "strategy_options.population_size"),
    ({**TABLE, "strategy": "nao", "strategy_options": {"hidden_size": 10**9}}, "strategy_options.hidden_size"),
    ({**TABLE, "table": {f"k{i}": i for i in range(1000)}}, "table"),
    ({**TABLE, "train": {"x" * 10_000: 1}}, "train"),
    ({**TABLE, "table": {"dataset": "c" * 100_000}}, "table.dataset"),
    ({**TABLE, "strategy_options": {"note": list(range(100_000))}}, "strategy_options.note"),
    ({**TABLE, "data_path": "/d" * 100_000}, "data_path"),
])
def test_oversized_requests_are_refused_cheaply(spec, field):
    refused(field, **spec)
    # Refusing never builds a space or network the size of the request.
    assert peak_bytes(lambda: SearchSpec.from_dict(spec).validate()) < 2 << 20


@pytest.mark.parametrize("spec, field", [
    ({**TABLE, "evaluator": "train", "space": "macro", "train": {"epochz": 3}}, "train.epochz"),
    ({"space": "macro", "train": {"lr": -1}}, "train.lr"),
    ({"space": "macro", "train": {"lr": math.nan}}, "train.lr"),
    ({"space": "macro", "train": {"val_fraction": 2}}, "train.val_fraction"),
    ({**TABLE, "table": {"dataset": "svhn"}}, "table.dataset"),
    ({**TABLE, "table": {"sleeep": 1}}, "table.sleeep"),
    ({**TABLE, "strategy_options": {"x": math.inf}}, "strategy_options.x"),
    ({"space": "macro", "dataset": "imagenet"}, "dataset"),
    ({**TABLE, "data_path": 3}, "data_path"),
    ({**TABLE, "data_path": "a\0b"}, "data_path"),
])
def test_bad_options_fail_at_submit_not_later(spec, field):
    refused(field, **spec)


def test_the_documented_limits_are_the_checked_ones():
    """docs/service.md's table of limits lists each bound as the code checks it."""
    text = DOCS.read_text()
    for f in dataclasses.fields(SearchSpec):
        if "most" in f.metadata:
            assert re.search(rf"\| `{f.name}` \| [^|]*{f.metadata['most']:,}", text), f.name
    for field, limits in OPTION_LIMITS.items():
        for option, most in limits.items():
            assert re.search(rf"\| `{field}\.{option}` \| [^|]*{most:,}", text), f"{field}.{option}"


def test_the_documented_space_bounds_are_the_spaces_own():
    from raynas.search_spaces.macro import MAX_LAYERS
    from raynas.search_spaces.rnn import MAX_STEPS

    text = DOCS.read_text()
    assert f"`space_options.num_layers`, `space_options.max_layers` (macro) | {MAX_LAYERS} |" in text
    assert f"`space_options.steps` (rnn) | {MAX_STEPS} |" in text
