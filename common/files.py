"""Files a crash cannot tear: atomic replacement (temp file + rename) and durable appends."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Write through `write(file)` into a temp file beside `path`, then rename it over `path`.

    `durable` also fsyncs the file and the directory, so the new file survives
    a power loss; without it the rename still makes the swap atomic for
    process crashes, at a fraction of the cost (per-step checkpoints).
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    # Same directory as the target, so os.replace is a rename within one file system.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        # The rename itself is only durable once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike, durable: bool = True) -> None:
    """torch.save `obj` to `path` atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), durable)


def json_default(value: Any) -> Any:
    """JSON for what `json` cannot write itself: numpy scalars as numbers, anything else as text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json_atomic(path: str | os.PathLike, data: Any, durable: bool = True) -> None:
    """`data` as indented JSON; readers see the old file or the new one, never half of one."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()), durable)
