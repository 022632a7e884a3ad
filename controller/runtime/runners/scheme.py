"""Zoph & Le's scheme on Ray, for strategies with a shared policy (rl): S parameter shards hold the
policy, K controller replicas sample m children each, a recorder writes the log.

With W >= K x m workers each replica owns m of them (the paper's layout); with fewer, one
dispatcher queues every replica's children for the next free worker. Everything that writes the
run directory (shards, the recorder) lives on this node; replicas and the dispatcher go wherever
Ray places them. Every actor is restartable: a dead shard comes back with every update it
acknowledged, a dead replica pushes its last gradient again, a dead recorder rebuilds itself from
the run directory.
"""

from __future__ import annotations

import json
import sys

from raynas.controller import cluster
from raynas.controller.runtime.capacity import scheme_workers
from raynas.controller.runtime.hosts import DispatcherHost, RecorderHost
from raynas.controller.runtime.ledger import Tail
from raynas.controller.runtime.policy_hosts import ReplicaHost, ShardHost
from raynas.controller.runtime.runners.base import background
from raynas.controller.runtime.runners.ray import RayRunner
from raynas.param_server import ShardConfig, ShardMap

#: Seconds a terminated search gives its cluster to answer before it counts it gone.
GOODBYE_S = 5.0


class SchemeRunner(RayRunner):
    def prepare(self) -> None:
        plan = self.plan
        # The policy's first weights (the shards' start): seconds of torch's first use, while Ray starts.
        self.initial = background(
            lambda: plan.strategy.shared_policy(plan.space, plan.spec.seed, plan.strategy_options).weights())

    def run_on_ray(self) -> bool:
        plan, context = self.plan, self.context
        spec, ns = plan.spec, context.namespace
        count, own = scheme_workers(spec)
        self.start_workers(count, own)
        initial = self.initial.result()
        # The data has been loading since the job started; the shards and the recorder need the run directory.
        context.open()
        checkpoints = context.checkpoints
        map_path = checkpoints / "shard_map.json"
        if context.resume and map_path.exists():
            shard_map = ShardMap.from_dict(json.loads(map_path.read_text()))
        else:
            shard_map = ShardMap.build(initial, spec.ps_shards)
            map_path.write_text(json.dumps(shard_map.to_dict()))
        settings = plan.strategy.scheme(plan.strategy_options)
        config = ShardConfig(lr=settings.lr, accumulate=spec.ps_accumulate,
                             staleness_policy=spec.staleness_policy, max_staleness=spec.max_staleness)
        shards = [
            cluster.start_actor(ShardHost, ns, i, part, config, str(checkpoints / f"ps-{i}.pt"),
                                spec.checkpoint_every, name=f"ps-{i}", namespace=ns, restartable=True, pin_here=True)
            for i, part in enumerate(shard_map.split(initial))
        ]
        self.actors += shards
        tail = Tail.of(count, spec.controllers) if spec.replica_batch == "rolling" else Tail()
        recorder = cluster.start_actor(RecorderHost, ns, str(context.run.path), spec.evaluations, spec.seed,
                                       context.deadline, settings.baseline_decay, str(checkpoints), tail,
                                       name="recorder", namespace=ns, restartable=True, pin_here=True)
        self.actors.append(recorder)
        dispatcher = None
        if own is None:
            dispatcher = cluster.start_actor(DispatcherHost, ns, ns, [f"worker-{w}" for w in range(count)],
                                             spec.max_retries, name="dispatcher", namespace=ns, restartable=True,
                                             max_concurrency=spec.controllers * spec.children + 1, spread=True)
            self.actors.append(dispatcher)
        replicas = [
            cluster.start_actor(ReplicaHost, ns, k, plan, shard_map.to_dict(), ns, spec.ps_shards,
                                None if own is None else [f"worker-{w}" for w in own[k]], spec.max_retries,
                                name=f"controller-{k}", namespace=ns, restartable=True, spread=True)
            for k in range(spec.controllers)
        ]
        self.actors += replicas
        # Every actor starts its process at once and is waited for once (each imports torch: seconds
        # apiece). A shard or recorder that cannot start (a damaged log, a run directory it cannot
        # reach) fails the job here with its constructor's error, before any replica runs; and the
        # replicas start together (one still importing torch would otherwise find the budget spent).
        cluster.call_all([(s, "stats", ()) for s in shards] + [(recorder, "scheme_stats", ())]
                         + [(r, "ready", ()) for r in replicas])
        runs = {cluster.send(r, "run"): k for k, r in enumerate(replicas)}
        self.calls += list(runs)
        seen, interrupted, replica_stats = 0, False, {}
        while runs:
            try:
                if context.stop.is_set():
                    cluster.call(recorder, "stop")
                for future in cluster.wait_any(list(runs), timeout=0.5):
                    replica_stats[f"controller-{runs.pop(future)}"] = cluster.result(future)
                seen = self._show(recorder, seen)
            except KeyboardInterrupt as interrupt:
                if cluster.terminated(interrupt):
                    # Stop now: what is recorded stays, the children in flight run again on resume.
                    context.stop.set()
                    interrupted = True
                    print("\nterminated: stopping without waiting for the children in flight", file=sys.stderr)
                    if not self._still_there(recorder):
                        return True
                    break
                if interrupted:
                    raise
                interrupted = True
                print("\nstopping: replicas finish their current children (Ctrl-C again to abort)", file=sys.stderr)
                context.stop.set()
        self._show(recorder, seen)
        cluster.call_all((s, "checkpoint", ()) for s in shards)
        shard_stats = cluster.call_all((s, "stats", ()) for s in shards)
        gradients = cluster.call(recorder, "scheme_stats")
        extra = context.extra
        # Re-sent by the worker pools, and by the recorder for replicas that died holding children.
        extra["retries"] = sum(st["retries"] for st in replica_stats.values()) + (
            cluster.call(dispatcher, "retries") if dispatcher is not None else 0) + gradients.pop("resent")
        staleness = [x for st in replica_stats.values() for x in st["staleness"]]
        extra["scheme"].update({"controllers": spec.controllers, "children": spec.children,
                                "ps_shards": spec.ps_shards, "ps_accumulate": spec.ps_accumulate,
                                "staleness_policy": spec.staleness_policy,
                                "workers_per_replica": None if own is None else spec.children,
                                "dispatch": "shared" if own is None else "dedicated",
                                "replica_batch": spec.replica_batch})
        extra["parameter_servers"] = shard_stats
        extra["gradients"] = gradients
        extra["replicas"] = {k: {"cycles": v["cycles"], "timings_s": v["timings_s"]}
                             for k, v in replica_stats.items()}
        extra["staleness"] = {
            "pushes": len(staleness),
            "mean": sum(staleness) / len(staleness) if staleness else 0.0,
            "max": max(staleness, default=0),
        }
        return interrupted

    def _still_there(self, recorder) -> bool:
        """Tell the recorder to stop; False when the cluster went down with the signal (every record
        is on disk already: the job ends now with its resume hint, before Ray gives up on its lost
        cluster and kills this process)."""
        try:
            if cluster.reachable(GOODBYE_S):
                cluster.call(recorder, "stop", timeout=GOODBYE_S)
                return True
        except (cluster.ActorLost, cluster.CallTimeout):
            pass
        print("the Ray cluster is gone (it got the signal too): everything recorded is on disk", file=sys.stderr)
        self.cluster_lost = True
        return False

    def _show(self, recorder, seen: int) -> int:
        total, fresh = cluster.call(recorder, "progress", seen)
        for record in fresh:
            self.context.record(record)
        return total
