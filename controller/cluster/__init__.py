"""The controller's Ray wiring, and its only importer of Ray: joining a cluster, placing,
finding, calling and killing actors, worker pools and their placement groups, and metrics for
the dashboard. Ray is imported when a function needs it, so `--runtime local` never loads it."""

from raynas.controller.cluster.launch import (
                                              ActorLost,
                                              CallTimeout,
                                              Remote,
                                              Terminated,
                                              call,
                                              call_all,
                                              cancel,
                                              connect,
                                              find_actor,
                                              job_namespace,
                                              kill,
                                              phase,
                                              queue_executor,
                                              reachable,
                                              remove_group,
                                              result,
                                              send,
                                              session,
                                              shutdown,
                                              start_actor,
                                              start_workers,
                                              terminated,
                                              wait_any,
                                              worker_executor,
                                              worker_group,
)
from raynas.controller.cluster.resources import node_totals

__all__ = ["ActorLost", "CallTimeout", "Remote", "Terminated", "call", "call_all", "cancel", "connect", "find_actor",
           "job_namespace", "kill", "node_totals", "phase", "queue_executor", "reachable", "remove_group", "result",
           "send", "session", "shutdown", "start_actor", "start_workers", "terminated", "wait_any", "worker_executor",
           "worker_group"]
