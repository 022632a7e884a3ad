"""The dashboard's one-shot gauges get every figure a search reports: accuracy and skips for
image searches, mean IoU for Auto-DeepLab, perplexity for the recurrent cell."""

from __future__ import annotations

from raynas.controller.cluster import metrics


class Gauge:
    def __init__(self):
        self.values = []

    def set(self, value, tags):
        self.values.append((value, tags))


def test_one_shot_reports_reach_their_gauges(monkeypatch):
    gauges = {name: Gauge() for name in metrics.ONE_SHOT_GAUGES.values()}
    monkeypatch.setattr(metrics, "_metrics", lambda: gauges)
    metrics.report_oneshot_epoch("job", 0, {"skip_count": 2, "val_acc": 0.5})
    metrics.report_oneshot_epoch("job", 1, {"val_miou": 0.25, "path": [0, 1]})
    metrics.report_oneshot_epoch("job", 2, {"val_ppl": 120.0, "stage": "train"})
    seen = {name: [(v, t["run"]) for v, t in g.values] for name, g in gauges.items()}
    assert seen == {"skips": [(2, "0")], "supernet_acc": [(0.5, "0")], "supernet_miou": [(0.25, "1")],
                    "supernet_ppl": [(120.0, "2")]}
