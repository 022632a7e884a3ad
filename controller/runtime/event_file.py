"""TensorBoard's event file format, written with protobuf alone.

tensorboardX, which wrote these files before, imports torch when its package loads (to accept
tensors, which no caller here passes): about a second of CPU in the recorder, an actor that
otherwise never imports torch, paid when it wrote its first record, while the search's first
result waited on it.

The messages are TensorBoard's own (tensorboard/compat/proto/event.proto and summary.proto), cut
to the fields written here, with their names, numbers and oneofs, so that any reader of
TensorBoard's files reads them; they live in a private descriptor pool, apart from any other
library's copies of the same names. The file is a sequence of TFRecord frames: the payload's
length, its masked CRC-32C, the payload, its masked CRC-32C.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_DOUBLE, _FLOAT, _INT64, _STRING, _MESSAGE = (descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
_OPTIONAL, _REPEATED = (descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)

#: (message, [(field, number, type, repeated, message type, oneof)]) as TensorBoard declares them.
_SCHEMA = [
    ("HistogramProto", [("min", 1, _DOUBLE, False, None, None), ("max", 2, _DOUBLE, False, None, None),
                        ("num", 3, _DOUBLE, False, None, None), ("sum", 4, _DOUBLE, False, None, None),
                        ("sum_squares", 5, _DOUBLE, False, None, None),
                        ("bucket_limit", 6, _DOUBLE, True, None, None), ("bucket", 7, _DOUBLE, True, None, None)]),
    ("Summary", [("value", 1, _MESSAGE, True, ".tensorboard.Summary.Value", None)]),
    ("Summary.Value", [("tag", 1, _STRING, False, None, None), ("simple_value", 2, _FLOAT, False, None, "value"),
                       ("histo", 5, _MESSAGE, False, ".tensorboard.HistogramProto", "value")]),
    ("Event", [("wall_time", 1, _DOUBLE, False, None, None), ("step", 2, _INT64, False, None, None),
               ("file_version", 3, _STRING, False, None, "what"),
               ("summary", 5, _MESSAGE, False, ".tensorboard.Summary", "what")]),
]


def _message_classes() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(name="raynas/tensorboard_event.proto", package="tensorboard",
                                              syntax="proto3")
    declared: dict[str, Any] = {}
    for name, fields in _SCHEMA:
        outer, _, inner = name.rpartition(".")
        message = declared[outer].nested_type.add(name=inner) if outer else file.message_type.add(name=name)
        declared[name] = message
        oneofs: list[str] = []
        for field, number, kind, repeated, type_name, oneof in fields:
            f = message.field.add(name=field, number=number, type=kind, label=_REPEATED if repeated else _OPTIONAL)
            if type_name:
                f.type_name = type_name
            if oneof:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    message.oneof_decl.add(name=oneof)
                f.oneof_index = oneofs.index(oneof)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorboard.{name}"))
            for name, _ in _SCHEMA}


_CLASSES = _message_classes()
Event, Summary, HistogramProto = _CLASSES["Event"], _CLASSES["Summary"], _CLASSES["HistogramProto"]


def scalar(tag: str, value: float) -> Any:
    return Summary.Value(tag=tag, simple_value=float(value))


def histogram(tag: str, values: np.ndarray) -> Any:
    """TensorBoard's histogram of `values` (numpy's "auto" bins). TensorBoard reads each bucket as
    ending at its limit, so an empty bucket ending at the lowest edge comes first."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    counts, edges = np.histogram(values, bins="auto")
    histo = HistogramProto(min=float(values.min()), max=float(values.max()), num=float(values.size),
                           sum=float(values.sum()), sum_squares=float(values @ values),
                           bucket_limit=edges.tolist(), bucket=[0.0, *counts.astype(float).tolist()])
    return Summary.Value(tag=tag, histo=histo)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli's polynomial, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated and offset (a CRC of data holding CRCs stays strong)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_files = itertools.count()


class EventFile:
    """One event file, written in the caller's thread (a writer thread of its own may never be
    flushed by an actor that exits). It is named as TensorBoard's writers name theirs, by the
    second and the host, plus the process and a count: two opened in one second (the recorder's,
    the driver's) stay apart, and the zero-padded count sorts the names in the order the files
    were opened (TensorBoard and readers take a directory's files in name order)."""

    def __init__(self, directory: Path):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_files):06d}"
        self.path = Path(directory) / name
        self._file = open(self.path, "ab")
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def flush(self) -> None:
        # To the OS, not to the disk: the view of a log that has just made its own fsync.
        self._file.flush()
