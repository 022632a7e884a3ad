"""The controller: strategies (the algorithms), runtime (the job), cluster (its Ray wiring),
service and api (the gRPC search service), cli (`nas`) and bench, layered in that order:
a sub-package imports only those before it."""
