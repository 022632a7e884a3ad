"""The job runtime: the spec, the job that picks an execution path from what its strategy
needs, the proposer loop, Zoph & Le's replicas and the hosts of the job's actors, the
ledger (budget and durable evaluation log) and the run directory."""
