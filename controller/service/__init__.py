"""The search service's domain, free of gRPC: the manager (submit, watch, cancel, resume
searches, each a SearchJob in a runner) and its SQLite registry of searches."""
