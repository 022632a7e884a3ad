"""Strategies, the search loop, the job and the CLI."""
