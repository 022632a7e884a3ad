"""The Ray paths' common ground (joining or starting the cluster, worker actors, tearing it all
down however the search ends), and the proposer path: a strategy without a shared policy
(random, evolution, NAO, one-shot searches, budgeted strategies) proposing into W workers."""

from __future__ import annotations

import sys
from abc import abstractmethod
from typing import Any

from raynas.common import ConfigError
from raynas.controller import cluster
from raynas.controller.cluster import metrics
from raynas.controller.runtime.capacity import check_alone, footprint
from raynas.controller.runtime.loop import PROPOSER
from raynas.controller.runtime.runners.base import Runner


class RayRunner(Runner):
    """Runs `run_on_ray` on the cluster at the job's address (or an embedded one it starts and
    stops), killing every actor it started when the search ends, however it ends."""

    def run(self) -> bool:
        self.actors: list[Any] = []
        self.groups: list[Any] = []
        #: This driver's calls to its actors that may still be in flight when the search ends.
        self.calls: list[Any] = []
        #: Set when the cluster died with the search: its actors and groups are gone with it.
        self.cluster_lost = False
        self.prepare()
        with cluster.session(self.context.address) as started:
            self.check_capacity(started)
            try:
                return self.run_on_ray()
            except KeyboardInterrupt:
                print("\nstopping: the search is checkpointed; resume continues it", file=sys.stderr)
                return True
            finally:
                if not self.cluster_lost:
                    # Ray retries a call whose actor dies under it, and says so at the user ("(raylet)
                    # Task ReplicaHost.run failed ... will be retried") about a stop that was asked for:
                    # our own calls are cancelled first, and the actors that call others (started last)
                    # die before the ones they call.
                    cluster.cancel(self.calls)
                    for actor in reversed(self.actors):
                        cluster.kill(actor)
                    for group in self.groups:
                        cluster.remove_group(group)

    def check_capacity(self, started: bool) -> None:
        """Refuse a search that the cluster we started can never hold whole: a worker that no CPU is
        left for never starts, and its replica then holds its claims for ever (the search, and every
        resume of it, stalls without a word). A cluster we joined may grow (an autoscaler, a node
        that joins): there the search waits, and says what for."""
        try:
            check_alone(footprint(self.plan), cluster.node_totals())
        except ConfigError as exc:
            if started:
                raise
            cluster.phase(f"the search waits for nodes to join: {exc}", "nodes that can hold its workers")

    def prepare(self) -> None:
        """Start what needs no cluster, to run while Ray starts (see `background`)."""

    @abstractmethod
    def run_on_ray(self) -> bool:
        """The search on a connected cluster; True if interrupted."""

    def start_workers(self, count: int, own: list[list[int]] | None = None) -> list[Any]:
        """`count` worker actors (`worker-j`), each building the plan's evaluator; with `own` (each
        replica's worker numbers) every replica's workers in one placement group, packed on one
        node where they fit."""
        spec, ns = self.plan.spec, self.context.namespace
        make = self.plan.evaluator_recipe()
        if own is None:
            workers = cluster.start_workers(make, count, ns, spec.cpus_per_child, spec.gpus_per_child)
        else:
            workers = []
            for mine in own:
                group = cluster.worker_group(len(mine), spec.cpus_per_child, spec.gpus_per_child)
                self.groups += [group] if group is not None else []
                workers += cluster.start_workers(make, len(mine), ns, spec.cpus_per_child, spec.gpus_per_child,
                                                 first=mine[0], group=group)
        self.actors += workers
        self.context.extra["scheme"] = {"workers": count, "cpus_per_child": spec.cpus_per_child,
                                        "gpus_per_child": spec.gpus_per_child, "namespace": ns}
        return workers


class ProposerRunner(RayRunner):
    """One proposer in this process, W worker actors evaluating its proposals as they free up."""

    def run_on_ray(self) -> bool:
        context = self.context
        workers = self.start_workers(self.plan.spec.workers)
        context.open()
        executor = metrics.InFlight(
            cluster.worker_executor(workers, self.plan.spec.max_retries,
                                    on_retry=lambda task, reason: metrics.report_retry(context.namespace),
                                    on_report=context.reporter()),
            context.namespace, PROPOSER)
        context.run_proposer(executor)
        context.extra["retries"] = executor.retries
        return False
