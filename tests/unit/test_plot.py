"""Figures a person reads: progress.svg and `nas plot` parsed back as XML (axes named, ticks,
the series drawn, failures and outliers marked), PNG through Pillow, bad inputs in one line."""

import math
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from raynas.controller.cli.main import main
from raynas.controller.runtime.plot import best_so_far, nice_ticks, progress_figure, robust_range

NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(text):
    root = ET.fromstring(text)
    groups = {}
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        groups.setdefault(g.get("class"), []).append(g)
    return root, groups


def ticks(group):
    return [float(t.text) for t in group.iterfind("svg:text[@class='tick']", NS)]


def axis_label(group):
    return group.find("svg:text[@class='axis-label']", NS).text


def series(groups):
    return {g.get("data-label"): g for g in groups["series"]}


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 59, 8) == [0, 10, 20, 30, 40, 50]
    assert nice_ticks(0.85, 0.94, 6) == [0.86, 0.88, 0.9, 0.92, 0.94]
    assert nice_ticks(3, 3) == [3]


def test_one_outlier_does_not_squash_the_range():
    values = [0.85 + 0.001 * i for i in range(90)] + [0.097]
    lo, hi = robust_range(values)
    assert 0.8 < lo < 0.85 and hi > 0.939
    assert robust_range([0.097, 0.9]) [0] < 0.097  # too few values to call one an outlier


def test_best_so_far_steps_where_the_best_changes():
    assert best_so_far([(0, 0.5, 0.5), (1, 0.4, 0.4), (2, 0.7, 0.7), (3, 0.6, 0.6)]) == [(0, 0.5), (2, 0.7), (3, 0.7)]
    # What is shown may be another figure of the best child (NB201: its 200-epoch test accuracy).
    assert best_so_far([(1, 0.8, 0.93), (2, 0.9, 0.92)]) == [(1, 0.93), (2, 0.92)]


def evaluation(index, reward, budget=None):
    return {"index": index, "reward": reward, "status": "ok" if reward is not None else "failed",
            "metrics": {} if budget is None else {"budget": budget}}


def test_progress_svg_has_named_axes_ticks_best_so_far_failures_and_outliers():
    rewards = [0.85 + 0.09 * ((7 * i) % 10) / 10 for i in range(40)]
    rewards[5] = 0.097
    records = [evaluation(i, None if i % 13 == 12 else r) for i, r in enumerate(rewards)]
    root, groups = parse(progress_figure(records).svg())
    assert axis_label(groups["x-axis"][0]) == "evaluation (index)"
    assert axis_label(groups["y-axis"][0]) == "reward"
    x_ticks, y_ticks = ticks(groups["x-axis"][0]), ticks(groups["y-axis"][0])
    assert x_ticks == sorted(x_ticks) and len(x_ticks) >= 4 and x_ticks[-1] <= 39
    assert len(y_ticks) >= 3 and min(y_ticks) > 0.5  # the range is the useful one, not 0.097 to 0.94
    drawn = series(groups)
    assert set(drawn) == {"reward", "best so far", "failed"}
    assert len(drawn["reward"].findall("svg:circle", NS)) == 36  # 37 successes, one clipped
    assert len(drawn["reward"].findall("svg:polygon[@class='clipped']", NS)) == 1
    assert len(drawn["failed"].findall("svg:line", NS)) == 2 * 3
    assert len(drawn["best so far"].findall("svg:polyline", NS)) == 1
    legend = [t.text for t in groups["legend"][0].iterfind("svg:text", NS)]
    assert "failed (3)" in legend and any(t.startswith("below the range: 1 (lowest 0.097") for t in legend)


def test_progress_svg_of_a_scheduled_search_shows_stopped_children_apart():
    records = [evaluation(0, 0.5, 1), evaluation(1, 0.8, 4), evaluation(2, 0.6, 1), evaluation(3, 0.7, 4)]
    _, groups = parse(progress_figure(records).svg())
    drawn = series(groups)
    assert set(drawn) == {"stopped at a rung (epochs)", "reward, full 4 epochs", "best so far"}
    assert [t.text for t in drawn["stopped at a rung (epochs)"].findall("svg:text", NS)] == ["1", "1"]


def test_progress_svg_of_no_success_is_still_a_figure():
    _, groups = parse(progress_figure([evaluation(0, None)]).svg())
    assert "failed" in series(groups)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for strategy in ("random", "evolution"):
        assert main(["search", "--runtime", "local", "--evaluator", "table", "--strategy", strategy,
                     "--evaluations", "20", "--seed", "2", "--out", str(root / strategy), "--quiet"]) == 0
    return [root / "random", root / "evolution"]


def test_nas_plot_draws_every_run_and_the_nb201_optimum(runs, tmp_path, capsys):
    out = tmp_path / "anytime.svg"
    assert main(["plot", *map(str, runs), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    _, groups = parse(out.read_text())
    assert axis_label(groups["x-axis"][0]) == "evaluations finished"
    assert "test accuracy" in axis_label(groups["y-axis"][0])
    drawn = series(groups)
    assert set(drawn) == {"random (random, 20 evaluations)", "evolution (evolution, 20 evaluations)",
                          "NB201 optimum, cifar10 (0.9437)"}
    assert len(drawn["NB201 optimum, cifar10 (0.9437)"].findall("svg:line", NS)) == 1
    x_ticks = ticks(groups["x-axis"][0])
    assert x_ticks[-1] == 20 and x_ticks == sorted(x_ticks)
    assert all(t <= 0.9437 + 0.01 for t in ticks(groups["y-axis"][0]))


def test_nas_plot_against_time_and_as_png(runs, tmp_path, capsys):
    svg = tmp_path / "time.svg"
    assert main(["plot", *map(str, runs), "--x", "time", "--out", str(svg)]) == 0
    _, groups = parse(svg.read_text())
    assert axis_label(groups["x-axis"][0]) == "seconds since the search started"
    assert all(math.isfinite(t) and t >= 0 for t in ticks(groups["x-axis"][0]))
    png = tmp_path / "anytime.png"
    assert main(["plot", *map(str, runs), "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1000
        assert len(image.getcolors(1 << 20)) > 10  # drawn on, not a blank page


@pytest.mark.parametrize("argv, field", [
    (["--out", "figure.pdf"], "out"),
    (["--x", "epochs"], "--x"),
])
def test_nas_plot_bad_input_is_one_line(runs, tmp_path, capsys, argv, field):
    if argv[0] == "--out":
        argv = ["--out", str(tmp_path / argv[1])]
    try:
        code = main(["plot", str(runs[0]), *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0]


def test_nas_plot_of_a_directory_that_is_no_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no spec.json" in err and "\n" not in err
