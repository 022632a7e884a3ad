"""Atomic checkpoint files: a crash leaves either the old file or the new one, whole."""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO, Callable

import torch


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
    atomic_write(path, lambda f: torch.save(obj, f), durable)
