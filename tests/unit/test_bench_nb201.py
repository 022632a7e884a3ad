"""`nas bench nb201` beyond one strategy: several strategies and datasets in one table, the
choice after the first n evaluations, the two ceilings read from the table, and the proposer
loop with W asynchronous workers on a virtual clock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from raynas.common import ConfigError
from raynas.controller.bench.nb201 import (
    SCHEME_MEANS,
    VirtualClockExecutor,
    anytime_figure,
    bench_nb201,
    ceilings,
    compare_nb201,
    format_compare,
    pool_results,
    scoped_options,
    write_plots,
)
from raynas.controller.cli import main
from raynas.search_spaces import get_space
from raynas.search_spaces.nb201 import NB201Arch
from raynas.workers.evaluation import get_evaluator
from raynas.workers.execution import Task


@pytest.mark.parametrize("dataset,optimum,protocol", [("cifar10", 94.37, 94.37), ("cifar100", 73.51, 72.28),
                                                      ("imagenet16", 47.31, 46.48)])
def test_ceilings_are_the_published_ones(dataset, optimum, protocol):
    found = ceilings(dataset)
    assert (round(found["optimum"], 2), round(found["protocol"], 2)) == (optimum, protocol)


def test_virtual_clock_returns_results_in_order_of_simulated_finish():
    space = get_space("nb201")
    evaluator = get_evaluator("table", space)
    executor = VirtualClockExecutor(evaluator, workers=3)
    archs = [NB201Arch((op,) * 6) for op in ("nor_conv_3x3", "none", "nor_conv_1x1")]
    for i, arch in enumerate(archs):
        executor.submit(Task(str(i), arch, 0))
    order = [executor.wait()[0][0].id for _ in archs]
    times = [evaluator.evaluate(a).metrics["simulated_time_s"] for a in archs]
    assert order == [str(i) for i in sorted(range(3), key=times.__getitem__)]
    assert executor.finished_at == sorted(times) and executor.in_flight == 0


def test_async_workers_report_simulated_hours_at_each_count():
    result = bench_nb201("local_search", 24, 2, workers=8, at=[8])
    assert list(result["at"]) == ["8", "24"]
    one = bench_nb201("local_search", 24, 2, at=[8])
    assert "simulated_hours_mean" not in one["at"]["8"]
    assert 0 < result["at"]["8"]["simulated_hours_mean"] < result["at"]["24"]["simulated_hours_mean"]
    assert result["at"]["24"]["mean"] >= result["at"]["8"]["mean"]


def test_at_beyond_the_evaluations_is_refused():
    with pytest.raises(ConfigError, match="at"):
        bench_nb201("random", 10, 1, at=[20])


def test_options_scoped_to_one_strategy():
    options = {"evolution.population_size": 5, "bananas.initial": 3}
    assert scoped_options("evolution", options) == {"population_size": 5}
    with pytest.raises(ConfigError, match="strategy_option"):
        compare_nb201(["random"], ["cifar10"], 10, 1, strategy_options={"rl.lr": 0.1})


def test_compare_in_one_table_from_the_cli(capsys):
    assert main(["bench", "nb201", "--strategy", "random,local_search", "--dataset", "cifar10,cifar100",
                 "--evaluations", "12", "--at", "6", "--seeds", "2", "--strategy-option", "local_search.move=best",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["strategy"]) for r in results] == [
        ("cifar10", "random"), ("cifar10", "local_search"), ("cifar100", "random"), ("cifar100", "local_search")]
    assert results[1]["strategy_options"] == {"move": "best"} and results[0]["strategy_options"] == {}
    assert main(["bench", "nb201", "--strategy", "random,evolution", "--evaluations", "12", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "ceiling: protocol" in out and "evolution" in out


def test_anytime_curve_holds_each_count_choice():
    result = bench_nb201("random", 20, 3, at=[10])
    curve = result["anytime"]
    assert len(curve) == 20
    assert curve[9] == pytest.approx(result["at"]["10"]["mean"])
    assert curve[19] == pytest.approx(result["test_acc_mean"])


def test_pooled_parts_equal_one_run_over_all_their_seeds():
    whole = bench_nb201("evolution", 30, 6, dataset="cifar100", at=[10])
    parts = [bench_nb201("evolution", 30, 3, dataset="cifar100", first_seed=f, at=[10]) for f in (3, 0)]
    [pooled] = pool_results(parts)
    assert (pooled["seeds"], pooled["first_seed"], pooled["seed_ranges"]) == (6, 0, [[0, 3], [3, 6]])
    for n in ("10", "30"):
        assert pooled["at"][n]["mean"] == pytest.approx(whole["at"][n]["mean"])
        assert pooled["at"][n]["std"] == pytest.approx(whole["at"][n]["std"])
    assert pooled["anytime"] == pytest.approx(whole["anytime"]) and pooled["anytime_seeds"] == 6
    # A part from before results carried the curve: the curve is the other part's alone.
    [older] = pool_results([{k: v for k, v in parts[0].items() if not k.startswith("anytime")}, parts[1]])
    assert older["anytime"] == pytest.approx(parts[1]["anytime"]) and older["anytime_seeds"] == 3
    assert older["at"]["30"]["mean"] == pytest.approx(whole["at"]["30"]["mean"])
    drawn = _series(anytime_figure([parts[0] | {"anytime": None}, older]).svg())
    assert [label for label in drawn if label.startswith("evolution")] == ["evolution (3 seeds)"]
    with pytest.raises(ConfigError, match="first_seed"):
        pool_results([parts[0], bench_nb201("evolution", 30, 2, dataset="cifar100", first_seed=4)])


def test_pooled_scheme_parts_report_every_seed_not_the_first_parts():
    """Pooling parts of a simulated scheme kept the first part's utilisation, staleness and
    simulated wall time (its `**parts[0]`): ten parts of one seed each reported seed 0's figures."""
    kwargs = dict(controllers=2, children=2, ps_shards=1, workers=4)
    whole = bench_nb201("rl", 16, 3, **kwargs)
    parts = [bench_nb201("rl", 16, 1, first_seed=f, **kwargs) for f in (0, 1, 2)]
    [pooled] = pool_results(parts)
    for key in SCHEME_MEANS:
        assert pooled[key] == pytest.approx(whole[key]), key
    utilisation = [p["worker_utilization"] for p in parts]
    assert len(set(utilisation)) > 1, "the seeds differ, or the test shows nothing"
    assert (pooled["worker_utilization_min"], pooled["worker_utilization_max"]) == (min(utilisation), max(utilisation))
    assert (whole["worker_utilization_min"], whole["worker_utilization_max"]) == (min(utilisation), max(utilisation))
    # The pooled table (benchmarks/nb201_pool.py) says what ran and what it kept busy.
    table = format_compare([pooled])
    assert "K=2 replicas x m=2 children, S=1 shards, W=4 workers" in table
    assert f"{pooled['worker_utilization']:.1%} ({min(utilisation):.1%} to {max(utilisation):.1%}" in table


def _series(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("data-label"): g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "series"}


def test_anytime_plot_per_dataset_from_the_cli(tmp_path, capsys):
    assert main(["bench", "nb201", "--strategy", "random", "--evaluations", "5", "--seeds", "1",
                 "--plot", str(tmp_path / "anytime.txt")]) != 0
    assert "plot: " in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["bench", "nb201", "--strategy", "random,local_search", "--dataset", "cifar10,imagenet16",
                 "--evaluations", "12", "--seeds", "2", "--plot", str(tmp_path / "anytime.svg")]) == 0
    assert "anytime-imagenet16.svg" in capsys.readouterr().err
    for dataset in ("cifar10", "imagenet16"):
        series = _series((tmp_path / f"anytime-{dataset}.svg").read_text())
        top = ceilings(dataset)
        assert set(series) == {"random (2 seeds)", "local_search (2 seeds)", f"optimum ({top['optimum']:.2f})",
                               f"protocol's ceiling ({top['protocol']:.2f})"}
        line = series["local_search (2 seeds)"].find("{http://www.w3.org/2000/svg}polyline")
        xs = [float(p.split(",")[0]) for p in line.get("points").split()]
        assert xs == sorted(xs) and len(xs) > 1


def test_a_strategy_keeps_its_colour_in_every_dataset_figure(tmp_path):
    results = [bench_nb201("random", 6, 1), bench_nb201("local_search", 6, 1),
               bench_nb201("local_search", 6, 1, dataset="imagenet16")]
    paths = write_plots(results, tmp_path / "a.svg")
    strokes = [{label: g.find("{http://www.w3.org/2000/svg}polyline").get("stroke")
                for label, g in _series(path.read_text()).items() if label.endswith("(1 seed)")} for path in paths]
    assert strokes[0]["local_search (1 seed)"] == strokes[1]["local_search (1 seed)"]
    assert strokes[0]["random (1 seed)"] != strokes[0]["local_search (1 seed)"]


def test_proposer_strategies_are_refused_as_replicas():
    with pytest.raises(ConfigError, match="controllers.*local_search.*allowed"):
        bench_nb201("local_search", 10, 1, controllers=2)


def test_seeds_in_several_processes_give_the_figures_of_one():
    # Spawned processes: each rebuilds the plan and the table, and runs its seeds as this one would.
    kwargs = dict(dataset="cifar100", first_seed=3, at=[6], workers=4)
    one = bench_nb201("evolution", 12, 3, **kwargs)
    several = bench_nb201("evolution", 12, 3, jobs=2, **kwargs)
    assert {k: v for k, v in several.items() if k != "wall_time_s"} == {k: v for k, v in one.items()
                                                                        if k != "wall_time_s"}
    with pytest.raises(ConfigError, match="jobs"):
        bench_nb201("evolution", 12, 3, jobs=0)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_a_stopped_bench_leaves_no_process_of_its_pool_behind(how):
    bench = subprocess.Popen([sys.executable, "-m", "raynas.controller.cli", "bench", "nb201", "--strategy", "bananas",
                              "--evaluations", "300", "--seeds", "4", "--jobs", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The pool's two workers (beside multiprocessing's resource tracker) are searching.
        workers: list[int] = []
        while len(workers) < 2 and bench.poll() is None:
            workers = [c for c in _children(bench.pid)
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
            time.sleep(0.05)
        assert len(workers) == 2, bench.stderr.read()
        bench.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        rc = bench.wait(timeout=120)
        if how == "sigterm":
            assert rc == 130 and bench.stderr.read().strip().endswith("nas bench: interrupted")
        # Ended by the parent's pool, or by the death signal the kernel sends when the parent dies.
        while any(_alive(w) for w in workers):
            time.sleep(0.05)
    finally:
        bench.kill()
        bench.wait()
