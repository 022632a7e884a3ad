"""Parameter server: the shard map balances and round-trips, shards reproduce torch's Adam
exactly (sharded or not), accumulation and staleness policies do what they say, and
a shard comes back from its snapshot and update log exactly."""

import pickle
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from raynas.common import ConfigError, DataError
from raynas.controller.runtime.policy_hosts import ShardHost
from raynas.param_server import ParameterShard, ShardConfig, ShardMap, ShardStore


def named_shapes():
    return {
        "lstm.weight_ih": (64, 16), "lstm.weight_hh": (64, 16), "lstm.bias": (64,),
        "embed": (10, 16), "head.0.weight": (5, 16), "head.0.bias": (5,),
        "head.1.weight": (7, 16), "head.1.bias": (7,), "anchor": (16, 16), "scale": (),
    }


def policy():
    """A small stand-in for the controller: an LSTM with a few softmax heads."""
    torch.manual_seed(0)
    return nn.ModuleDict({"lstm": nn.LSTM(8, 16, num_layers=2), "embed": nn.Embedding(9, 8),
                          "heads": nn.ModuleList([nn.Linear(16, k) for k in (5, 7, 3)])})


def random_grads(shapes, generator):
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def single_shard(config=None, seed=0):
    weights = random_grads({"w": (3, 4), "b": (4,)}, torch.Generator().manual_seed(seed))
    return ParameterShard(0, weights, config or ShardConfig())


def adam_reference(weights, config):
    params = {name: t.detach().clone() for name, t in weights.items()}
    return params, torch.optim.Adam(list(params.values()), lr=config.lr, betas=config.betas, eps=config.eps)


def reference_step(params, optimizer, grads):
    for name, p in params.items():
        p.grad = grads[name].clone()
    optimizer.step()


def assert_same(a, b):
    """Recursive exact equality over dicts, lists, tensors and plain values."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# -- shard map ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 7])
def test_map_covers_every_name_once_and_balances(num_shards):
    shapes = named_shapes()
    smap = ShardMap.build(shapes, num_shards)
    placed = [name for s in range(num_shards) for name in smap.names(s)]
    assert sorted(placed) == sorted(shapes)
    assert all(smap.names(smap.shard_of(name)).count(name) == 1 for name in shapes)
    loads = smap.loads()
    assert sum(loads) == sum(torch.Size(s).numel() for s in shapes.values())
    assert max(loads) - min(loads) <= max(torch.Size(s).numel() for s in shapes.values())


def test_map_is_independent_of_dict_order_and_accepts_tensors():
    shapes = named_shapes()
    items = list(shapes.items())
    random.Random(1).shuffle(items)
    tensors = {name: torch.zeros(shape) for name, shape in reversed(items)}
    assert ShardMap.build(dict(items), 3) == ShardMap.build(shapes, 3) == ShardMap.build(tensors, 3)


def test_map_ties_are_broken_by_name_then_shard():
    smap = ShardMap.build({"b": (2,), "a": (2,), "c": (2,)}, 2)
    assert smap.to_dict()["assignment"] == {"a": 0, "b": 1, "c": 0}


def test_split_merge_round_trip_and_dict_round_trip():
    model = policy()
    named = dict(model.named_parameters())
    smap = ShardMap.build(named, 3)
    parts = smap.split(named)
    assert [sorted(p) for p in parts] == [smap.names(s) for s in range(3)]
    merged = smap.merge(parts)
    assert set(merged) == set(named) and all(merged[n] is named[n] for n in named)
    assert ShardMap.from_dict(smap.to_dict()) == smap


def test_more_shards_than_tensors_leaves_empty_shards_that_still_work():
    smap = ShardMap.build({"a": (3,), "b": (2,)}, 4)
    assert [len(smap.names(s)) for s in range(4)] == [1, 1, 0, 0]
    parts = smap.split({"a": torch.ones(3), "b": torch.ones(2)})
    assert parts[2] == {} and parts[3] == {}
    empty = ParameterShard(3, parts[3])
    version, weights = empty.pull()
    assert weights == {}
    assert empty.push({}, 0, replica=0, cycle=0).outcome == "applied"
    assert smap.merge([ParameterShard(s, p).pull()[1] for s, p in enumerate(parts)]).keys() == {"a", "b"}


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, None])
def test_bad_shard_count_names_ps_shards(bad):
    with pytest.raises(ConfigError, match=r"^ps_shards:"):
        ShardMap.build(named_shapes(), bad)


def test_split_and_merge_reject_mismatched_tensors():
    smap = ShardMap.build({"a": (3,), "b": (2,)}, 2)
    with pytest.raises(ConfigError, match="unexpected parameter 'c'"):
        smap.split({"a": torch.ones(3), "b": torch.ones(2), "c": torch.ones(1)})
    with pytest.raises(ConfigError, match="missing parameter 'b'"):
        smap.split({"a": torch.ones(3)})
    with pytest.raises(ConfigError, match="merge|parts"):
        smap.merge([{"a": torch.ones(3)}])
    with pytest.raises(ConfigError, match=r"parts\[0\]\['a'\].*shape \(2,\)"):
        smap.merge([{"a": torch.ones(2)}, {"b": torch.ones(2)}])


# -- Adam equivalence --------------------------------------------------------------------------

def test_single_shard_matches_torch_adam_step_for_step():
    config = ShardConfig(lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    shard = single_shard(config)
    params, optimizer = adam_reference(shard.pull()[1], config)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 8):
        grads = random_grads({"w": (3, 4), "b": (4,)}, gen)
        receipt = shard.push(grads, 0, replica="r0", cycle=step)
        reference_step(params, optimizer, grads)
        assert (receipt.outcome, receipt.version, receipt.staleness) == ("applied", step, 0)
        assert_same(shard.pull()[1], params)


def test_policy_over_three_shards_equals_unsharded_adam():
    config = ShardConfig()
    model = policy()
    named = {name: p.detach() for name, p in model.named_parameters()}
    smap = ShardMap.build(named, 3)
    shards = [ParameterShard(s, part, config) for s, part in enumerate(smap.split(named))]
    params, optimizer = adam_reference(named, config)
    gen = torch.Generator().manual_seed(2)
    for cycle in range(5):
        grads = random_grads(smap.shapes, gen)
        for shard, part in zip(shards, smap.split(grads)):
            shard.push(part, 0, replica=1, cycle=cycle)
        reference_step(params, optimizer, grads)
    assert_same(smap.merge([shard.pull()[1] for shard in shards]), dict(sorted(params.items())))
    assert [shard.version for shard in shards] == [5, 5, 5]


# -- accumulation and staleness ----------------------------------------------------------------

def test_accumulate_applies_once_per_n_pushes_with_the_mean_gradient():
    config = ShardConfig(accumulate=3)
    shard = single_shard(config)
    params, optimizer = adam_reference(shard.pull()[1], config)
    gen = torch.Generator().manual_seed(3)
    for round_ in range(2):
        before = shard.pull()[1]
        grads = [random_grads(shard.shapes, gen) for _ in range(3)]
        outcomes = [shard.push(g, 0, replica=i, cycle=round_).outcome for i, g in enumerate(grads[:2])]
        assert outcomes == ["accumulated", "accumulated"]
        assert_same(shard.pull(), (round_, before))
        assert shard.push(grads[2], 0, replica=2, cycle=round_).outcome == "applied"
        reference_step(params, optimizer, {n: (grads[0][n] + grads[1][n] + grads[2][n]) / 3 for n in params})
        assert shard.version == round_ + 1
        assert_same(shard.pull()[1], params)
    assert shard.stats()["pending"] == 0


def test_drop_policy_discards_updates_staler_than_the_bound():
    shard = single_shard(ShardConfig(staleness_policy="drop", max_staleness=1))
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    assert shard.push(grads, 0, "a", 0).outcome == "applied"
    assert shard.push(grads, 1, "b", 0).staleness == 1 and shard.version == 2
    before = shard.pull()
    receipt = shard.push(grads, 2, "c", 0)
    assert (receipt.outcome, receipt.staleness, receipt.version) == ("dropped", 2, 2)
    assert_same(shard.pull(), before)
    stats = shard.stats()
    assert (stats["pushes"], stats["applied"], stats["dropped"]) == (3, 2, 1)
    assert stats["staleness"] == {"count": 3, "mean": 1.0, "max": 2, "histogram": {0: 1, 1: 1, 2: 1}}
    assert stats["pushes_by_replica"] == {"a": 1, "b": 1, "c": 1}


def test_scale_policy_divides_the_step_by_one_plus_staleness():
    """The learning rate of the step is scaled, so Adam's normalisation cannot undo it."""
    config = ShardConfig(staleness_policy="scale")
    shard = single_shard(config)
    params, optimizer = adam_reference(shard.pull()[1], config)
    gen = torch.Generator().manual_seed(4)
    for cycle, staleness in enumerate([0, 1, 2, 0, 3]):
        grads = random_grads(shard.shapes, gen)
        assert shard.push(grads, staleness, replica=0, cycle=cycle).staleness == staleness
        optimizer.param_groups[0]["lr"] = config.lr / (1 + staleness)
        reference_step(params, optimizer, grads)
        assert_same(shard.pull()[1], params)


def test_scale_survives_adam_where_scaling_the_gradient_would_not():
    """A stream of gradients all 99 updates stale: scaling the gradient by 1/100 leaves Adam's
    steps as they were; scaling the step moves the weights 100 times less."""
    fresh, stale = single_shard(ShardConfig()), single_shard(ShardConfig(staleness_policy="scale"))
    start = fresh.pull()[1]
    gen = torch.Generator().manual_seed(8)
    for cycle in range(20):
        grads = random_grads(fresh.shapes, gen)
        fresh.push(grads, 0, 0, cycle)
        stale.push(grads, 99, 0, cycle)
    for name, w in start.items():
        moved_fresh = (fresh.pull()[1][name] - w).abs().sum()
        moved_stale = (stale.pull()[1][name] - w).abs().sum()
        torch.testing.assert_close(moved_stale * 100, moved_fresh, rtol=1e-2, atol=1e-6)


def test_scale_policy_with_a_bound_also_drops():
    shard = single_shard(ShardConfig(staleness_policy="scale", max_staleness=0))
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    shard.push(grads, 0, 0, 0)
    assert shard.push(grads, 1, 0, 1).outcome == "dropped"


def test_a_gradient_is_applied_at_most_once():
    """Ray retries a push to a restarted shard and a restarted replica re-pushes its last
    gradient: (replica, cycle) names a gradient, and a second push of it changes nothing."""
    shard = single_shard(ShardConfig())
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    assert shard.push(grads, 0, "r0", 0).outcome == "applied"
    after = shard.pull()
    again = shard.push(grads, 0, "r0", 0)
    assert (again.outcome, again.version) == ("duplicate", 1)
    assert_same(shard.pull(), after)
    assert shard.push(grads, 0, "r1", 0).outcome == "applied"  # another replica's cycle 0 is another gradient
    stats = shard.stats()
    assert (stats["pushes"], stats["applied"], stats["duplicates"]) == (2, 2, 1)


# -- validation --------------------------------------------------------------------------------

def test_bad_gradients_raise_naming_the_parameter():
    shard = single_shard()
    good = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    with pytest.raises(ConfigError, match=r"^gradients: unexpected parameter 'x'"):
        shard.push({**good, "x": torch.ones(1)}, 0, 0, 0)
    with pytest.raises(ConfigError, match=r"^gradients: missing parameter 'b'"):
        shard.push({"w": good["w"]}, 0, 0, 0)
    with pytest.raises(ConfigError, match=r"^gradients\['w'\]: shape \(4, 3\) does not match .*\(3, 4\)"):
        shard.push({**good, "w": torch.ones(4, 3)}, 0, 0, 0)
    with pytest.raises(ConfigError, match=r"^gradients\['b'\]: contains NaN"):
        shard.push({**good, "b": torch.full((4,), float("nan"))}, 0, 0, 0)
    with pytest.raises(ConfigError, match=r"^staleness:"):
        shard.push(good, -1, 0, 0)
    with pytest.raises(ConfigError, match=r"^cycle:"):
        shard.push(good, 0, 0, -1)
    assert shard.stats()["pushes"] == 0 and shard.version == 0


@pytest.mark.parametrize("field, kwargs", [
    ("lr", {"lr": 0}), ("lr", {"lr": float("nan")}), ("betas", {"betas": (0.9,)}),
    ("betas", {"betas": (0.9, 1.0)}), ("eps", {"eps": -1e-8}), ("accumulate", {"accumulate": 0}),
    ("accumulate", {"accumulate": 2.0}), ("staleness_policy", {"staleness_policy": "ssp"}),
    ("max_staleness", {"staleness_policy": "drop"}), ("max_staleness", {"max_staleness": 3}),
    ("max_staleness", {"staleness_policy": "scale", "max_staleness": -1}),
])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ConfigError, match=rf"^{field}:") as info:
        ShardConfig(**kwargs)
    if field == "staleness_policy":
        assert "none, drop, scale" in str(info.value)


# -- checkpoints -------------------------------------------------------------------------------

def busy_shard():
    """A shard mid-flight: several updates, Adam moments, a pending gradient, stale pushes."""
    shard = single_shard(ShardConfig(accumulate=2, staleness_policy="scale", max_staleness=5))
    gen = torch.Generator().manual_seed(5)
    for i in range(7):
        shard.push(random_grads(shard.shapes, gen), i % 3, replica=f"r{i % 2}", cycle=i)
    assert shard.stats()["pending"] == 1 and shard.version == 3
    return shard


def store_with(shard, path, pushes=0, fsync_every=10, snapshot_every=100, seed=6):
    """`shard` kept in a store at `path` (a snapshot now), then `pushes` more pushes logged."""
    store = ShardStore(path, fsync_every, snapshot_every)
    kept = store.open(lambda: shard)
    gen = torch.Generator().manual_seed(seed)
    for i in range(pushes):
        grads = random_grads(kept.shapes, gen)
        kept.push(grads, i % 2, replica="r0", cycle=10 + i)
        store.append(grads, i % 2, "r0", 10 + i, kept)
    return store, kept


def test_a_shard_comes_back_from_its_snapshot_and_log_with_identical_state_and_future(tmp_path):
    path = tmp_path / "ps-0.pt"
    # Snapshots every 3 updates: the 7 pushes span three log segments.
    store, shard = store_with(busy_shard(), path, pushes=7, snapshot_every=3)
    store._join()  # the last snapshot is written; then the process dies (no close)
    restored = ShardStore(path, 10).open(lambda: pytest.fail("the snapshot exists"))
    assert restored.config == shard.config
    assert_same(restored.state_dict(), shard.state_dict())
    assert restored.stats() == shard.stats()  # the replay counted no duplicates
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for i in range(5):
        a = shard.push(random_grads(shard.shapes, gen_a), i % 2, replica="r0", cycle=30 + i)
        b = restored.push(random_grads(restored.shapes, gen_b), i % 2, replica="r0", cycle=30 + i)
        assert a == b
    assert_same(restored.state_dict(), shard.state_dict())


def test_a_push_writes_a_log_entry_not_a_checkpoint(tmp_path):
    """A push used to rewrite the whole checkpoint before it was answered (71 % of its time)."""
    path = tmp_path / "ps-0.pt"
    store, shard = store_with(busy_shard(), path, pushes=5)
    assert shard.version > busy_shard().version
    assert torch.load(path, weights_only=True)["version"] == busy_shard().version  # the snapshot at open
    assert [p.name for p in tmp_path.glob("ps-0.*.log")] == ["ps-0.1.log"] and (tmp_path / "ps-0.1.log").stat().st_size
    store.close()


def test_a_torn_last_log_entry_is_cut_and_damage_before_it_named(tmp_path):
    path = tmp_path / "ps-0.pt"
    store, shard = store_with(busy_shard(), path, pushes=3)
    store.close()
    log = tmp_path / "ps-0.1.log"
    whole = log.read_bytes()
    log.write_bytes(whole + whole[:40])  # the process died mid-append
    back = ShardStore(path, 10).open(lambda: None)
    assert back.version == shard.version and log.stat().st_size == len(whole)
    damaged = bytearray(whole)
    damaged[20] ^= 0xFF
    log.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="ps-0.1.log is damaged at byte 0"):
        ShardStore(path, 10).open(lambda: None)


def test_a_snapshot_write_killed_midway_leaves_no_file_behind(tmp_path):
    """A kill during a shard's checkpoint write left its temporary file behind for good."""
    path = tmp_path / "ps-0.pt"
    initial = {"w": torch.zeros(3, 4), "b": torch.zeros(4)}
    ShardHost("job", 0, initial, ShardConfig(), str(path), 10)
    (tmp_path / ".ps-0.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
    ShardHost("job", 0, initial, ShardConfig(), str(path), 10)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_state_dict_is_a_snapshot():
    shard = busy_shard()
    state = shard.state_dict()
    shard.push({"w": torch.ones(3, 4), "b": torch.ones(4)}, 0, replica=0, cycle=20)
    other = single_shard(shard.config, seed=9)
    other.load_state_dict(state)
    assert other.version == 3 and other.stats()["pending"] == 1


def test_load_keeps_the_shards_own_hyperparameters():
    shard = busy_shard()
    before = shard.pull()[1]
    faster = single_shard(ShardConfig(lr=6e-2, accumulate=2, staleness_policy="scale", max_staleness=5))
    faster.load_state_dict(shard.state_dict())
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    for s in (shard, faster):
        assert s.push(grads, 0, replica=0, cycle=20).outcome == "applied"
    for name, w in before.items():
        # Adam's step is proportional to lr; atol covers float32 rounding of the slow, small step.
        fast_step, slow_step = faster.pull()[1][name] - w, shard.pull()[1][name] - w
        torch.testing.assert_close(fast_step, slow_step * 100, rtol=1e-3, atol=1e-4)


def test_load_rejects_another_shards_checkpoint():
    state = busy_shard().state_dict()
    with pytest.raises(ConfigError, match=r"^shard_id:"):
        ParameterShard(1, state["params"]).load_state_dict(state)


def test_shards_and_maps_pickle_for_ray():
    shard = busy_shard()
    copy = pickle.loads(pickle.dumps(shard))
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    assert copy.push(grads, 0, "r", 0) == shard.push(grads, 0, "r", 0)
    assert_same(copy.state_dict(), shard.state_dict())
    smap = ShardMap.build(named_shapes(), 3)
    assert pickle.loads(pickle.dumps(smap)) == smap


def test_a_new_shard_starts_without_building_its_optimizer(tmp_path):
    """Every torch optimizer imports torch._dynamo when built (about 1 CPU-s): at a job's start,
    when every actor starts on the same cores, each shard's ready was that much later, and with
    it the first child. A shard builds Adam at its first update."""
    code = ("import sys, torch; from raynas.controller.runtime.policy_hosts import ShardHost; "
            "from raynas.param_server import ShardConfig; "
            f"ShardHost('job', 0, {{'w': torch.zeros(3, 4)}}, ShardConfig(), {str(tmp_path / 'ps-0.pt')!r}, 10); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_shard_snapshotted_before_its_first_update_steps_as_one_never_restarted(tmp_path):
    path = tmp_path / "ps-0.pt"
    initial = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), "b": torch.zeros(4)}
    fresh = ParameterShard(0, initial, ShardConfig(lr=0.1))
    ShardStore(path, 10).open(lambda: ParameterShard(0, initial, ShardConfig(lr=0.1))).push(
        {"w": torch.ones(3, 4), "b": torch.ones(4)}, 0, "r", 0)  # applied, never logged: the snapshot stands
    restored = ShardStore(path, 10).open(lambda: pytest.fail("the snapshot exists"))
    assert restored.version == 0
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i in range(3):
        fresh.push(random_grads(fresh.shapes, gen_a), 0, "r", i)
        restored.push(random_grads(restored.shapes, gen_b), 0, "r", i)
    assert_same(restored.state_dict(), fresh.state_dict())
