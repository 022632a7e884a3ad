"""Parameter server for the controller policy: shards, their slicing map, optimizer, versions, and what keeps
them across restarts (an update log and snapshots).

Plain PyTorch; the Ray actors that serve `ParameterShard`s are applied at wiring time.
"""

from raynas.param_server.shard import STALENESS_POLICIES, ParameterShard, PushReceipt, ShardConfig
from raynas.param_server.shard_map import ShardMap, check_named_tensors
from raynas.param_server.store import ShardStore

__all__ = ["STALENESS_POLICIES", "ParameterShard", "PushReceipt", "ShardConfig", "ShardMap", "ShardStore",
           "check_named_tensors"]
