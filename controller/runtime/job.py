"""A search job: spec in, run directory and result out.

The runtime picks the execution path from what the strategy declares (never from its
name), and every path submits its evaluations through an `Executor`:
- one proposer with asynchronous dispatch: every strategy in the `local` runtime (one
  process, in-process executor), and on Ray every strategy without a shared policy
  (random, evolution, one-shot searches, budgeted strategies), over W worker actors;
- Zoph & Le's scheme on Ray for strategies with a shared policy (rl): S parameter shards,
  K controller replicas with m children each, a recorder; each replica's executor sends
  its children to the workers;
- with a scheduler (`--scheduler asha`), a Ray Tune experiment: the strategy as Tune's
  searcher, each child a trial, Tune's ASHAScheduler stopping them at rungs
  (controller/runtime/tuning.py).
Ray is an embedded single-node cluster unless an address is given.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.common.files import atomic_save
from raynas.controller import cluster
from raynas.controller.cluster import job_namespace, metrics
from raynas.controller.runtime.hosts import DispatcherHost, RecorderHost, ReplicaHost, ShardHost
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.loop import run_loop, task_from_dict, task_to_dict
from raynas.controller.runtime.progress import Progress
from raynas.controller.runtime.rundir import ONE_SHOT_LOG, RunDirectory, rank, summarize
from raynas.controller.runtime.signals import SignalLog
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.runtime.tuning import run_tune
from raynas.controller.runtime.work import EvaluatorFactory
from raynas.controller.strategies import Strategy
from raynas.param_server import ShardConfig, ShardMap
from raynas.search_spaces import get_space
from raynas.workers.execution import Executor, InProcessExecutor, Task

CHECKPOINTS = "checkpoint"


def assign_workers(controllers: int, children: int, workers: int) -> list[list[int]] | None:
    """Each replica's own workers when there are enough for all (replica k: workers k*m ..
    k*m + m - 1, the paper's layout); None when they must be shared through the dispatcher."""
    if workers < controllers * children:
        return None
    return [list(range(k * children, (k + 1) * children)) for k in range(controllers)]


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
    def resume_from(cls, out: str | Path, **kwargs) -> SearchJob:
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
        strategy, options = spec.strategy_config()
        factory = EvaluatorFactory.for_spec(spec)
        # Built here first so that a bad dataset path or option fails now, in one line, before any file is written.
        evaluator = factory()
        run = RunDirectory(self.out) if self.resume else RunDirectory.create(self.out, spec.to_dict())
        (run.path / CHECKPOINTS).mkdir(exist_ok=True)
        deadline = time.time() + spec.max_wall_time_s if spec.max_wall_time_s else None
        start = time.perf_counter()
        interrupted = False
        try:
            if spec.runtime == "local":
                self._run_proposer(run, InProcessExecutor(evaluator, on_report=self._reporter(run, strategy)),
                                   strategy, options, deadline)
            else:
                interrupted = self._run_on_ray(run, factory, strategy, options, deadline)
        except KeyboardInterrupt:
            interrupted = True
        records = run.evaluations()
        spent = len(records) >= spec.evaluations or (deadline is not None and time.time() >= deadline)
        result = {
            **summarize(records),
            "state": "done" if spent else ("stopped" if interrupted or self._stop.is_set() else "incomplete"),
            "space": spec.space, "strategy": spec.strategy, "evaluator": spec.evaluator,
            "dataset": spec.scoring_dataset(), **self._search_data(strategy),
            "seed": spec.seed, "budget": spec.evaluations, "runtime": spec.runtime,
            "wall_time_s": time.perf_counter() - start, "run_dir": str(run.path), **self.extra,
        }
        run.write_result(result)
        run.write_plot(records)
        return result

    def _search_data(self, strategy: type[Strategy]) -> dict[str, Any]:
        """A one-shot search's own training data beside the scoring data, and whether it was a proxy."""
        if strategy.needs.search is None:
            return {}
        spec = self.spec
        return {"search_dataset": spec.dataset, "proxy_dataset": spec.dataset != spec.scoring_dataset()}

    def _record(self, record: dict) -> None:
        self.progress.update(record)
        self.on_record(record)

    def _reporter(self, run: RunDirectory, strategy: type[Strategy]):
        """Where intermediate reports go: a weight-sharing search's epochs (its collapse
        monitors) to oneshot.jsonl and the dashboard; other evaluations' epochs stay in
        their results' curves. Each (run, stage, epoch) is logged once: a search continued
        from its checkpoint (a resumed job, a task retried on another worker) replays the
        epochs it already reported."""
        if strategy.needs.search is None:
            return None
        job = self.namespace
        run.repair_log(ONE_SHOT_LOG)
        logged = {(r.get("run"), r.get("stage"), r.get("epoch")) for r in run.records(ONE_SHOT_LOG)}

        def report(task: Task, data: dict) -> None:
            index = int(task.id[1:])
            key = (index, data.get("stage"), data.get("epoch"))
            if key in logged:
                return
            logged.add(key)
            run.append({"run": index, **data}, ONE_SHOT_LOG)
            metrics.report_oneshot_epoch(job, index, data)

        return report

    # -- one proposer ------------------------------------------------------------------

    def _run_proposer(self, run: RunDirectory, executor: Executor, strategy_cls: type[Strategy], options: Any,
                      deadline: float | None) -> None:
        spec = self.spec
        space = get_space(spec.space, **spec.space_options)
        strategy = strategy_cls(space, seed=spec.seed, options=options)
        self.ledger = ledger = Ledger(run, spec.evaluations, spec.seed, deadline)
        if self._stop.is_set():
            ledger.stop()
        path = run.path / CHECKPOINTS / "proposer.pt"
        in_flight: list[Task] = []
        if self.resume and path.exists():
            state = torch.load(path, weights_only=False)
            strategy.load_state_dict(state["strategy"])
            in_flight = [task_from_dict(t, space) for t in state["in_flight"]]
        on_record = self._recorder(ledger, lambda: executor.queued)

        signals = SignalLog(run, self.namespace)

        def checkpoint(tasks: list[Task]) -> None:
            signals.update(strategy.signals())
            atomic_save({"strategy": strategy.state_dict(), "in_flight": [task_to_dict(t) for t in tasks]},
                        path, durable=False)

        evals = run.path / CHECKPOINTS / "evaluations"
        evals.mkdir(exist_ok=True)
        try:
            run_loop(strategy, executor, ledger, on_record, checkpoint, in_flight, checkpoints=evals)
        finally:
            executor.close()

    def _recorder(self, ledger: Ledger, queued: Callable[[], int] | None = None) -> Callable[[dict], None]:
        """What happens to each new record: progress, and the dashboard's counts, reward and best."""
        for record in ledger.records:
            self.progress.update(record)
        job = self.namespace
        best = ledger.summary()["best"]

        def on_record(record: dict) -> None:
            nonlocal best
            if record.get("reward") is not None and (best is None or rank(record) > rank(best)):
                best = record
            metrics.report_evaluation(job, record["status"], record.get("reward"),
                                      record["metrics"].get("wall_time_s"), best["reward"] if best else None)
            if queued is not None:
                metrics.report_queue(job, queued())
            self._record(record)

        return on_record

    # -- Ray Tune ----------------------------------------------------------------------

    def _run_tune(self, run: RunDirectory, factory: EvaluatorFactory, strategy_cls: type[Strategy], options: Any,
                  deadline: float | None) -> bool:
        """The strategy as Ray Tune's searcher, Tune's scheduler stopping children at rungs."""
        spec = self.spec
        strategy = strategy_cls(get_space(spec.space, **spec.space_options), seed=spec.seed, options=options)
        self.ledger = ledger = Ledger(run, spec.evaluations, spec.seed, deadline)
        if self._stop.is_set():
            ledger.stop()
        job = self.namespace
        recorder, signals = self._recorder(ledger), SignalLog(run, job)

        def on_record(record: dict) -> None:
            recorder(record)
            signals.update(strategy.signals())

        interrupted, self.extra["scheduler"] = run_tune(
            spec, run, ledger, strategy, factory, job, on_record=on_record,
            on_rung=lambda e: metrics.report_rung(job, e["rung"], e["decision"], e["cutoff"]),
            stop_requested=self._stop.is_set)
        signals.update(strategy.signals())  # the last record is observed after it is logged
        return interrupted

    # -- the Ray runtime -------------------------------------------------------------

    def _run_on_ray(self, run: RunDirectory, factory: EvaluatorFactory, strategy: type[Strategy], options: Any,
                    deadline: float | None) -> bool:
        spec = self.spec
        started_ray = cluster.connect(self.address)
        ns = self.namespace
        actors: list = []
        groups: list = []
        interrupted = False
        try:
            if spec.scheduler != "none":
                return self._run_tune(run, factory, strategy, options, deadline)
            scheme = spec.runs_scheme(strategy)
            # The scheme uses at most K x m workers at once; more would only idle.
            count = min(spec.workers, spec.controllers * spec.children) if scheme else spec.workers
            own = assign_workers(spec.controllers, spec.children, count) if scheme else None
            if own is None:
                actors += cluster.start_workers(factory, count, ns, spec.cpus_per_child, spec.gpus_per_child)
            else:
                # Each replica's m workers in one placement group, packed on one node where they fit.
                for mine in own:
                    group = cluster.worker_group(len(mine), spec.cpus_per_child, spec.gpus_per_child)
                    groups += [group] if group is not None else []
                    actors += cluster.start_workers(factory, len(mine), ns, spec.cpus_per_child, spec.gpus_per_child,
                                                    first=mine[0], group=group)
            workers = list(actors)
            self.extra["scheme"] = {"workers": count, "cpus_per_child": spec.cpus_per_child,
                                    "gpus_per_child": spec.gpus_per_child, "namespace": ns}
            if scheme:
                interrupted = self._run_scheme(run, deadline, actors, strategy, options, own)
            else:
                executor = cluster.worker_executor(workers, spec.max_retries,
                                                   on_retry=lambda task, reason: metrics.report_retry(ns),
                                                   on_report=self._reporter(run, strategy))
                self._run_proposer(run, executor, strategy, options, deadline)
                self.extra["retries"] = executor.retries
        except KeyboardInterrupt:
            interrupted = True
            print("\nstopping: the search is checkpointed; resume continues it", file=sys.stderr)
        finally:
            for a in actors:
                cluster.kill(a)
            for group in groups:
                cluster.remove_group(group)
            if started_ray:
                cluster.shutdown()
        return interrupted

    def _run_scheme(self, run: RunDirectory, deadline: float | None, actors: list, strategy: type[Strategy],
                    options: Any, own: list[list[int]] | None) -> bool:
        """Zoph & Le's scheme: S shards hold the policy, K replicas sample m children each.

        With W >= K x m workers each replica owns m of them (the paper's layout); with fewer,
        one dispatcher queues every replica's children for the next free worker. Everything
        that writes the run directory (shards, the recorder) lives on this node; replicas and
        the dispatcher go wherever Ray places them. Every actor is restartable: a dead shard
        comes back with every update it acknowledged, a dead replica pushes its last gradient
        again, a dead recorder rebuilds itself from the run directory.
        """
        spec = self.spec
        ns = self.namespace
        space = get_space(spec.space, **spec.space_options)
        initial = strategy.shared_policy(space, spec.seed, options).weights()
        checkpoints = run.path / CHECKPOINTS
        map_path = checkpoints / "shard_map.json"
        if self.resume and map_path.exists():
            shard_map = ShardMap.from_dict(json.loads(map_path.read_text()))
        else:
            shard_map = ShardMap.build(initial, spec.ps_shards)
            map_path.write_text(json.dumps(shard_map.to_dict()))
        settings = strategy.scheme(options)
        config = ShardConfig(lr=settings.lr, accumulate=spec.ps_accumulate,
                             staleness_policy=spec.staleness_policy, max_staleness=spec.max_staleness)
        shards = [
            cluster.start_actor(ShardHost, ns, i, part, config, str(checkpoints / f"ps-{i}.pt"),
                                spec.checkpoint_every, name=f"ps-{i}", namespace=ns, restartable=True, pin_here=True)
            for i, part in enumerate(shard_map.split(initial))
        ]
        actors += shards
        recorder = cluster.start_actor(RecorderHost, ns, str(run.path), spec.evaluations, spec.seed, deadline,
                                       settings.baseline_decay, str(checkpoints), name="recorder", namespace=ns,
                                       restartable=True, pin_here=True)
        actors.append(recorder)
        dispatcher = None
        if own is None:
            workers = min(spec.workers, spec.controllers * spec.children)
            dispatcher = cluster.start_actor(DispatcherHost, ns, ns, [f"worker-{w}" for w in range(workers)],
                                             spec.max_retries, name="dispatcher", namespace=ns, restartable=True,
                                             max_concurrency=spec.controllers + 1, spread=True)
            actors.append(dispatcher)
        replicas = [
            cluster.start_actor(ReplicaHost, ns, k, spec.to_dict(), shard_map.to_dict(), ns, spec.ps_shards,
                                None if own is None else [f"worker-{w}" for w in own[k]], spec.max_retries,
                                name=f"controller-{k}", namespace=ns, restartable=True, spread=True)
            for k in range(spec.controllers)
        ]
        actors += replicas
        self.ledger = None
        # Start together: a replica still importing torch would otherwise find the budget spent.
        cluster.call_all((r, "ready", ()) for r in replicas)
        runs = {cluster.send(r, "run"): k for k, r in enumerate(replicas)}
        seen, interrupted, replica_stats = 0, False, {}
        while runs:
            try:
                if self._stop.is_set():
                    cluster.call(recorder, "stop")
                for future in cluster.wait_any(list(runs), timeout=0.5):
                    replica_stats[f"controller-{runs.pop(future)}"] = cluster.result(future)
                seen = self._show(recorder, seen)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                print("\nstopping: replicas finish their current children (Ctrl-C again to abort)", file=sys.stderr)
                self._stop.set()
        self._show(recorder, seen)
        cluster.call_all((s, "checkpoint", ()) for s in shards)
        shard_stats = cluster.call_all((s, "stats", ()) for s in shards)
        gradients = cluster.call(recorder, "scheme_stats")
        # Re-sent by the worker pools, and by the recorder for replicas that died holding children.
        self.extra["retries"] = sum(st["retries"] for st in replica_stats.values()) + (
            cluster.call(dispatcher, "retries") if dispatcher is not None else 0) + gradients.pop("resent")
        staleness = [x for st in replica_stats.values() for x in st["staleness"]]
        self.extra["scheme"].update({"controllers": spec.controllers, "children": spec.children,
                                     "ps_shards": spec.ps_shards, "ps_accumulate": spec.ps_accumulate,
                                     "staleness_policy": spec.staleness_policy,
                                     "workers_per_replica": None if own is None else spec.children,
                                     "dispatch": "shared" if own is None else "dedicated",
                                     "replica_batch": spec.replica_batch})
        self.extra["parameter_servers"] = shard_stats
        self.extra["gradients"] = gradients
        self.extra["replicas"] = {k: {"cycles": v["cycles"], "timings_s": v["timings_s"]}
                                  for k, v in replica_stats.items()}
        self.extra["staleness"] = {
            "pushes": len(staleness),
            "mean": sum(staleness) / len(staleness) if staleness else 0.0,
            "max": max(staleness, default=0),
        }
        return interrupted

    def _show(self, recorder, seen: int) -> int:
        total, fresh = cluster.call(recorder, "progress", seen)
        for record in fresh:
            self._record(record)
        return total


__all__ = ["SearchJob", "job_namespace"]
