"""A strategy written in this file alone runs through `nas search` (in this process and on
Ray) and `nas bench nb201`, with no edit anywhere else: what docs/architecture.md's
"Adding a strategy" promises. A second toy proposes budgets and promotes the best
architecture, continuing its evaluation from the checkpoint (multi-fidelity)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from raynas.common import check_int
from raynas.controller.cli import main
from raynas.controller.strategies import _REGISTRY, Needs, Proposal, Strategy, register


@dataclass(frozen=True)
class SweepOptions:
    stride: int = 1

    def __post_init__(self):
        check_int("stride", self.stride)


class Sweep(Strategy):
    """Walks the space's samples in seed order, keeping only every `stride`-th one."""

    name = "toy-sweep"
    Options = SweepOptions

    def propose(self, n=1):
        out = []
        for _ in range(n):
            for _ in range(self.options.stride):
                arch = self.space.sample(self.rng)
            out.append(arch)
        return out

    def observe(self, arch, result):
        pass


class Promote(Strategy):
    """Three architectures at the table's 12 epochs, then the best of them continued to 200."""

    name = "toy-promote"
    needs = Needs(budgets=True)

    def __init__(self, space, seed=0, options=None):
        super().__init__(space, seed, options)
        self.done: list[tuple[str, object, float]] = []
        self.proposed = 0

    def propose(self, n=1):
        out = []
        for _ in range(n):
            self.proposed += 1
            if self.proposed <= 3 or not self.done:
                out.append(Proposal(self.space.sample(self.rng), budget=12))
            else:
                eid, arch, _ = max(self.done, key=lambda d: d[2])
                out.append(Proposal(arch, budget=200, resume=eid))
        return out

    def observe(self, arch, result):
        if result.ok and result.metrics["budget"] == 12:
            self.done.append((f"e{len(self.done):06d}", arch, result.reward))


@pytest.fixture(autouse=True)
def toys():
    register(Sweep)
    register(Promote)
    yield
    _REGISTRY.pop(Sweep.name)
    _REGISTRY.pop(Promote.name)


def search(tmp_path, capsys, *extra):
    out = tmp_path / "run"
    code = main(["search", "--evaluator", "table", "--strategy", "toy-sweep", "--strategy-option", "stride=2",
                 "--evaluations", "6", "--out", str(out), "--quiet", "--json", *extra])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["state"] == "done" and result["evaluations"] == 6 and result["strategy"] == "toy-sweep"
    return [json.loads(line)["arch"] for line in (out / "evaluations.jsonl").read_text().splitlines()]


def test_a_toy_strategy_runs_in_this_process_and_on_ray(tmp_path, capsys, ray_cluster):
    local = search(tmp_path / "local", capsys, "--runtime", "local")
    on_ray = search(tmp_path / "ray", capsys, "--runtime", "ray", "--workers", "2", "--cpus-per-child", "0.5")
    # The same seed proposes the same architectures wherever they are evaluated.
    assert sorted(local) == sorted(on_ray) and len(set(local)) == 6


def test_a_toy_strategy_runs_in_the_benchmark(capsys):
    assert main(["bench", "nb201", "--strategy", "toy-sweep", "--evaluations", "10", "--seeds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "toy-sweep" and result["seeds"] == 2 and 80 < result["test_acc_mean"] < 95


def test_a_budgeted_toy_continues_its_best_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--evaluator", "table", "--strategy", "toy-promote", "--evaluations", "4", "--runtime",
                 "local", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    first, promoted = records[:3], records[3]
    best = max(first, key=lambda r: r["reward"])
    assert promoted["arch"] == best["arch"] and promoted["metrics"]["budget"] == 200
    assert promoted["metrics"]["continued_from_epoch"] == 12 and promoted["checkpoint"] == best["checkpoint"]
    # Charged only the 188 epochs it added: 188/12 of the 12-epoch evaluation's simulated time.
    assert promoted["metrics"]["simulated_time_s"] == pytest.approx(best["metrics"]["simulated_time_s"] * 188 / 12)
