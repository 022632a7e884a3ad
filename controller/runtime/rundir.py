"""The run directory: the durable record of one search.

    spec.json           the validated spec
    evaluations.jsonl   one line per finished evaluation, flushed and fsynced as it lands
    gradients.jsonl     Zoph & Le's scheme: one line per gradient (its number, replica, cycle, evaluations)
    oneshot.jsonl       one-shot strategies: one line per search epoch (collapse monitors)
    rungs.jsonl         --scheduler asha: one line per rung decision (promoted or stopped)
    strategy.jsonl      strategies with signals of their own (NAO): one line per iteration
    result.json         the summary (best, top-k, counts, timing), written atomically
    progress.svg        reward per evaluation, best so far and failures (written by controller/runtime/plot.py)
    events.out.tfevents.*  TensorBoard's view of the logs above (controller/runtime/tensorboard.py)
    lock                who runs the search now (RunLock): one process at a time
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from raynas.common import ConfigError, DataError
from raynas.common.files import json_default, write_json_atomic

SPEC = "spec.json"
EVALUATIONS = "evaluations.jsonl"
GRADIENTS = "gradients.jsonl"
ONE_SHOT_LOG = "oneshot.jsonl"
RUNG_LOG = "rungs.jsonl"
STRATEGY_LOG = "strategy.jsonl"
RESULT = "result.json"
PLOT = "progress.svg"
LOCK = "lock"
#: The logs with a TensorBoard view, and its name (controller/runtime/tensorboard.py, RunBoard).
VIEWS = {EVALUATIONS: "evaluations", ONE_SHOT_LOG: "one_shot_epochs", STRATEGY_LOG: "strategy_rounds",
         RUNG_LOG: "rungs"}


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._board = None

    def __getstate__(self) -> dict[str, Any]:
        # The TensorBoard writer is this process's own open file: another process opens its own.
        return {**self.__dict__, "_board": None}

    @classmethod
    def create(cls, path: str | Path, spec: dict[str, Any]) -> RunDirectory:
        run = cls(path)
        run.check_new()
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_spec(spec)
        (run.path / EVALUATIONS).touch()
        return run

    def check_new(self) -> None:
        """Refuse a directory that already holds a search, as a new search's `out`."""
        if (self.path / EVALUATIONS).exists() or (self.path / RESULT).exists():
            raise ConfigError("out", f"{self.path} already holds a search; choose a new --out directory")

    def append(self, record: dict[str, Any], log: str = EVALUATIONS) -> None:
        """Append one record to a log (by default the evaluations); it is on disk when this returns."""
        self.append_many([record], log)

    def append_many(self, records: list[dict[str, Any]], log: str = EVALUATIONS) -> None:
        """Append records with one write and one fsync: a batch costs one trip to the disk."""
        if not records:
            return
        lines = "".join(json.dumps(r, sort_keys=True, default=json_default) + "\n" for r in records)
        with open(self.path / log, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        if log not in VIEWS:
            return
        if self._board is None:
            # Imported here: readers of a run (nas results, the service) never need its writer.
            from raynas.controller.runtime.tensorboard import RunBoard

            self._board = RunBoard(self.path, self.evaluations, rank)
        self._board.write(VIEWS[log], records)

    def evaluations(self) -> list[dict[str, Any]]:
        """Every whole record of the evaluation log (see `records`)."""
        return self.records(EVALUATIONS)

    def records(self, log: str) -> list[dict[str, Any]]:
        """Every whole record of a log. A torn last line (a crash mid-append) is left out; a
        damaged line before the end is a DataError naming it, never silently the end of the log."""
        records, _ = _read_log(self.path / log)
        return records

    def repair_log(self, log: str = EVALUATIONS) -> int:
        """Cut a torn tail off a log before anything is appended to it, as a write-ahead log
        does on open; returns the bytes cut (0 for a whole log)."""
        path = self.path / log
        _, good = _read_log(path)
        size = path.stat().st_size if path.exists() else 0
        if good < size:
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return size - good

    def check(self) -> int:
        """Read every log through: a damaged line before a log's end is a DataError naming it (a torn
        last line is no damage; it is cut before anything is appended). Returns the evaluations
        logged, which a resumed run counts its own from."""
        evaluations = len(self.records(EVALUATIONS))
        for log in (GRADIENTS, ONE_SHOT_LOG, RUNG_LOG, STRATEGY_LOG):
            self.records(log)
        return evaluations

    def write_spec(self, spec: dict[str, Any]) -> None:
        write_json_atomic(self.path / SPEC, spec)

    def spec(self) -> dict[str, Any]:
        return json.loads((self.path / SPEC).read_text())

    def result(self) -> dict[str, Any]:
        return json.loads((self.path / RESULT).read_text())

    def write_result(self, result: dict[str, Any]) -> None:
        write_json_atomic(self.path / RESULT, result)


class RunLock:
    """The one process that runs the search in a run directory now: a CLI, the search service's
    runner or a Ray Job's driver (two at once each thought itself alone: 548 evaluations logged
    twice, shards applying gradients no log held). An exclusive flock on `DIR/lock`, which the
    kernel releases when its process ends however it ends, so the lock of a holder killed with -9 is
    free to take and no pid is guessed at; the file names the holder for whoever is refused. It is
    never removed: a process that opened it before a removal would lock a file nobody else sees."""

    def __init__(self, path: str | Path):
        self.path = Path(path) / LOCK

    @contextlib.contextmanager
    def held(self, field: str) -> Iterator[None]:
        """Hold the lock for the length of the block; a ConfigError naming `field` and the holder
        when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(field, f"{self.path.parent} is in use by {_describe(_holder(fd))}",
                                  "wait for that search to end, or stop it first") from None
            stale = _holder(fd)
            if stale:
                print(f"{self.path.parent}: took over the lock of {_describe(stale)}, which is no longer running",
                      file=sys.stderr)
            _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                               "command": _command()})
            try:
                yield
            finally:
                _write_holder(fd, {})
        finally:
            os.close(fd)  # releases the flock


def _holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 1 << 16)
    try:
        return json.loads(data) if data.strip() else {}
    except json.JSONDecodeError:
        return {}  # a holder killed while it wrote its name


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
    return f"pid {holder['pid']} on {holder['host']} ({holder['command']}, since {since})"


def _command() -> str:
    """What this process is, for the holder's description: a Ray Job's entrypoint says its job."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {}).get("job_submission_id")
    argv = " ".join(sys.argv)
    if os.path.basename(sys.argv[0]) in ("nas", "__main__.py"):
        argv = "nas " + " ".join(sys.argv[1:])
    return f"Ray Job {job}: {argv}" if job else argv


def _read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a JSON-lines log and the byte length of its whole part."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, good, offset = [], 0, 0
    for number, line in enumerate(lines, 1):
        end = offset + len(line) + 1
        last = all(not rest.strip() for rest in lines[number:])
        if line.strip():
            if end > len(data):  # no newline yet: the append was cut, whatever the line holds
                return records, good
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if not last:
                    raise DataError(f"{path} line {number} is damaged ({exc}); the log cannot be trusted past it: "
                                    "restore it from a backup or start a new search") from None
                return records, good
        good = min(end, len(data))
        offset = end
    return records, good


class LogTail:
    """Reads a JSON-lines file that another process appends to, a whole line at a time.

    Each call returns the records appended since the last one; a line still being
    written (no newline yet) waits for the next call.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def rank(record: dict[str, Any]) -> tuple[float, float]:
    """How successful evaluations compare: the budget reached first, then the reward. A child a
    scheduler stopped after 1 epoch never outranks one trained to the full budget; when every
    evaluation has the same budget (most searches), the reward alone decides."""
    return (record.get("metrics", {}).get("budget") or 0, record["reward"])


def summarize(records: Iterable[dict[str, Any]], top_k: int = 5) -> dict[str, Any]:
    """Best, top-k and counts over evaluation records."""
    records = list(records)
    ok = [r for r in records if r.get("status") == "ok" and r.get("reward") is not None]
    ranked = sorted(ok, key=lambda r: (*(-x for x in rank(r)), r["index"]))
    top = [
        {"id": r["id"], "arch": r["arch"], "reward": r["reward"], "metrics": _headline(r.get("metrics", {}))}
        for r in ranked[:top_k]
    ]
    return {
        "best": top[0] if top else None,
        "top_k": top,
        "evaluations": len(records),
        "failed": len(records) - len(ok),
    }


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics worth repeating in a summary (curves stay in the log)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "traceback"}
