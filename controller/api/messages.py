"""Plain data to and from `nas.v1` messages: specs, searches, results and watch events. Shared by
the servicer and the client, and light to import (protobuf, no grpc server, no search code), so
that the client commands start fast."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from raynas.common import ConfigError
from raynas.controller.runtime.rundir import EVALUATIONS, PLOT, RESULT, SPEC
from raynas.controller.service.registry import SearchRecord
from raynas.protos.nas.v1 import search_pb2 as pb

_STRUCT_FIELDS = tuple(f.name for f in pb.SearchSpec.DESCRIPTOR.fields if f.message_type is not None)

STATE_TO_PB = {name: pb.State.Value(f"STATE_{name.upper()}") for name in
               ("pending", "running", "succeeded", "failed", "cancelled", "interrupted")}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def integral(value: Any) -> Any:
    """JSON (and Struct) has one number type; options such as num_layers=8 must stay ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        # Through JSON first: numpy scalars and tuples become plain values; a diverged
        # child's NaN loss becomes null, which every JSON client can read.
        s.update(_finite(json.loads(json.dumps(data, default=str))))
    return s


def _from_value(value: struct_pb2.Value, field: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            # Struct carries NaN and infinities, JSON cannot: refuse them by name.
            raise ConfigError(field, f"must be a finite number, got {number}")
        return int(number) if number.is_integer() else number
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, field)
    if kind == "list_value":
        return [_from_value(v, f"{field}[{i}]") for i, v in enumerate(value.list_value.values)]
    return {"string_value": value.string_value, "bool_value": value.bool_value}.get(kind)


def struct_to_dict(s: struct_pb2.Struct, field: str = "struct") -> dict[str, Any]:
    """A Struct as plain data, integral numbers as ints; a NaN or infinity is a ConfigError
    naming `field.<key>`."""
    return {key: _from_value(value, f"{field}.{key}") for key, value in s.fields.items()}


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def spec_to_message(spec: dict[str, Any]) -> pb.SearchSpec:
    msg = pb.SearchSpec()
    for name, value in spec.items():
        if name in _STRUCT_FIELDS:
            getattr(msg, name).CopyFrom(_struct(value))
        elif value is not None:
            setattr(msg, name, value)
    return msg


def spec_from_message(msg: pb.SearchSpec) -> dict[str, Any]:
    """Only the fields the client set: the rest take SearchSpec's defaults."""
    data: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None:
            if msg.HasField(f.name):
                data[f.name] = struct_to_dict(getattr(msg, f.name), f.name)
        elif msg.HasField(f.name):
            data[f.name] = getattr(msg, f.name)
    return data


def evaluation_to_message(record: dict[str, Any], space: str) -> pb.Evaluation:
    msg = pb.Evaluation(id=record["id"], index=record["index"],
                        architecture=pb.Architecture(space=space, arch=record["arch"]),
                        status=record.get("status", "ok"), reason=record.get("reason") or "",
                        metrics=_struct(record.get("metrics")))
    reward = record.get("reward")
    if reward is not None and not math.isnan(reward):
        msg.reward = reward
    if record.get("finished_at") is not None:
        msg.finished_at.CopyFrom(_time(record["finished_at"]))
    return msg


def search_to_message(record: SearchRecord, with_spec: bool = True) -> pb.Search:
    msg = pb.Search(id=record.id, state=STATE_TO_PB[record.state], run_dir=record.run_dir,
                    ray_namespace=record.ray_namespace, evaluations_done=record.evaluations_done,
                    evaluations_failed=record.evaluations_failed, error=record.error, owner=record.owner,
                    name=record.name)
    if with_spec:
        msg.spec.CopyFrom(spec_to_message(record.spec))
    for name in ("created_at", "started_at", "finished_at"):
        if getattr(record, name) is not None:
            getattr(msg, name).CopyFrom(_time(getattr(record, name)))
    if record.best:
        msg.best.CopyFrom(evaluation_to_message(record.best, record.spec.get("space", "")))
    return msg


def result_to_message(record: SearchRecord) -> pb.SearchResult:
    result, space, run = record.result, record.spec.get("space", ""), Path(record.run_dir)
    top = [evaluation_to_message({**t, "index": int(t["id"][1:])}, space) for t in result.get("top_k", [])]
    msg = pb.SearchResult(
        search_id=record.id, state=STATE_TO_PB[record.state], top_k=top, evaluations=result["evaluations"],
        failed=result["failed"], wall_time_s=result.get("wall_time_s", 0.0), run_dir=record.run_dir,
        artifacts={"result": str(run / RESULT), "evaluations": str(run / EVALUATIONS), "spec": str(run / SPEC),
                   "plot": str(run / PLOT), "checkpoints": str(run / "checkpoint")},
        summary=_struct(result))
    if top:
        msg.best.CopyFrom(top[0])
    return msg


def event_to_message(search_id: str, event: dict[str, Any], space: str,
                     evaluation: Callable[[dict[str, Any], str], pb.Evaluation] = evaluation_to_message
                     ) -> pb.SearchEvent:
    msg = pb.SearchEvent(search_id=search_id)
    msg.time.GetCurrentTime()
    kind = event["kind"]
    if kind == "state":
        msg.state_change.CopyFrom(pb.StateChange(state=STATE_TO_PB[event["state"]], error=event["error"]))
    elif kind in ("evaluation", "new_best"):
        getattr(msg, kind).CopyFrom(evaluation(event["record"], space))
    elif kind == "rung":
        decision = pb.RungDecision(evaluation=event["evaluation"] or "", rung=event["rung"], budget=event["budget"],
                                   value=event["value"], promoted=event["decision"] == "continue")
        if event.get("cutoff") is not None:
            decision.cutoff = event["cutoff"]
        msg.rung_decision.CopyFrom(decision)
    elif kind == "strategy_signal":
        signals = {k: v for k, v in event.items() if k not in ("kind", "iteration")}
        msg.strategy_signal.CopyFrom(pb.StrategySignal(iteration=event.get("iteration", 0), signals=_struct(signals)))
    else:
        monitors = {k: v for k, v in event.items() if k not in ("kind", "run", "epoch")}
        msg.one_shot_epoch.CopyFrom(pb.OneShotEpoch(run=event.get("run", 0), epoch=event.get("epoch", 0),
                                                    monitors=_struct(monitors)))
    return msg


def message_to_dict(message) -> dict[str, Any]:
    """A reply as plain data, with the .proto's field names."""
    return integral(json_format.MessageToDict(message, preserving_proto_field_name=True))
