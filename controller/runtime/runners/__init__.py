"""One small runner per execution path of a search (local, proposer, scheme, tune), each consuming
the resolved plan; controller/runtime/job.py picks one by the plan's path."""
