"""Stand-ins for the job's Ray metrics in tests without a cluster: `record(monkeypatch)` makes every
metric the code reports to (by its key in `metrics._metrics()`) a `Metric` that keeps its values."""

import threading
from collections import defaultdict

from raynas.controller.cluster import metrics


class Metric:
    """A gauge, counter or histogram that keeps what it was given; `wait_for` blocks until its
    values pass a test (the service sets gauges from its own thread)."""

    def __init__(self):
        self.values = []
        self.changed = threading.Condition()

    def set(self, value, tags):
        with self.changed:
            self.values.append((value, tags))
            self.changed.notify_all()

    observe = inc = set

    def last(self, **tags):
        """The last value given with exactly `tags`; None if none was."""
        return next((v for v, t in reversed(self.values) if t == tags), None)

    def wait_for(self, test):
        with self.changed:
            assert self.changed.wait_for(lambda: test(self), timeout=60), self.values


def record(monkeypatch):
    made = defaultdict(Metric)
    monkeypatch.setattr(metrics, "_metrics", lambda: made)
    monkeypatch.setattr(metrics, "_last", {})  # the gauges kept for refreshing: this test's only
    return made
