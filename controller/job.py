"""A search job: spec in, run directory and result out.

Two runtimes share every piece of logic:
- `ray` (the default): Zoph & Le's scheme on a Ray cluster (an embedded
  single-node one unless an address is given). The `rl` strategy runs as S
  parameter shards and K controller replicas with m children each; the other
  strategies run as one proposer with asynchronous dispatch to the worker pool.
- `local`: one process, one evaluation at a time (tests, quick table runs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from param_server import ShardConfig, ShardMap
from param_server.atomic import atomic_save
from search_spaces import ConfigError, NasError, get_space
from workers.evaluator import EvalResult, Evaluator
from workers.evaluators import get_evaluator
from workers.executor import InProcessExecutor, Task

from .ledger import Ledger
from .loop import run_loop
from .oneshot import ONE_SHOT_STRATEGIES, oneshot_run
from .progress import Progress
from .replica import PolicyCore, distributed_rl_options
from .rundir import ONE_SHOT_LOG, RunDirectory, summarize
from .spec import SearchSpec
from .strategy import get_strategy

CHECKPOINTS = "checkpoint"


def build_evaluator(spec: SearchSpec) -> Evaluator:
    """The spec's evaluator (module-level and picklable: Ray workers call it to build their own)."""
    space = get_space(spec.space, **spec.space_options)
    if spec.evaluator == "table":
        return get_evaluator("table", space, **spec.table)
    train = dict(spec.train)
    if spec.runtime == "ray":
        # A worker's share of the machine: more intra-op threads than reserved CPUs
        # only makes concurrent children fight over cores.
        train.setdefault("num_threads", max(1, int(spec.cpus_per_child)))
    return get_evaluator("train", space, dataset=spec.dataset, data_path=spec.data_path, seed=spec.seed, **train)


class SearchJob:
    def __init__(self, spec: SearchSpec, out: str | Path, *, resume: bool = False, address: str | None = None,
                 progress: bool = True, on_record: Callable[[dict], None] | None = None):
        self.spec = spec.validate()
        self.out = Path(out)
        self.resume = resume
        self.address = address
        self.progress = Progress(spec.evaluations, enabled=progress)
        self.on_record = on_record or (lambda record: None)
        self._stop = threading.Event()
        self.ledger: Ledger | None = None
        self.extra: dict[str, Any] = {}

    @classmethod
    def resume_from(cls, out: str | Path, **kwargs) -> "SearchJob":
        run = RunDirectory(out)
        if not (run.path / "spec.json").exists():
            raise ConfigError("resume", f"{run.path} holds no search (no spec.json) to resume")
        return cls(SearchSpec.from_dict(run.spec()), out, resume=True, **kwargs)

    def stop(self) -> None:
        """Ask the job to stop at the next safe point (a checkpoint is written)."""
        self._stop.set()
        if self.ledger is not None:
            self.ledger.stop()

    @property
    def namespace(self) -> str:
        return job_namespace(self.out)

    # -- the run --------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        spec = self.spec
        # Built here first so that a bad dataset path or option fails now, in one line, before any file is written.
        evaluator = build_evaluator(spec)
        run = RunDirectory(self.out) if self.resume else RunDirectory.create(self.out, spec.to_dict())
        (run.path / CHECKPOINTS).mkdir(exist_ok=True)
        deadline = time.time() + spec.max_wall_time_s if spec.max_wall_time_s else None
        start = time.perf_counter()
        interrupted = False
        try:
            if spec.strategy in ONE_SHOT_STRATEGIES:
                interrupted = self._run_oneshot(run, deadline)
            elif spec.runtime == "local":
                self._run_proposer(run, InProcessExecutor(evaluator), deadline)
            else:
                interrupted = self._run_on_ray(run, deadline)
        except KeyboardInterrupt:
            interrupted = True
        records = run.evaluations()
        spent = len(records) >= spec.evaluations or (deadline is not None and time.time() >= deadline)
        result = {
            **summarize(records),
            "state": "done" if spent else ("stopped" if interrupted or self._stop.is_set() else "incomplete"),
            "space": spec.space, "strategy": spec.strategy, "evaluator": spec.evaluator,
            "dataset": spec.dataset if spec.evaluator == "train" else spec.table.get("dataset", "cifar10"),
            "seed": spec.seed, "budget": spec.evaluations, "runtime": spec.runtime,
            "wall_time_s": time.perf_counter() - start, "run_dir": str(run.path), **self.extra,
        }
        run.write_result(result)
        run.write_plot(records)
        return result

    def _record(self, record: dict) -> None:
        self.progress.update(record)
        self.on_record(record)

    # -- one proposer (random, evolution, single-process rl) -------------------------

    def _run_proposer(self, run: RunDirectory, executor, deadline: float | None) -> None:
        spec = self.spec
        space = get_space(spec.space, **spec.space_options)
        strategy = get_strategy(spec.strategy, space, seed=spec.seed, **spec.strategy_options)
        self.ledger = ledger = Ledger(run, spec.evaluations, spec.seed, deadline)
        if self._stop.is_set():
            ledger.stop()
        path = run.path / CHECKPOINTS / "proposer.pt"
        in_flight: list[Task] = []
        if self.resume and path.exists():
            state = torch.load(path, weights_only=False)
            strategy.load_state_dict(state["strategy"])
            in_flight = [Task(i, space.parse(a), s) for i, a, s in state["in_flight"]]
        for record in ledger.records:
            self.progress.update(record)

        def checkpoint(tasks: list[Task]) -> None:
            atomic_save({"strategy": strategy.state_dict(), "in_flight": [(t.id, str(t.arch), t.seed) for t in tasks]},
                        path, durable=False)

        try:
            run_loop(strategy, executor, ledger, self._record, checkpoint, in_flight)
        finally:
            executor.close()

    # -- one-shot strategies (DARTS, darts2, NoisyDARTS) --------------------------------

    def _run_oneshot(self, run: RunDirectory, deadline: float | None) -> bool:
        """R one-shot runs, each a search then the evaluation of its genotype: in this process one
        after another (local), or as Ray tasks streaming their epochs, W at a time. A run stopped
        midway is not recorded, so a resume repeats it from its start."""
        from . import metrics

        spec = self.spec
        self.ledger = ledger = Ledger(run, spec.evaluations, spec.seed, deadline)
        if self._stop.is_set():
            ledger.stop()
        for record in ledger.records:
            self.progress.update(record)
        claims = ledger.claim("one-shot", spec.evaluations)
        lock = threading.Lock()
        job = self.namespace

        def handle(item: dict) -> None:
            with lock:
                if item["kind"] == "epoch":
                    run.append({k: v for k, v in item.items() if k != "kind"}, ONE_SHOT_LOG)
                    metrics.report_oneshot_epoch(job, item["run"], item.get("skip_count"), item.get("val_acc"))
                    return
                result = EvalResult.from_dict(item["result"])
                claim = next(c for c in claims if c.index == item["run"])
                if ledger.record(claim.task(result.arch), result):
                    best = ledger.summary()["best"]
                    metrics.report_evaluation(job, result.status, result.reward, result.metrics.get("wall_time_s"),
                                              best["reward"] if best else None)
                    self._record(ledger.records[-1])

        if spec.runtime == "local":
            for claim in claims:
                for item in oneshot_run(spec.to_dict(), claim.index, claim.seed):
                    if self._stop.is_set():
                        return True
                    handle(item)
            return False
        import ray
        from concurrent.futures import ThreadPoolExecutor, wait

        started_ray = connect(self.address)
        remote = ray.remote(oneshot_run).options(num_cpus=spec.cpus_per_child, num_gpus=spec.gpus_per_child,
                                                 max_retries=spec.max_retries)
        self.extra["scheme"] = {"workers": spec.workers, "cpus_per_child": spec.cpus_per_child,
                                "gpus_per_child": spec.gpus_per_child, "namespace": job}

        def consume(claim) -> None:
            if self._stop.is_set():
                return
            stream = remote.remote(spec.to_dict(), claim.index, claim.seed)
            for ref in stream:
                if self._stop.is_set():
                    ray.cancel(stream)
                    return
                handle(ray.get(ref))

        interrupted = False
        try:
            with ThreadPoolExecutor(max_workers=spec.workers, thread_name_prefix="one-shot") as pool:
                pending = {pool.submit(consume, c) for c in claims}
                while pending:
                    try:
                        done, pending = wait(pending, timeout=0.5)
                        for f in done:
                            f.result()
                    except KeyboardInterrupt:
                        interrupted = True
                        print("\nstopping: one-shot runs in progress are abandoned (resume repeats them)",
                              file=sys.stderr)
                        self._stop.set()
        finally:
            if started_ray:
                ray.shutdown()
        return interrupted

    # -- the Ray runtime -------------------------------------------------------------

    def _run_on_ray(self, run: RunDirectory, deadline: float | None) -> bool:
        import ray

        from . import cluster
        from workers.ray_pool import RayWorkerPool, start_workers

        spec = self.spec
        started_ray = connect(self.address)
        ns = self.namespace
        actors: list = []
        interrupted = False
        try:
            workers = start_workers(functools.partial(build_evaluator, spec), spec.workers, ns,
                                    spec.cpus_per_child, spec.gpus_per_child)
            actors += workers
            self.extra["scheme"] = {"workers": spec.workers, "cpus_per_child": spec.cpus_per_child,
                                    "gpus_per_child": spec.gpus_per_child, "namespace": ns}
            if spec.strategy != "rl":
                self._run_proposer(run, RayWorkerPool(workers, spec.max_retries), deadline)
                return False
            interrupted = self._run_replicas(run, deadline, actors, cluster)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)
            if started_ray:
                ray.shutdown()
        return interrupted

    def _run_replicas(self, run: RunDirectory, deadline: float | None, actors: list, cluster) -> bool:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = self.spec
        ns = self.namespace
        space = get_space(spec.space, **spec.space_options)
        lr, options = distributed_rl_options(spec.strategy_options)
        initial = PolicyCore(space, seed=spec.seed, **options).weights()
        map_path = run.path / CHECKPOINTS / "shard_map.json"
        if self.resume and map_path.exists():
            shard_map = ShardMap.from_dict(json.loads(map_path.read_text()))
        else:
            shard_map = ShardMap.build(initial, spec.ps_shards)
            map_path.write_text(json.dumps(shard_map.to_dict()))
        config = ShardConfig(lr=lr, accumulate=spec.ps_accumulate,
                             staleness_policy=spec.staleness_policy, max_staleness=spec.max_staleness)
        # Shards, replicas and the recorder write the run directory: they live on this (the
        # driver's) node, where the directory is, not wherever Ray would put a zero-CPU actor.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        restartable = dict(namespace=ns, max_restarts=-1, max_task_retries=-1, num_cpus=0, scheduling_strategy=here)
        shard_actor = ray.remote(cluster.ShardService)
        shards = [
            shard_actor.options(name=f"ps-{i}", **restartable).remote(
                ns, i, part, config, str(run.path / CHECKPOINTS / f"ps-{i}.pt"), spec.checkpoint_every)
            for i, part in enumerate(shard_map.split(initial))
        ]
        actors += shards
        recorder = ray.remote(cluster.LedgerService).options(name="recorder", namespace=ns, num_cpus=0,
                                                                  scheduling_strategy=here).remote(
            ns, str(run.path), spec.evaluations, spec.seed, deadline)
        actors.append(recorder)
        replica_actor = ray.remote(cluster.ReplicaService)
        replicas = [
            replica_actor.options(name=f"controller-{k}", **restartable).remote(
                ns, k, spec.to_dict(), shard_map.to_dict(), ns, spec.ps_shards, spec.workers,
                str(run.path / CHECKPOINTS / f"controller-{k}.pt"), spec.max_retries)
            for k in range(spec.controllers)
        ]
        actors += replicas
        self.ledger = None
        # Start together: a replica still importing torch would otherwise find the budget spent.
        ray.get([r.ready.remote() for r in replicas])
        runs = {r.run.remote(): k for k, r in enumerate(replicas)}
        seen, interrupted, replica_stats = 0, False, {}
        while runs:
            try:
                if self._stop.is_set():
                    ray.get(recorder.stop.remote())
                done, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0.5)
                for ref in done:
                    replica_stats[f"controller-{runs.pop(ref)}"] = ray.get(ref)
                seen = self._show(recorder, seen)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                print("\nstopping: replicas finish their current children (Ctrl-C again to abort)", file=sys.stderr)
                self._stop.set()
        self._show(recorder, seen)
        shard_stats = ray.get([s.stats.remote() for s in shards])
        ray.get([s.checkpoint.remote() for s in shards])
        staleness = [x for st in replica_stats.values() for x in st["staleness"]]
        self.extra["scheme"].update({"controllers": spec.controllers, "children": spec.children,
                                     "ps_shards": spec.ps_shards, "ps_accumulate": spec.ps_accumulate,
                                     "staleness_policy": spec.staleness_policy})
        self.extra["parameter_servers"] = shard_stats
        self.extra["replicas"] = {k: {"cycles": v["cycles"], "timings_s": v["timings_s"]}
                                  for k, v in replica_stats.items()}
        self.extra["staleness"] = {
            "pushes": len(staleness),
            "mean": sum(staleness) / len(staleness) if staleness else 0.0,
            "max": max(staleness, default=0),
        }
        return interrupted

    def _show(self, recorder, seen: int) -> int:
        import ray

        total, fresh = ray.get(recorder.progress.remote(seen))
        for record in fresh:
            self._record(record)
        return total


def job_namespace(out: str | Path) -> str:
    """The Ray namespace of a run directory's actors: readable on the dashboard, unique per directory."""
    out = Path(out)
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return f"nas-{out.name}-{digest}"


def connect(address: str | None) -> bool:
    """Join the cluster at `address`, or start an embedded single-node one. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    try:
        context = ray.init(address=address, logging_level="warning", log_to_driver=False,
                           configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r}: {exc}",
                          "auto, ray://HOST:PORT, or none for an embedded cluster") from None
    url = getattr(context, "dashboard_url", None)
    print(f"Ray dashboard: http://{url}" if url else "Ray dashboard: not running (install ray[default])",
          file=sys.stderr)
    return address is None


__all__ = ["NasError", "SearchJob", "build_evaluator", "connect", "job_namespace"]
