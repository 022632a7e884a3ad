"""What keeps a parameter shard across its process's death: an append-only log of the gradients it
accepted, and snapshots of its whole state now and then.

A push used to rewrite the shard's whole checkpoint (weights, Adam's moments, counters) before it
was answered: 71 % of a push's time, Adam 3 %. Now a push appends its gradient slice to the log
(a few kilobytes, no fsync but every `fsync_every` entries) and a snapshot is written by a thread
of its own every `snapshot_every` updates, off the push path. A shard that comes back loads the
last snapshot and replays the log after it: every gradient is named (replica, cycle) and the shard
skips those it holds, so replaying is idempotent, and Adam on the CPU repeats the very same steps.
The log is cut into segments at each snapshot; a segment goes once a durable snapshot covers it.

Log entries are framed (lengths and a CRC), so a crash mid-append leaves a torn last entry, which is
cut on open; damage before the end is a DataError naming the file and the offset.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raynas.common import DataError
from raynas.common.files import atomic_save
from raynas.param_server.shard import ParameterShard, ShardConfig

_FRAME = struct.Struct("<III")  # header length, body length, CRC-32 of both
#: Updates between snapshots: what a restarted shard replays at most.
SNAPSHOT_EVERY = 100


class ShardStore:
    """The files of one shard: `path` (the snapshot, e.g. checkpoint/ps-3.pt) and its log segments
    beside it (ps-3.<segment>.log)."""

    def __init__(self, path: str | os.PathLike, fsync_every: int, snapshot_every: int = SNAPSHOT_EVERY):
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.snapshot_every = snapshot_every
        self._segment = 0
        self._log = None
        self._unsynced = 0
        self._since_snapshot = 0
        self._writer: threading.Thread | None = None

    def open(self, make: Callable[[], ParameterShard]) -> ParameterShard:
        """The shard as it was: its last snapshot (`make()` for a new one) with the log replayed."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink()  # a snapshot whose write was killed: the one before it stands
        if self.path.exists():
            state = torch.load(self.path, weights_only=True)
            shard = ParameterShard(state["shard_id"], state["params"], ShardConfig(**state["config"]))
            shard.load_state_dict(state)
            self._segment = state.get("log_segment", 0)
        else:
            shard = make()
        for segment in self._segments():
            if segment < self._segment:
                segment_path = self._segment_path(segment)
                segment_path.unlink()  # covered by the snapshot, whose write ended before this was removed
                continue
            for entry in self._read(self._segment_path(segment)):
                if not shard.has(entry["replica"], entry["cycle"]):
                    shard.push(entry["gradients"], entry["staleness"], entry["replica"], entry["cycle"])
            self._segment = segment
        self._log = open(self._segment_path(self._segment), "ab")
        if not self.path.exists():
            self.snapshot(shard, wait=True)
        return shard

    def append(self, gradients: Mapping[str, Any], staleness: int, replica: str | int, cycle: int,
               shard: ParameterShard) -> None:
        """Log one accepted push (on disk for the OS before the push is answered), and start a
        snapshot every `snapshot_every` of them."""
        arrays = {name: np.ascontiguousarray(np.asarray(g)) for name, g in sorted(gradients.items())}
        header = json.dumps({"replica": replica, "cycle": cycle, "staleness": staleness,
                             "tensors": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}).encode()
        body = b"".join(a.tobytes() for a in arrays.values())
        self._log.write(_FRAME.pack(len(header), len(body), zlib.crc32(header + body)) + header + body)
        self._log.flush()
        self._unsynced += 1
        if self._unsynced >= self.fsync_every:
            # A power cut, unlike a crash, may cost the last `fsync_every` updates of this shard.
            os.fsync(self._log.fileno())
            self._unsynced = 0
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            self.snapshot(shard)

    def snapshot(self, shard: ParameterShard, wait: bool = False) -> None:
        """Write the shard's state (taken now) in a thread, then drop the log segments it covers;
        the log goes on in a new segment. `wait`: return once it is durable."""
        self._join()
        self._since_snapshot = 0
        if self._log is not None:
            os.fsync(self._log.fileno())
            self._log.close()
        self._segment += 1
        self._log = open(self._segment_path(self._segment), "ab")
        state = {**shard.state_dict(), "log_segment": self._segment}
        self._writer = threading.Thread(target=self._write, args=(state,), name=f"snapshot-{self.path.name}",
                                        daemon=True)
        self._writer.start()
        if wait:
            self._join()

    def close(self) -> None:
        self._join()
        if self._log is not None:
            os.fsync(self._log.fileno())
            self._log.close()
            self._log = None

    def _write(self, state: dict[str, Any]) -> None:
        atomic_save(state, self.path, durable=True)
        for segment in self._segments():
            if segment < state["log_segment"]:
                self._segment_path(segment).unlink(missing_ok=True)

    def _join(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _segment_path(self, segment: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.{segment}.log")

    def _segments(self) -> list[int]:
        found = []
        for p in self.path.parent.glob(f"{self.path.stem}.*.log"):
            number = p.name[len(self.path.stem) + 1:-len(".log")]
            if number.isdigit():
                found.append(int(number))
        return sorted(found)

    def _read(self, path: Path) -> list[dict[str, Any]]:
        """The whole entries of a log segment; a torn last one is cut off the file."""
        data = path.read_bytes()
        entries, offset = [], 0
        while offset < len(data):
            end = offset + _FRAME.size
            if end > len(data):
                break
            header_len, body_len, crc = _FRAME.unpack_from(data, offset)
            stop = end + header_len + body_len
            if stop > len(data):
                break
            blob = data[end:stop]
            if zlib.crc32(blob) != crc:
                if stop == len(data):
                    break
                raise DataError(f"{path} is damaged at byte {offset} (its checksum does not match); the shard "
                                "cannot be rebuilt past it: restore the run directory from a backup")
            header = json.loads(blob[:header_len])
            body, grads = blob[header_len:], {}
            for name, dtype, shape in header["tensors"]:
                size = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
                grads[name] = torch.from_numpy(np.frombuffer(body[:size], dtype=dtype).reshape(shape).copy())
                body = body[size:]
            entries.append({**header, "gradients": grads})
            offset = stop
        if offset < len(data):
            with open(path, "r+b") as f:
                f.truncate(offset)
        return entries
