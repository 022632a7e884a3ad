"""The scheduler of `--scheduler asha` without a cluster: Tune's ASHA decisions reported as
they are made, its rungs saved and restored whole, seeded brackets, and the stop hook."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from raynas.controller.cluster.tune import RungScheduler, SearchStopped  # noqa: E402


def trial(i: int):
    return SimpleNamespace(trial_id=f"t{i}", config={"evaluation": f"e{i:06d}"})


def scheduler(events=None, **kw):
    return RungScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3, on_rung=(events.append if events is not None else None), **kw)


def feed(s, trials, values):
    """Each trial reports epochs 1..3 with value v * epoch; the decisions, in order."""
    decisions = []
    for t, v in zip(trials, values):
        s.on_trial_add(None, t)
        for epoch in (1, 2, 3):
            decision = s.on_trial_result(None, t, {"epoch": epoch, "val_acc": v * epoch})
            decisions.append(decision)
            if decision == "STOP":
                break
    return decisions


def test_rung_decisions_are_reported_as_tune_makes_them():
    events = []
    s = scheduler(events)
    assert s.rungs() == [[1, 3, 9]]
    feed(s, [trial(i) for i in range(4)], [0.5, 0.6, 0.1, 0.7])
    at_one = [(e["evaluation"], e["decision"]) for e in events if e["rung"] == 1]
    # The third child arrives below the best two thirds of the first rung: stopped there.
    assert at_one == [("e000000", "continue"), ("e000001", "continue"), ("e000002", "stop"),
                      ("e000003", "continue")]
    first = events[0]
    assert first["cutoff"] is None and first["value"] == 0.5 and first["budget"] == 1


def test_restored_rungs_decide_like_the_rungs_they_were():
    straight, other = scheduler(seed=3), scheduler(seed=3)
    trials = [trial(i) for i in range(6)]
    values = [0.5, 0.6, 0.1, 0.7, 0.55, 0.2]
    feed(straight, trials[:3], values[:3])
    feed(other, trials[:3], values[:3])
    restored = scheduler(seed=0)
    restored.load_state_dict(other.state_dict())
    assert feed(restored, trials[3:], values[3:]) == feed(straight, trials[3:], values[3:])


def test_a_trial_not_kept_stops_at_once_and_a_stop_request_leaves_the_loop():
    s = scheduler(keep=lambda t: t.trial_id != "t1", stop_requested=lambda: True)
    s.on_trial_add(None, trial(1))
    assert s.on_trial_result(None, trial(1), {"epoch": 1, "val_acc": 0.9}) == "STOP"
    with pytest.raises(SearchStopped):
        s.halt_if_asked()
