"""Every registered plug-in (search spaces, strategies, evaluators, datasets, plug-ins from
outside included) with its one-line summary and its options: what `--help`, `nas options` and the
proto's comments say, read from the registries so that they cannot drift from the code."""

from __future__ import annotations

from raynas.common.options import describe_options, format_options
from raynas.controller.strategies import strategy_class, strategy_names
from raynas.search_spaces import space_class, space_names
from raynas.workers.datasets import dataset_class, dataset_names
from raynas.workers.evaluation import evaluator_class, evaluator_names

KINDS = ("space", "strategy", "evaluator", "dataset")
_REGISTRIES = {"space": (space_names, space_class), "strategy": (strategy_names, strategy_class),
               "evaluator": (evaluator_names, evaluator_class), "dataset": (dataset_names, dataset_class)}


def entries(kind: str) -> list[tuple[str, str]]:
    """(name, summary) of every registered plug-in of `kind`."""
    names, get = _REGISTRIES[kind]
    return [(name, get(name).summary) for name in names()]


def names_text(kind: str) -> str:
    """The names of `kind`, for a flag's one-line help."""
    return ", ".join(name for name, _ in entries(kind))


def describe(kind: str, name: str) -> str:
    """One plug-in: its summary and each option with its type, default, bound and help."""
    cls = _REGISTRIES[kind][1](name)
    lines = [f"{kind} {name}: {cls.summary}"]
    options = getattr(cls, "Options", None)
    if options is not None:
        lines += [f"options ({kind}_options):", format_options(options)]
    else:
        lines.append("options: space_options, the keyword arguments of the space (nas inspect shows its defaults)")
    layout = getattr(cls, "layout", "")
    if layout:
        lines.append(f"--data: {layout}")
    return "\n".join(lines)


def overview() -> str:
    """Every plug-in of every kind, a line each."""
    lines = []
    for kind in KINDS:
        lines.append(f"{kind}s:")
        width = max(len(n) for n, _ in entries(kind))
        lines += [f"  {name:<{width}}  {summary}" for name, summary in entries(kind)]
    return "\n".join(lines)


#: Where docs/service.md holds `bounds_table()` (tests/unit/test_spec.py compares the two).
BOUNDS_START = "<!-- option bounds: nas options --bounds -->"
BOUNDS_END = "<!-- end of option bounds -->"


def bounds_table() -> str:
    """Every bounded option of every plug-in as a Markdown table: option, the plug-ins that have
    it with that bound, the bound."""
    rows: dict[tuple[str, float], list[str]] = {}
    for kind in ("strategy", "evaluator", "dataset"):
        for name, _ in entries(kind):
            options = getattr(_REGISTRIES[kind][1](name), "Options", None)
            for row in describe_options(options) if options is not None else []:
                if "most" in row:
                    rows.setdefault((f"{kind}_options.{row['name']}", row["most"]), []).append(name)
    lines = ["| option | of | at most |", "|---|---|---|"]
    lines += [f"| `{option}` | {', '.join(names)} | {most:,} |" for (option, most), names in sorted(rows.items())]
    return "\n".join(lines)
