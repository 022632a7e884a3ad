"""Searches on a multi-node Ray cluster simulated on this machine (controller/cluster/local_cluster.py):
GPU placement, node loss, waiting for GPUs, a shared image folder, and the GPU timeline of
benchmarks/multinode.py. The scenarios named on the command line run one after the other in one
process and one cluster (a head without CPUs; each scenario adds the worker nodes it needs and
removes them at its end). tests/integration/test_multinode.py checks what they record.

    python -m raynas.controller.bench.multinode SCENARIO[,SCENARIO...] OUT_DIR   # OUT_DIR/SCENARIO.json each
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from raynas.controller import cluster
from raynas.controller.cluster.local_cluster import LocalCluster, actor_placements
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.spec import SearchSpec

T = TypeVar("T")


def table_spec(**changes) -> SearchSpec:
    base = dict(space="nb201", evaluator="table", seed=1, evaluator_options={"sleep": 0.2 / 120})
    return SearchSpec(**{**base, **changes})


def records(out: Path) -> list[dict]:
    path = out / "evaluations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def until(probe: Callable[[], T], timeout: float, every: float, failure: str) -> T:
    """`probe()`'s first true answer, asked every `every` seconds; TimeoutError(`failure`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = probe()
        if answer:
            return answer
        time.sleep(every)
    raise TimeoutError(failure)


def wait_for_a_child_on(node: str, namespace: str, workers: int, timeout: float = 60.0) -> None:
    """Until a child trains on `node`: a node lost between two of its replica's batches would take
    no child with it, and the test would prove nothing about re-sending them."""
    def busy_there() -> bool:
        handles = [h for h in (cluster.find_actor(f"worker-{j}", namespace) for j in range(workers)) if h]
        return any(s["busy"] and s["node"] == node for s in cluster.call_all((h, "state", ()) for h in handles))

    until(busy_there, timeout, 0.01, f"no child trained on node {node} within {timeout:.0f} s")


def wait_for_pending_workers(namespace: str, timeout: float = 120.0) -> list[str]:
    """The job's workers that Ray holds back for want of the resources they ask for (a GPU here),
    once there is one: the search is then waiting, which is what an autoscaler would answer."""
    def pending() -> list[str]:
        try:
            actors = actor_placements(namespace)
        except Exception:  # noqa: BLE001 - the state API answers once the dashboard is up
            return []
        return sorted(n for n, a in actors.items() if n.startswith("worker-") and a["state"] == "PENDING_CREATION")

    return until(pending, timeout, 0.2, f"no worker of {namespace} was waiting for resources within {timeout:.0f} s")


def run_job(spec: SearchSpec, out: Path, during=None) -> dict:
    """Run the search in a thread; `during(job)` runs in this (the main) thread meanwhile, as Ray
    adds nodes only from the main thread. Returns what a test needs."""
    job = SearchJob(spec, out, progress=False)
    done: dict = {}
    placements: dict = {}

    def run():
        try:
            done["result"] = job.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            done["error"] = exc

    def watch():
        # Where the job's actors run, sampled while they live.
        while "result" not in done and "error" not in done:
            try:
                placements.update(actor_placements(job.namespace))
            except Exception:  # noqa: BLE001 - the state API answers once the dashboard is up
                pass
            time.sleep(0.5)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    threading.Thread(target=watch, daemon=True).start()
    if during:
        during(job)
    runner.join()
    if "error" in done:
        raise done["error"]
    return {"result": done["result"], "records": records(out), "placements": placements}


@contextlib.contextmanager
def worker_nodes(c: LocalCluster, *nodes: dict) -> Iterator[list[str]]:
    """Worker nodes of these resources for one scenario, removed at its end (with any it added)."""
    ids = [c.add_node(**resources) for resources in nodes]
    try:
        yield ids
    finally:
        for node in list(c.nodes):
            c.remove_node(node)


def gpu_placement(out: Path, c: LocalCluster) -> dict:
    """Children on GPU nodes only, each seeing its own device; replicas, shards and the recorder
    take no GPU; each replica's workers packed on one node."""
    with worker_nodes(c, {"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 2, "num_gpus": 2}) as gpu_nodes:
        whole = run_job(table_spec(strategy="rl", evaluations=24, controllers=2, children=2, ps_shards=2,
                                   workers=4, cpus_per_child=0.5, gpus_per_child=1), out / "whole")
        # Children that train: on a node whose GPUs are only declared, CUDA shows the assigned
        # device but torch finds no GPU, so the trainer falls back to the CPU.
        half = run_job(SearchSpec(space="nb201", strategy="random", evaluations=8, workers=8, cpus_per_child=0.25,
                                  gpus_per_child=0.5, seed=1,
                                  evaluator_options={"epochs": 1, "channels": 4, "layers": 1},
                                  dataset_options={"max_train": 128}),
                       out / "half")
        return {"head": c.head_id, "gpu_nodes": gpu_nodes, "whole": whole, "half": half}


def node_loss(out: Path, c: LocalCluster) -> dict:
    """A worker node dies mid-search, with the children it ran; a replacement joins (as an autoscaler
    would add one) and the lost children run again there. The head holds no CPU: children run on
    the two worker nodes only, two on each."""
    runs = {}
    for name, spec in (("proposer", table_spec(strategy="evolution", evaluations=40, workers=4, cpus_per_child=0.5,
                                               evaluator_options={"sleep": 0.5 / 120})),
                       ("scheme", table_spec(strategy="rl", evaluations=40, controllers=2, children=2,
                                             ps_shards=2, workers=4, cpus_per_child=0.5,
                                             evaluator_options={"sleep": 0.5 / 120}))):
        with worker_nodes(c, {"num_cpus": 1}, {"num_cpus": 1}) as (doomed, _):
            lost: dict = {"node": doomed}

            def kill_when(job, lost=lost, workers=spec.workers):
                while len(records(job.out)) < 8:
                    time.sleep(0.05)
                wait_for_a_child_on(lost["node"], job.namespace, workers)
                lost["at"], lost["records"] = time.time(), len(records(job.out))
                c.remove_node(lost["node"])
                lost["replacement"] = c.add_node(num_cpus=1)

            runs[name] = {**run_job(spec, out / name, during=kill_when), "lost": lost}
    return {"head": c.head_id, **runs}


def waits_for_gpus(out: Path, c: LocalCluster) -> dict:
    """Only a CPU node yet: the search waits for a GPU (an autoscaler would add one) rather than
    running its children on the CPUs there, then runs when a GPU node joins."""
    seen: dict = {}
    with worker_nodes(c, {"num_cpus": 2}):
        def add_later(job):
            seen["pending"] = wait_for_pending_workers(job.namespace)
            seen["records_before"] = len(records(job.out))
            seen["added"] = c.add_node(num_cpus=2, num_gpus=2)

        run = run_job(table_spec(strategy="random", evaluations=8, workers=2, cpus_per_child=0.5, gpus_per_child=1),
                      out / "run", during=add_later)
        return {**run, **seen}


def gpu_timeline(out: Path, c: LocalCluster) -> dict:
    """K=4 replicas x m=4 children on 2 nodes x 8 declared GPUs, one GPU per child; one node is
    lost mid-search and a replacement joins. What benchmarks/multinode.py plots and times."""
    with worker_nodes(c, {"num_cpus": 4, "num_gpus": 8}, {"num_cpus": 4, "num_gpus": 8}) as (doomed, _):
        lost: dict = {"node": doomed}

        def lose_a_node(job):
            while len(records(job.out)) < 64:
                time.sleep(0.05)
            lost["at"], lost["records"] = time.time(), len(records(job.out))
            c.remove_node(doomed)
            lost["replacement"] = c.add_node(num_cpus=4, num_gpus=8)
            lost["replaced_at"] = time.time()

        run = run_job(table_spec(strategy="rl", evaluations=192, controllers=4, children=4, ps_shards=4, workers=16,
                                 cpus_per_child=0.25, gpus_per_child=1, evaluator_options={"sleep": 1.0 / 120}),
                      out / "run", during=lose_a_node)
        return {**run, "lost": lost, "gpus": 16, "head": c.head_id}


def shared_data(out: Path, c: LocalCluster) -> dict:
    """A search on the image folder `out/data` (the caller writes it) that every node reads at the same
    path (here one file system, as a shared mount gives a real cluster): children on two worker nodes,
    the folder streamed from disk by loader processes inside each worker, every worker checking the
    driver's fingerprint."""
    folder = out / "data"
    with worker_nodes(c, {"num_cpus": 1}, {"num_cpus": 1}) as nodes:
        spec = SearchSpec(space="nb201", strategy="random", evaluations=8, workers=4, cpus_per_child=0.5, seed=2,
                          dataset="image-folder", data_path=str(folder),
                          dataset_options={"stream": "disk", "loader_workers": 1},
                          evaluator_options={"epochs": 1, "channels": 4, "layers": 1})
        return {**run_job(spec, out / "run"), "worker_nodes": nodes}


SCENARIOS = {f.__name__: f for f in (gpu_placement, node_loss, waits_for_gpus, gpu_timeline, shared_data)}


if __name__ == "__main__":
    # To files: Ray copies its processes' logs to this one's stdout.
    names, out = sys.argv[1].split(","), Path(sys.argv[2])
    with LocalCluster({"num_cpus": 0}) as c:
        for name in names:
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / f"{name}.json").write_text(json.dumps(SCENARIOS[name](out / name, c), default=str))
