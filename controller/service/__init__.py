"""The search service's domain, free of gRPC: the manager (submit, watch, cancel, resume
searches, each a SearchJob in a runner) and its SQLite registry of searches; what a search starts
against what the cluster holds (capacity); the logs read a chunk at a time (logs); the service's
defaults, light enough for the command line to read (limits)."""
