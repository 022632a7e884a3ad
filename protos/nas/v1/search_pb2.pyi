import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_PENDING: _ClassVar[State]
    STATE_RUNNING: _ClassVar[State]
    STATE_SUCCEEDED: _ClassVar[State]
    STATE_FAILED: _ClassVar[State]
    STATE_CANCELLED: _ClassVar[State]
    STATE_INTERRUPTED: _ClassVar[State]
STATE_UNSPECIFIED: State
STATE_PENDING: State
STATE_RUNNING: State
STATE_SUCCEEDED: State
STATE_FAILED: State
STATE_CANCELLED: State
STATE_INTERRUPTED: State

class SearchSpec(_message.Message):
    __slots__ = ("space", "strategy", "evaluator", "dataset", "data_path", "evaluations", "seed", "runtime", "controllers", "children", "ps_shards", "workers", "cpus_per_child", "gpus_per_child", "max_retries", "ps_accumulate", "staleness_policy", "max_staleness", "checkpoint_every", "max_wall_time_s", "space_options", "strategy_options", "replica_batch", "proxy_dataset", "scheduler", "grace_period", "max_budget", "reduction_factor", "brackets", "evaluator_options", "dataset_options")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    EVALUATOR_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CONTROLLERS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    PS_SHARDS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CPUS_PER_CHILD_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_CHILD_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    PS_ACCUMULATE_FIELD_NUMBER: _ClassVar[int]
    STALENESS_POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    SPACE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_BATCH_FIELD_NUMBER: _ClassVar[int]
    PROXY_DATASET_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MAX_BUDGET_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    BRACKETS_FIELD_NUMBER: _ClassVar[int]
    EVALUATOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DATASET_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    space: str
    strategy: str
    evaluator: str
    dataset: str
    data_path: str
    evaluations: int
    seed: int
    runtime: str
    controllers: int
    children: int
    ps_shards: int
    workers: int
    cpus_per_child: float
    gpus_per_child: float
    max_retries: int
    ps_accumulate: int
    staleness_policy: str
    max_staleness: int
    checkpoint_every: int
    max_wall_time_s: float
    space_options: _struct_pb2.Struct
    strategy_options: _struct_pb2.Struct
    replica_batch: str
    proxy_dataset: bool
    scheduler: str
    grace_period: int
    max_budget: int
    reduction_factor: float
    brackets: int
    evaluator_options: _struct_pb2.Struct
    dataset_options: _struct_pb2.Struct
    def __init__(self, space: _Optional[str] = ..., strategy: _Optional[str] = ..., evaluator: _Optional[str] = ..., dataset: _Optional[str] = ..., data_path: _Optional[str] = ..., evaluations: _Optional[int] = ..., seed: _Optional[int] = ..., runtime: _Optional[str] = ..., controllers: _Optional[int] = ..., children: _Optional[int] = ..., ps_shards: _Optional[int] = ..., workers: _Optional[int] = ..., cpus_per_child: _Optional[float] = ..., gpus_per_child: _Optional[float] = ..., max_retries: _Optional[int] = ..., ps_accumulate: _Optional[int] = ..., staleness_policy: _Optional[str] = ..., max_staleness: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., max_wall_time_s: _Optional[float] = ..., space_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., strategy_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., replica_batch: _Optional[str] = ..., proxy_dataset: _Optional[bool] = ..., scheduler: _Optional[str] = ..., grace_period: _Optional[int] = ..., max_budget: _Optional[int] = ..., reduction_factor: _Optional[float] = ..., brackets: _Optional[int] = ..., evaluator_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dataset_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("space", "arch")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    space: str
    arch: str
    def __init__(self, space: _Optional[str] = ..., arch: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "index", "architecture", "reward", "status", "reason", "metrics", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    architecture: Architecture
    reward: float
    status: str
    reason: str
    metrics: _struct_pb2.Struct
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., architecture: _Optional[_Union[Architecture, _Mapping]] = ..., reward: _Optional[float] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Search(_message.Message):
    __slots__ = ("id", "state", "spec", "created_at", "started_at", "finished_at", "run_dir", "ray_namespace", "evaluations_done", "evaluations_failed", "best", "error", "owner", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    RAY_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FAILED_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: State
    spec: SearchSpec
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    run_dir: str
    ray_namespace: str
    evaluations_done: int
    evaluations_failed: int
    best: Evaluation
    error: str
    owner: str
    name: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., spec: _Optional[_Union[SearchSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_dir: _Optional[str] = ..., ray_namespace: _Optional[str] = ..., evaluations_done: _Optional[int] = ..., evaluations_failed: _Optional[int] = ..., best: _Optional[_Union[Evaluation, _Mapping]] = ..., error: _Optional[str] = ..., owner: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SubmitSearchRequest(_message.Message):
    __slots__ = ("spec", "name")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    spec: SearchSpec
    name: str
    def __init__(self, spec: _Optional[_Union[SearchSpec, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class GetSearchRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSearchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ...) -> None: ...

class ListSearchesResponse(_message.Message):
    __slots__ = ("searches", "next_page_token")
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[Search]
    next_page_token: str
    def __init__(self, searches: _Optional[_Iterable[_Union[Search, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchSearchRequest(_message.Message):
    __slots__ = ("id", "skip_evaluations")
    ID_FIELD_NUMBER: _ClassVar[int]
    SKIP_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    skip_evaluations: int
    def __init__(self, id: _Optional[str] = ..., skip_evaluations: _Optional[int] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: State
    error: str
    def __init__(self, state: _Optional[_Union[State, str]] = ..., error: _Optional[str] = ...) -> None: ...

class OneShotEpoch(_message.Message):
    __slots__ = ("run", "epoch", "monitors")
    RUN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    run: int
    epoch: int
    monitors: _struct_pb2.Struct
    def __init__(self, run: _Optional[int] = ..., epoch: _Optional[int] = ..., monitors: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RungDecision(_message.Message):
    __slots__ = ("evaluation", "rung", "budget", "value", "cutoff", "promoted")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    evaluation: str
    rung: float
    budget: int
    value: float
    cutoff: float
    promoted: bool
    def __init__(self, evaluation: _Optional[str] = ..., rung: _Optional[float] = ..., budget: _Optional[int] = ..., value: _Optional[float] = ..., cutoff: _Optional[float] = ..., promoted: _Optional[bool] = ...) -> None: ...

class StrategySignal(_message.Message):
    __slots__ = ("iteration", "signals")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    signals: _struct_pb2.Struct
    def __init__(self, iteration: _Optional[int] = ..., signals: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SearchEvent(_message.Message):
    __slots__ = ("search_id", "time", "state_change", "evaluation", "new_best", "one_shot_epoch", "rung_decision", "strategy_signal")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    NEW_BEST_FIELD_NUMBER: _ClassVar[int]
    ONE_SHOT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RUNG_DECISION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    search_id: str
    time: _timestamp_pb2.Timestamp
    state_change: StateChange
    evaluation: Evaluation
    new_best: Evaluation
    one_shot_epoch: OneShotEpoch
    rung_decision: RungDecision
    strategy_signal: StrategySignal
    def __init__(self, search_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., new_best: _Optional[_Union[Evaluation, _Mapping]] = ..., one_shot_epoch: _Optional[_Union[OneShotEpoch, _Mapping]] = ..., rung_decision: _Optional[_Union[RungDecision, _Mapping]] = ..., strategy_signal: _Optional[_Union[StrategySignal, _Mapping]] = ...) -> None: ...

class CancelSearchRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeSearchRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteSearchRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("search_id", "state", "best", "top_k", "evaluations", "failed", "wall_time_s", "run_dir", "artifacts", "summary")
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    search_id: str
    state: State
    best: Evaluation
    top_k: _containers.RepeatedCompositeFieldContainer[Evaluation]
    evaluations: int
    failed: int
    wall_time_s: float
    run_dir: str
    artifacts: _containers.ScalarMap[str, str]
    summary: _struct_pb2.Struct
    def __init__(self, search_id: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., best: _Optional[_Union[Evaluation, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., evaluations: _Optional[int] = ..., failed: _Optional[int] = ..., wall_time_s: _Optional[float] = ..., run_dir: _Optional[str] = ..., artifacts: _Optional[_Mapping[str, str]] = ..., summary: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
