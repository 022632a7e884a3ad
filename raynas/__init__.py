"""raynas: distributed, asynchronous neural architecture search on PyTorch and Ray.

The Python API (controller/library.py):

    import raynas
    result = raynas.search(space="nb201", strategy="evolution", evaluator="table", evaluations=100,
                           runtime="local")
    raynas.results(result.run_dir)                 # the evaluations, a dict per row
    raynas.build_model("nb201", result.best["arch"])

Plug-ins: `raynas.register_strategy`, `raynas.register_evaluator`, `raynas.register_dataset`,
`raynas.register_space`, with the interfaces `raynas.Strategy`, `raynas.Evaluator`,
`raynas.Dataset`, `raynas.SearchSpace`.

Its packages live in the repository's top-level folders and install under this root:
`raynas.common`, `raynas.search_spaces`, `raynas.param_server`, `raynas.workers`,
`raynas.controller` and `raynas.protos` (docs/architecture.md says what each owns). The names
above are imported when first used, so `import raynas` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> (module, attribute).
_EXPORTS = {
    "search": ("raynas.controller.library", "search"),
    "results": ("raynas.controller.library", "results"),
    "result": ("raynas.controller.library", "result"),
    "build_model": ("raynas.controller.library", "build_model"),
    "SearchResult": ("raynas.controller.library", "SearchResult"),
    "SearchSpec": ("raynas.controller.runtime.spec", "SearchSpec"),
    "Strategy": ("raynas.controller.strategies", "Strategy"),
    "register_strategy": ("raynas.controller.strategies", "register"),
    "Evaluator": ("raynas.workers.evaluation", "Evaluator"),
    "register_evaluator": ("raynas.workers.evaluation", "register_evaluator"),
    "Dataset": ("raynas.workers.datasets", "Dataset"),
    "register_dataset": ("raynas.workers.datasets", "register_dataset"),
    "get_dataset": ("raynas.workers.datasets", "get_dataset"),
    "SearchSpace": ("raynas.search_spaces", "SearchSpace"),
    "register_space": ("raynas.search_spaces", "register"),
    "get_space": ("raynas.search_spaces", "get_space"),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # One source of the version: pyproject.toml, as the installed package's metadata holds it.
        from importlib.metadata import version

        globals()[name] = version("raynas")
        return globals()[name]
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raynas' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), "__version__", *_EXPORTS})


__all__ = ["__version__", *_EXPORTS]
