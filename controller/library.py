"""The public Python API, re-exported at the top of the package (`raynas.search`, ...):

    import raynas

    result = raynas.search(space="nb201", strategy="evolution", evaluator="table", evaluations=100,
                           runtime="local", out="runs/rea")
    result.best                       # {"id": ..., "arch": ..., "reward": ..., "metrics": {...}}
    raynas.results("runs/rea")        # every evaluation as a row (a dict per evaluation)
    model = raynas.build_model("nb201", result.best["arch"], num_classes=10)

`search` takes a `SearchSpec` or its fields as keywords (the same fields as `nas search`'s flags and
a config file), runs the search in this process (on an embedded Ray unless `runtime="local"` or an
`address` is given) and returns its result; `resume=True` continues a stopped search in `out`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.controller.runtime import results as _results
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.rundir import RunDirectory
from raynas.controller.runtime.spec import TRAIN_SHORTCUTS, SearchSpec, with_shortcuts


@dataclass(frozen=True)
class SearchResult:
    """What a search ended with (result.json), and its run directory."""

    run_dir: Path
    summary: dict[str, Any] = field(repr=False)

    @property
    def state(self) -> str:
        """done, stopped (Ctrl-C, SIGTERM, cancel) or incomplete."""
        return self.summary["state"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best evaluation: id, arch (its canonical string), reward, headline metrics."""
        return self.summary["best"]

    def rows(self) -> list[dict[str, Any]]:
        """Every evaluation as a row (see `results`)."""
        return results(self.run_dir)


def search(spec: SearchSpec | None = None, *, out: str | Path | None = None, resume: bool = False,
           address: str | None = None, progress: bool = False, on_record: Callable[[dict], None] | None = None,
           **fields: Any) -> SearchResult:
    """Run a search and return its result. `spec` or `fields` (SearchSpec's, e.g. space="darts",
    strategy="darts", dataset="image-folder", data_path="/data/flowers", and nas search's training
    shortcuts epochs, batch_size, channels, layers); `out` is its run directory
    (default runs/<space>-<strategy>-<time>); `on_record` hears every evaluation as it is recorded.
    With `resume`, the search in `out` continues from its checkpoints (spec and fields ignored)."""
    if resume:
        if out is None:
            raise TypeError("search(resume=True) needs the run directory to continue: out=...")
        job = SearchJob.resume_from(out, address=address, progress=progress, on_record=on_record)
    else:
        if spec is None:
            shortcuts = {name: fields.pop(name) for name in TRAIN_SHORTCUTS if name in fields}
            options = with_shortcuts(fields.get("evaluator_options"), shortcuts)
            if options is not None:
                fields["evaluator_options"] = options
            spec = SearchSpec.from_dict(fields, source="search")
        out = out or f"runs/{spec.space}-{spec.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        job = SearchJob(spec, out, address=address, progress=progress, on_record=on_record)
    return SearchResult(Path(out), job.run())


def results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every evaluation of a search's run directory as a flat row (id, status, reward, arch and each
    scalar metric), in the order they were recorded; `pandas.DataFrame(rows)` takes them as they are."""
    return _results.rows(run_dir)


def result(run_dir: str | Path) -> SearchResult:
    """The result of a finished (or stopped) search in `run_dir`."""
    return SearchResult(Path(run_dir), RunDirectory(run_dir).result())


def build_model(space: str, arch: Any, **net: Any):
    """The network of `arch` (an architecture string, a published name such as "DARTS_V2", or a
    space's architecture value), freshly initialised. `net` are NetConfig's fields: in_channels,
    num_classes, image_size, channels, layers, auxiliary, drop_path, vocab_size, ... A torch
    `nn.Module`, to train yourself (in a Ray Tune trainable, say) or with `nas train`."""
    from raynas.search_spaces import get_space
    from raynas.workers.nets import NetConfig
    from raynas.workers.nets import build_model as build

    value = get_space(space)
    parsed = value.validate(value.parse(arch) if isinstance(arch, str) else arch)
    return build(space, parsed, NetConfig(**net))


__all__ = ["SearchResult", "SearchSpec", "build_model", "result", "results", "search"]
