"""A search's evaluations as rows: one per evaluation, its scalar figures as columns, for
`nas results` (table, CSV, JSON) and the Python API (`raynas.results`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from raynas.common import ConfigError
from raynas.controller.runtime.rundir import RunDirectory, rank

#: Columns first in every table, in this order; the metrics follow as they appear.
LEADING = ("id", "status", "reward", "arch")
#: Metrics that a table shows before the others (where a search has them).
HEADLINE = ("budget", "val_acc_best", "val_miou_best", "val_ppl_best", "test_acc_200ep", "params", "flops",
            "wall_time_s", "train_time_s")
FORMATS = ("table", "csv", "json")


def rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every evaluation of the run directory as a flat row: id, status, reward, arch and each scalar
    metric (curves and tracebacks stay in evaluations.jsonl), in the order they were recorded."""
    run = RunDirectory(run_dir)
    if not (run.path / "spec.json").is_file():
        raise ConfigError("run", f"{run.path} is not a search's run directory (no spec.json)")
    out = []
    for record in run.evaluations():
        metrics = record.get("metrics", {})
        row = {"id": record["id"], "status": record.get("status"), "reward": record.get("reward"),
               "arch": record["arch"]}
        row.update((k, v) for k, v in metrics.items()
                   if isinstance(v, (int, float, str, bool)) and k not in ("traceback",) and k not in row)
        if record.get("reason"):
            row["reason"] = record["reason"]
        out.append(row)
    return out


def columns(table: list[dict[str, Any]]) -> list[str]:
    """The columns of `table`: the leading ones, the headline metrics it has, then the rest."""
    seen = dict.fromkeys(c for row in table for c in row)
    head = [c for c in (*LEADING, *HEADLINE) if c in seen]
    return head + [c for c in seen if c not in head]


def best_first(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successful rows best first (budget reached, then reward), then the rest in log order."""
    ok = [r for r in table if r["status"] == "ok" and r["reward"] is not None]
    ranked = sorted(ok, key=lambda r: rank({"reward": r["reward"], "metrics": {"budget": r.get("budget")}}),
                    reverse=True)
    return ranked + [r for r in table if r not in ok]


def render(table: list[dict[str, Any]], fmt: str = "table", wanted: list[str] | None = None) -> str:
    """`table` as text: an aligned table, CSV, or JSON lines."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"unknown format {fmt!r}", FORMATS)
    cols = wanted or (_table_columns(table) if fmt == "table" else columns(table))
    if fmt == "json":
        return "".join(json.dumps({c: r.get(c) for c in cols}) + "\n" for r in table)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return buffer.getvalue()
    cells = [[_cell(r.get(c)) for c in cols] for r in table]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def _table_columns(table: list[dict[str, Any]]) -> list[str]:
    """A table's default columns: id, status, reward, the headline metrics it has, the architecture
    last (it is long); CSV and JSON carry every column."""
    seen = dict.fromkeys(c for row in table for c in row)
    return [c for c in ("id", "status", "reward", *HEADLINE) if c in seen] + ["arch"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)
