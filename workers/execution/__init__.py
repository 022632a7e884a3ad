"""Executors: where evaluations run. `base` holds the interface and the in-process executor;
`ray_pool` the Ray one (imported only by those who run on Ray)."""

from raynas.workers.execution.base import Executor, InProcessExecutor, OnReport, Task

__all__ = ["Executor", "InProcessExecutor", "OnReport", "Task"]
