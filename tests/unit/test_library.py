"""The public Python API: the README's example runs as written, the names `raynas` exports are
there, and `nas results` prints a search's evaluations as a table, CSV and JSON lines."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

import raynas
from raynas.common import ConfigError
from raynas.controller.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"<!-- README example: tests/unit/test_library.py runs this block -->\n```python\n(.*?)```",
                          README.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    state, arch, reward = printed.getvalue().splitlines()[0].split(" ")
    assert state == "done" and arch.startswith("|") and 0 < float(reward) <= 1
    assert (tmp_path / "runs" / "api-example" / "result.json").is_file()


@pytest.mark.slow
def test_the_readme_tour_runs_in_order(tmp_path, monkeypatch):
    """Each line as a new user types it, in a fresh folder: a line may only read what a line above wrote."""
    (block,) = re.findall(r"<!-- README tour: tests/unit/test_library.py runs these lines in order -->\n```bash\n"
                          r"(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    for line in block.splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "nas"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(args[1:]) == 0, line
    assert (tmp_path / "anytime.png").is_file()


def test_the_top_level_names():
    for name in raynas.__all__:
        assert getattr(raynas, name) is not None
    with pytest.raises(AttributeError):
        raynas.no_such_name  # noqa: B018
    with pytest.raises(ConfigError, match="^search.bogus"):
        raynas.search(bogus=1)


def test_the_training_shortcuts_of_nas_search_are_keywords_too(tmp_path):
    """`nas search --epochs 1 --channels 4` as `raynas.search(epochs=1, channels=4)`; an explicit
    evaluator option wins over its shortcut, as --evaluator-option does over the flag."""
    result = raynas.search(space="nb201", strategy="random", evaluations=1, runtime="local", out=tmp_path / "run",
                           epochs=1, channels=4, layers=1, batch_size=None, evaluator_options={"layers": 2})
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["evaluator_options"] == {"epochs": 1, "channels": 4, "layers": 2}
    assert result.state == "done" and result.best["metrics"]["epochs"] == 1


def test_evaluator_options_that_are_not_a_mapping_are_named_beside_a_shortcut_too(tmp_path):
    """With a shortcut beside it, evaluator_options=5 raised a bare TypeError from the merge."""
    with pytest.raises(ConfigError, match="^evaluator_options: must be a mapping"):
        raynas.search(space="nb201", evaluator="table", evaluations=1, runtime="local", out=tmp_path / "run",
                      epochs=1, evaluator_options=5)
    assert not (tmp_path / "run").exists()


def test_nas_results_as_a_table_csv_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    raynas.search(space="nb201", strategy="random", evaluator="table", evaluations=5, runtime="local", out=run)
    assert main(["results", str(run)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["id", "status", "reward", "budget"] and table[0].split()[-1] == "arch"
    rewards = [float(line.split()[2]) for line in table[1:]]
    assert len(rewards) == 5 and rewards == sorted(rewards, reverse=True)  # best first
    assert main(["results", str(run), "--format", "csv", "--sort", "order"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["id"] for r in rows] == [f"e{i:06d}" for i in range(5)] and "test_acc_200ep" in rows[0]
    assert main(["results", str(run), "--format", "json", "--top", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["reward"] == pytest.approx(max(rewards), abs=1e-4)
    assert main(["results", str(tmp_path)]) == 2
    assert "not a search's run directory" in capsys.readouterr().err
