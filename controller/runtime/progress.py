"""A live progress line for terminal users, and plain lines for logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = 0
        self.failed = 0
        self.best: float | None = None

    def update(self, record: dict) -> None:
        self.done += 1
        reward = record.get("reward")
        if reward is None:
            self.failed += 1
        elif self.best is None or reward > self.best:
            self.best = reward
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        best = "-" if self.best is None else f"{self.best:.4f}"
        last = f"failed ({record.get('reason')})" if reward is None else f"{reward:.4f}"
        width = 28
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {self.done}/{self.total} best {best} last {last} "
            f"{elapsed:.0f}s  {record.get('arch')}"
        )
        if self.live:
            self.stream.write("\r\x1b[2K" + line[:200])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
