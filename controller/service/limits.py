"""The service's defaults: its port and limits. A module of their own, free of the service's code,
so that `nas --help` and the client commands read them without importing the service."""

#: The gRPC port `nas serve` listens on (deploy/ manifests expose the same).
DEFAULT_PORT = 50051
#: Searches pending or running at once.
MAX_JOBS = 4
#: WatchSearch streams open at once; more are answered RESOURCE_EXHAUSTED.
MAX_WATCHERS = 1024
#: Seconds a cancelled search has to reach a safe point before it is force-stopped.
CANCEL_GRACE_S = 30.0
#: Seconds a search on an autoscaling cluster may wait for a node that can place its workers.
PLACEMENT_TIMEOUT_S = 600.0
#: Seconds a search may run (since it started or resumed) before it is stopped: a week.
MAX_SEARCH_TIME_S = 7 * 24 * 3600.0
