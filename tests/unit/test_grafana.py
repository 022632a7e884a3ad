"""deploy/grafana's dashboard asks only for metrics the code exports: the names come from the
code's own `ray.util.metrics` calls, with the series Prometheus makes of each kind."""

import ast
import functools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "raynas_dashboard.json"
#: The series Prometheus has of each kind of Ray metric (Ray prefixes application metrics with ray_;
#: a Counter is a counter with `_total` and, for compatibility, a gauge without it).
SERIES = {"Counter": ("_total", ""), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
METRIC = re.compile(r"\bray_nas_\w+")


@functools.cache
def exported() -> dict[str, str]:
    """{series name: metric} for every metric the package creates through ray.util.metrics."""
    names = {}
    # Hidden top-level folders are never walked: a virtual environment inside the checkout (CI's
    # .ci-venv) holds tens of thousands of files that the filter below would only throw away.
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for path in (path for folder in folders for path in folder.rglob("*.py")):
        if any(part.startswith(".") or part in ("tests", "build") for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SERIES
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "metrics"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                metric = node.args[0].value
                names.update({f"ray_{metric}{suffix}": metric for suffix in SERIES[node.func.attr]})
    return names


def queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["name"], variable["query"]["query"]


def test_every_query_names_an_exported_metric():
    names = exported()
    assert "ray_nas_evaluations_total" in names and "ray_nas_reward_bucket" in names
    dashboard = json.loads(DASHBOARD.read_text())
    for title, expr in queries(dashboard):
        used = METRIC.findall(expr)
        assert used, f"panel {title!r} queries no ray_nas_ metric: {expr}"
        unknown = [m for m in used if m not in names]
        assert not unknown, f"panel {title!r} queries {unknown}, which the code does not export"


def test_every_exported_metric_has_a_panel():
    used = {exported()[m] for _, expr in queries(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(expr)}
    assert used == set(exported().values())


def test_the_dashboard_is_one_ray_provisioning_reads():
    """Ray's provisioning loads every JSON file in its dashboards folder as a dashboard: it needs a
    uid and a title, panels with unique ids, and the data source as a variable (Ray names its own)."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert "$search" in target["expr"], f"panel {panel['title']!r} ignores the search picker"
