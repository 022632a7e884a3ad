"""A run directory's JSON-lines logs as the service reads them: in chunks of bounded size,
each chunk parsed once for every watcher that reads it.

A search's evaluation log may hold a million lines (half a gigabyte). Read whole, one watcher
would cost the head node gigabytes and wait minutes for its first event; so every reader
(the monitor's progress counts, each watcher) reads at most `CHUNK_BYTES` of complete lines at
a time, sends what they hold, and reads on. Watchers of one search read the same chunks (a
chunk starts where the previous one ended, and logs only grow), so the parsed chunks are kept
in a small cache shared by all of them: 200 watchers cost about one parse of the log, not 200.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: The most a reader takes from a log at once (a longer line is read whole: lines are the job's).
CHUNK_BYTES = 16 << 10
#: Parsed chunks kept for the readers behind, counted by their size on disk (parsed, about 5x).
CACHE_BYTES = 2 << 20


class LogChunks:
    """Chunks of append-only JSON-lines logs, keyed by file and start offset."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, cache_bytes: int = CACHE_BYTES):
        self.chunk_bytes = chunk_bytes
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], tuple[int, list[dict[str, Any]]]] = OrderedDict()
        self._cached = 0

    def read(self, path: Path, start: int, *, share: bool = True) -> tuple[int, list[dict[str, Any]]]:
        """The complete lines of `path` from byte `start` on, at most about `chunk_bytes` of them, parsed;
        and the offset after them (`start` when there is no complete line yet). `share`: keep the chunk
        for the readers behind (the monitor reads each log once and does not)."""
        key = (str(path), start)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(self.chunk_bytes)
                while data and b"\n" not in data:  # one line longer than a chunk
                    more = f.read(self.chunk_bytes)
                    if not more:
                        break
                    data += more
        except FileNotFoundError:
            return start, []
        end = data.rfind(b"\n") + 1
        if end == 0:
            return start, []
        chunk = (start + end, [json.loads(line) for line in data[:end].splitlines() if line.strip()])
        if share:
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = chunk
                    self._cached += end
                while self._cached > self.cache_bytes:
                    (_, first), (stop, _) = self._cache.popitem(last=False)
                    self._cached -= stop - first
        return chunk


def size(path: Path) -> int:
    """The file's size in bytes, -1 when it does not exist (yet)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
