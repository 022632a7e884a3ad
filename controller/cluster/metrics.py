"""Job metrics through `ray.util.metrics`, exported by every Ray node's metrics
agent (Prometheus format; the dashboard's Metrics tab and Grafana read them).

Created lazily inside the process that reports them (driver, actor or the service), and
no-ops outside Ray, so core code can report unconditionally. A process that reports before it
joins Ray (the service, a test) gets them once it has joined.
"""

from __future__ import annotations

import sys
import threading
import time
from functools import cache
from typing import Any

REWARD_BOUNDARIES = [0.1 * i for i in range(1, 10)] + [0.95, 0.99]
TIME_BOUNDARIES = [0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
STALENESS_BOUNDARIES = [0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5]


#: Seconds between two sends of every gauge's last value. Ray's metrics agent drops a gauge series
#: that was not set in its last two report intervals (2 x 10 s by default): a gauge set on rare
#: events (a watcher opening, a rung's cutoff, a one-shot epoch of minutes) would vanish from
#: Prometheus between them, and the dashboard's line with it.
REFRESH_S = 5.0
#: Each gauge series' last value, by (gauge, tags), sent again every REFRESH_S while the process lives.
_last: dict[tuple[str, tuple], tuple[float, dict[str, str]]] = {}
_last_lock = threading.Lock()


def _metrics():
    # A process that has not imported Ray has not joined it either: `--runtime local` never loads it.
    ray = sys.modules.get("ray")
    return _created() if ray is not None and ray.is_initialized() else None


def _set(m, gauge: str, value: float, tags: dict[str, str], keep: bool = True) -> None:
    """Set a gauge series and keep its value to send again (`keep` False: a series that ends here,
    left to age out)."""
    m[gauge].set(value, tags=tags)
    key = (gauge, tuple(sorted(tags.items())))
    with _last_lock:
        if keep:
            _last[key] = (value, tags)
        else:
            _last.pop(key, None)


def refresh(m) -> None:
    """Send every gauge series' last value again."""
    with _last_lock:
        kept = list(_last.items())
    for (gauge, _), (value, tags) in kept:
        m[gauge].set(value, tags=tags)


def _refresher() -> None:
    while True:
        time.sleep(REFRESH_S)
        if sys.modules["ray"].is_initialized():  # not after the process left Ray (ray.shutdown)
            refresh(_created())


@cache
def _created():
    from ray.util import metrics

    threading.Thread(target=_refresher, name="nas-metrics", daemon=True).start()

    job = ("job",)
    return {
        "evaluations": metrics.Counter("nas_evaluations", "Finished evaluations by status", tag_keys=job + ("status",)),
        "reward": metrics.Histogram("nas_reward", "Reward of successful evaluations", REWARD_BOUNDARIES, tag_keys=job),
        "best": metrics.Gauge("nas_best_reward", "Best reward so far", tag_keys=job),
        "child_time": metrics.Histogram("nas_child_time_s", "Wall time of one evaluation (s)", TIME_BOUNDARIES,
                                        tag_keys=job),
        "ps_updates": metrics.Counter("nas_ps_updates", "Updates applied by a parameter shard",
                                      tag_keys=job + ("shard",)),
        "staleness": metrics.Histogram("nas_gradient_staleness", "Versions between pull and push",
                                       STALENESS_BOUNDARIES, tag_keys=job + ("shard",)),
        "queue": metrics.Gauge("nas_queue_length", "Evaluations waiting for a free worker", tag_keys=job),
        "retries": metrics.Counter("nas_worker_retries", "Evaluations re-sent after a worker died", tag_keys=job),
        "skips": metrics.Gauge("nas_oneshot_skip_connections", "Skip-connections in a one-shot run's derived genotype",
                               tag_keys=job + ("run",)),
        "rung_decisions": metrics.Counter("nas_rung_decisions", "ASHA's decisions at each rung: promoted or stopped",
                                          tag_keys=job + ("rung", "decision")),
        "rung_cutoff": metrics.Gauge("nas_rung_cutoff", "The value a child must reach at a rung to be promoted",
                                     tag_keys=job + ("rung",)),
        "supernet_acc": metrics.Gauge("nas_oneshot_val_acc", "A one-shot run's supernet validation accuracy",
                                      tag_keys=job + ("run",)),
        "supernet_miou": metrics.Gauge("nas_oneshot_val_miou", "A segmentation one-shot run's supernet mean IoU",
                                       tag_keys=job + ("run",)),
        "supernet_ppl": metrics.Gauge("nas_oneshot_val_ppl", "A recurrent one-shot run's validation perplexity",
                                      tag_keys=job + ("run",)),
        "signal": metrics.Gauge("nas_strategy_signal", "A strategy's own figure at its latest iteration",
                                tag_keys=job + ("signal",)),
        "in_flight": metrics.Gauge("nas_in_flight_children", "Children handed out for evaluation whose result is "
                                   "not back yet, by the replica (or proposer) that holds them",
                                   tag_keys=job + ("holder",)),
        "shard_version": metrics.Gauge("nas_ps_version", "A parameter shard's version (updates applied)",
                                       tag_keys=job + ("shard",)),
        "watchers": metrics.Gauge("nas_watchers", "WatchSearch streams the service has open on a search",
                                  tag_keys=job),
    }


def report_evaluation(job: str, status: str, reward: float | None, wall_time_s: float | None,
                      best: float | None) -> None:
    m = _metrics()
    if m is None:
        return
    tags = {"job": job}
    m["evaluations"].inc(1, tags={**tags, "status": status})
    if reward is not None:
        m["reward"].observe(reward, tags=tags)
    if best is not None:
        _set(m, "best", best, tags)
    if wall_time_s is not None:
        m["child_time"].observe(wall_time_s, tags=tags)


def report_push(job: str, shard: int, applied: bool, staleness: int, version: int) -> None:
    m = _metrics()
    if m is None:
        return
    tags = {"job": job, "shard": str(shard)}
    m["staleness"].observe(staleness, tags=tags)
    if applied:
        m["ps_updates"].inc(1, tags=tags)
    report_shard_version(job, shard, version)


def report_shard_version(job: str, shard: int, version: int) -> None:
    """A shard's version: set when it starts (a restarted shard, its checkpoint's) and after each push,
    so that shards falling apart (one restored behind the others) show as lines that part."""
    m = _metrics()
    if m is not None:
        _set(m, "shard_version", version, {"job": job, "shard": str(shard)})


def report_queue(job: str, length: int) -> None:
    m = _metrics()
    if m is not None:
        _set(m, "queue", length, {"job": job})


def report_in_flight(job: str, holder: str, count: int) -> None:
    m = _metrics()
    if m is not None:
        _set(m, "in_flight", count, {"job": job, "holder": holder})


class InFlight:
    """An executor whose children in flight show on the dashboard: `holder`'s count (handed out,
    result not back yet: a child comes back to be recorded) after every hand-out and every return.
    Everything else is the executor's own."""

    def __init__(self, executor: Any, job: str, holder: str):
        self.executor, self.job, self.holder = executor, job, holder

    def submit(self, task: Any) -> None:
        self.executor.submit(task)
        report_in_flight(self.job, self.holder, self.executor.in_flight)

    def wait(self, timeout: float | None = None) -> list:
        done = self.executor.wait(timeout)
        report_in_flight(self.job, self.holder, self.executor.in_flight)
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)


def report_watchers(job: str, count: int) -> None:
    """The service's watch streams open on one search (their sum: the service's load)."""
    m = _metrics()
    if m is not None:
        _set(m, "watchers", count, {"job": job}, keep=count > 0)


def report_retry(job: str) -> None:
    m = _metrics()
    if m is not None:
        m["retries"].inc(1, tags={"job": job})


#: A one-shot report's figures and their gauges (image, segmentation and language-model searches).
ONE_SHOT_GAUGES = {"skip_count": "skips", "val_acc": "supernet_acc", "val_miou": "supernet_miou",
                   "val_ppl": "supernet_ppl"}


def report_oneshot_epoch(job: str, run: int, report: dict) -> None:
    """Collapse shows live on the dashboard: skip-connections climbing while accuracy stalls; the
    supernet's mean IoU or perplexity where the search scores by those."""
    m = _metrics()
    if m is None:
        return
    tags = {"job": job, "run": str(run)}
    for key, gauge in ONE_SHOT_GAUGES.items():
        if report.get(key) is not None:
            _set(m, gauge, report[key], tags)


def report_rung(job: str, rung: float, decision: str, cutoff: float | None) -> None:
    """ASHA at work on the dashboard: promotions and stops per rung, and each rung's bar."""
    m = _metrics()
    if m is None:
        return
    tags = {"job": job, "rung": f"{rung:g}"}
    m["rung_decisions"].inc(1, tags={**tags, "decision": "promoted" if decision == "continue" else "stopped"})
    if cutoff is not None:
        _set(m, "rung_cutoff", cutoff, tags)


def report_strategy_signals(job: str, signals: dict) -> None:
    """A strategy's figures of its latest iteration (NAO: predictor error and rank correlation on
    new results, reconstruction accuracy, new proposals), one gauge series per figure."""
    m = _metrics()
    if m is None:
        return
    for name, value in signals.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _set(m, "signal", value, {"job": job, "signal": name})
