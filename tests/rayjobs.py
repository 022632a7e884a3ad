"""Submitting a Ray Job from tests."""

import time


def submit(client, entrypoint: str, patience_s: float = 120.0) -> str:
    """`client.submit_job`, retried while the cluster's job agent is not registered yet: a fresh
    cluster's agent answers a moment after the dashboard does (longer when the cores are busy)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)
