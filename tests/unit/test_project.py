"""What the project declares about itself holds (issue #23): its version has one source, its
license is in the tree, its secrets are not committed by accident, its dependency ranges are the
ones the tests run on, and the docs name every actor a search starts."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_packages_metadata():
    import raynas

    assert raynas.__version__ == importlib.metadata.version("raynas") == tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_license_pyproject_declares_is_in_the_tree():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_services_state_directory_is_not_committed():
    # It holds the registry, every run directory and the service's token.
    done = subprocess.run(["git", "check-ignore", "-q", "nas-state/token"], cwd=ROOT)
    assert done.returncode == 0


def test_torch_and_ray_are_held_to_the_versions_the_tests_run_on():
    requirements = {Requirement(r).name: Requirement(r) for r in
                    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("torch", "ray"):
        installed = importlib.metadata.version(name).split("+")[0]
        specifier = requirements[name].specifier
        assert specifier.contains(installed), (name, installed, specifier)
        assert any(s.operator == "<" for s in specifier), f"{name} has no upper bound"


#: Tune's internals that controller/cluster/tune.py reads, for want of a public API (its
#: RungScheduler's docstring says which and why), and the metric and mode a Searcher subclass sets
#: (Tune's own searchers do; Searcher has no setter); anything else must use Tune's public API.
TUNE_INTERNALS = {"_brackets", "_trial_info", "_rungs", "_num_stopped", "_tune_controller", "_metric", "_mode"}


def test_tune_py_reaches_only_the_tune_internals_it_declares():
    tree = ast.parse((ROOT / "controller" / "cluster" / "tune.py").read_text())
    # Ours: its functions, classes and class attributes, and what its constructors set on self.
    ours = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    ours |= {t.id for n in ast.walk(tree) if isinstance(n, ast.ClassDef) for b in n.body
             for t in (b.targets if isinstance(b, ast.Assign) else [b.target] if isinstance(b, ast.AnnAssign) else [])
             if isinstance(t, ast.Name)}
    ours |= {t.attr for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "__init__"
             for n in ast.walk(f) if isinstance(n, ast.Assign) for target in n.targets for t in ast.walk(target)
             if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    reached = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    reached |= {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
                "getattr" and len(n.args) > 1 and isinstance(n.args[1], ast.Constant)}
    private = {name for name in reached if name.startswith("_") and not name.startswith("__")}
    assert private - ours == TUNE_INTERNALS


def test_the_observability_docs_name_every_actor_a_search_starts():
    text = (ROOT / "docs" / "observability.md").read_text()
    for actor in ("`ps-0`", "`controller-0`", "`worker-0`", "`recorder`", "`dispatcher`", "`search-<id>-by-<owner>`",
                  "~/.ray/auth_token"):
        assert actor in text, actor
