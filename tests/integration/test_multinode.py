"""Searches on a multi-node cluster simulated on this machine (ray.cluster_utils: several
raylets, each declaring its own CPUs and GPUs): GPU placement, node loss, the run directory's
writers on the driver's node, waiting for GPUs that are not there yet, and a shared image folder.
The scenarios run one after the other in one process of their own with one cluster
(controller/bench/multinode.py), beside the tests' shared Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

# The four scenarios in one fixture: beyond the per-test limit under a loaded machine.
pytestmark = pytest.mark.timeout(900)

SCENARIOS = ("gpu_placement", "node_loss", "waits_for_gpus", "shared_data")


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    import datafiles

    out = tmp_path_factory.mktemp("multinode")
    datafiles.image_folder(out / "shared_data" / "data", 120, 30)
    done = subprocess.run([sys.executable, "-m", "raynas.controller.bench.multinode", ",".join(SCENARIOS), str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def scenario(name: str, out: Path) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def by_gpu(records: list[dict]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    spans = defaultdict(list)
    for r in records:
        m = r["metrics"]
        for gpu in m["gpu_ids"]:
            # A small margin: a child's span is measured inside its process, start to end.
            spans[(m["node"], gpu)].append((m["started_at"] + 0.01, m["started_at"] + m["wall_time_s"] - 0.01))
    return spans


def exactly_once(records: list[dict], budget: int) -> None:
    assert sorted(r["id"] for r in records) == [f"e{i:06d}" for i in range(budget)]


def test_children_run_on_gpu_nodes_each_seeing_only_its_own_device(scenarios):
    d = scenario("gpu_placement", scenarios)
    gpu_nodes = set(d["gpu_nodes"])
    whole, half = d["whole"], d["half"]
    for run, per_gpu, budget in ((whole, 1, 24), (half, 2, 8)):
        exactly_once(run["records"], budget)
        assert run["result"]["state"] == "done" and run["result"]["failed"] == 0
        for r in run["records"]:
            m = r["metrics"]
            assert m["node"] in gpu_nodes, "a child ran on the head, which has no GPU"
            assert len(m["gpu_ids"]) == 1 and m["cuda_visible_devices"] == m["gpu_ids"][0]
            if run is half:
                assert m["device"] == "cpu"  # CUDA shows the device, torch finds no GPU: the CPU
        # --gpus-per-child 1: one child per GPU at a time; 0.5: two.
        assert max(most_at_once(spans) for spans in by_gpu(run["records"]).values()) <= per_gpu
    placements = whole["placements"]
    for name in ("recorder", "ps-0", "ps-1"):
        assert placements[name]["node"] == d["head"], f"{name} writes the run directory: it belongs on the head"
    for name in ("recorder", "ps-0", "ps-1", "controller-0", "controller-1"):
        assert placements[name]["resources"].get("GPU", 0) == 0
    # The paper's layout, packed: each replica's two children on one node, so a lost node takes out
    # whole replicas' batches rather than part of every replica's.
    nodes = defaultdict(set)
    for r in whole["records"]:
        nodes[r["replica"]].add(r["metrics"]["node"])
    assert all(len(n) == 1 for n in nodes.values()) and len(set().union(*nodes.values())) == 2


@pytest.mark.parametrize("run", ["proposer", "scheme"])
def test_a_lost_worker_node_loses_nothing(run, scenarios):
    d = scenario("node_loss", scenarios)
    r = d[run]
    exactly_once(r["records"], 40)
    assert r["result"]["state"] == "done" and r["result"]["failed"] == 0
    assert r["result"]["retries"] >= 1, "the lost node's children were not re-sent"
    assert r["lost"]["records"] < 40
    if run == "scheme":
        assert r["result"]["gradients"]["lost"] == 0
        for name in ("recorder", "ps-0", "ps-1"):
            assert r["placements"][name]["node"] == d["head"]


def test_a_search_waits_for_gpus_that_are_not_there_yet(scenarios):
    d = scenario("waits_for_gpus", scenarios)
    assert d["pending"], "the node was added before the search asked for a GPU"
    assert d["records_before"] == 0, "children ran before any node had a GPU"
    exactly_once(d["records"], 8)
    assert {r["metrics"]["node"] for r in d["records"]} == {d["added"]}


def test_every_node_reads_the_shared_image_folder(scenarios):
    run = scenario("shared_data", scenarios)
    exactly_once(run["records"], 8)
    assert run["result"]["state"] == "done" and run["result"]["failed"] == 0
    assert run["result"]["dataset"] == "image-folder"
    nodes = {r["metrics"]["node"] for r in run["records"]}
    assert len(nodes) == 2 and nodes <= set(run["worker_nodes"]), "children ran on both worker nodes"
