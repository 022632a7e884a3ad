"""SearchSpec validation as the service's first line: every size has a stated upper bound,
validation stays cheap whatever the request asks for, and bad options fail at submit."""

import dataclasses
import math
import re
import tracemalloc
from pathlib import Path

import pytest

from raynas.common import ConfigError
from raynas.controller.runtime import catalogue
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import OPTION_FIELDS, SearchSpec

TABLE = {"space": "nb201", "evaluator": "table", "strategy": "random", "runtime": "local"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def refused(field: str, **spec) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        resolve(SearchSpec.from_dict(spec))
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
    resolve(SearchSpec.from_dict({**TABLE, field: most}))
    assert "at most" in str(refused(field, **TABLE, **{field: most + 1}))


@pytest.mark.parametrize("spec, field", [
    ({"space": "macro", "space_options": {"num_layers": 2000, "max_layers": 2000}}, "space_options.max_layers"),
    ({"space": "rnn", "dataset": "ptb", "space_options": {"steps": 5000}}, "space_options.steps"),
    ({"space": "macro", "evaluator_options": {"epochs": 10**9}}, "evaluator_options.epochs"),
    ({"space": "macro", "evaluator_options": {"channels": 10**6}}, "evaluator_options.channels"),
    ({"space": "macro", "dataset_options": {"max_train": 10**12}}, "dataset_options.max_train"),
    ({"space": "nb201", "strategy": "darts", "strategy_options": {"layers": 10**5}}, "strategy_options.layers"),
    ({"space": "nb201", "strategy": "evolution", "strategy_options": {"population_size": 10**9}},
     "strategy_options.population_size"),
    ({**TABLE, "strategy": "nao", "strategy_options": {"hidden_size": 10**9}}, "strategy_options.hidden_size"),
    ({**TABLE, "strategy": "nao-ws", "space": "darts", "evaluator": "train",
      "strategy_options": {"nao.hidden_size": 10**9}}, "strategy_options.nao.hidden_size"),
    ({**TABLE, "evaluator_options": {f"k{i}": i for i in range(1000)}}, "evaluator_options"),
    ({**TABLE, "evaluator_options": {"x" * 10_000: 1}}, "evaluator_options"),
    ({**TABLE, "dataset_options": {f"k{i}": i for i in range(1000)}}, "dataset_options"),
    ({**TABLE, "evaluator_options": {"dataset": "c" * 100_000}}, "evaluator_options.dataset"),
    ({**TABLE, "strategy_options": {"note": list(range(100_000))}}, "strategy_options.note"),
    ({**TABLE, "data_path": "/d" * 100_000}, "data_path"),
])
def test_oversized_requests_are_refused_cheaply(spec, field):
    refused(field, **spec)
    # Refusing never builds a space or network the size of the request.
    assert peak_bytes(lambda: resolve(SearchSpec.from_dict(spec))) < 2 << 20


@pytest.mark.parametrize("spec, field", [
    ({**TABLE, "evaluator": "train", "space": "macro", "evaluator_options": {"epochz": 3}},
     "evaluator_options.epochz"),
    ({"space": "macro", "evaluator_options": {"lr": -1}}, "evaluator_options.lr"),
    ({"space": "macro", "evaluator_options": {"lr": math.nan}}, "evaluator_options.lr"),
    ({"space": "macro", "dataset_options": {"val_fraction": 2}}, "dataset_options.val_fraction"),
    ({"space": "macro", "evaluator_options": {"val_fraction": 0.5}}, "evaluator_options.val_fraction"),
    ({"space": "macro", "dataset": "image-folder"}, "data_path"),
    ({**TABLE, "evaluator_options": {"dataset": "svhn"}}, "evaluator_options.dataset"),
    ({**TABLE, "evaluator_options": {"sleeep": 1}}, "evaluator_options.sleeep"),
    ({**TABLE, "evaluator": "toy"}, "evaluator"),
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
    start, end = text.index(catalogue.BOUNDS_START), text.index(catalogue.BOUNDS_END)
    assert text[start + len(catalogue.BOUNDS_START):end].strip() == catalogue.bounds_table().strip(), \
        "docs/service.md's table of option bounds is stale: paste in what nas options --bounds prints"


def test_old_specs_read_as_today_s():
    """A run directory's spec.json from before evaluators and datasets were plug-ins resumes."""
    spec = SearchSpec.from_dict({"space": "nb201", "train": {"epochs": 2, "max_train": 100}, "table": {}})
    assert spec.evaluator_options == {"epochs": 2} and spec.dataset_options == {"max_train": 100}


def test_the_documented_space_bounds_are_the_spaces_own():
    from raynas.search_spaces.macro import MAX_LAYERS
    from raynas.search_spaces.rnn import MAX_STEPS

    text = DOCS.read_text()
    assert f"`space_options.num_layers`, `space_options.max_layers` (macro) | {MAX_LAYERS} |" in text
    assert f"`space_options.steps` (rnn) | {MAX_STEPS} |" in text
