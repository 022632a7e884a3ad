"""The layout's rules, read from the source: one import root over the design's folders, no
import cycle, no package importing a higher layer, Ray and gRPC only at the thin edges,
every package installed. docs/architecture.md states the same rules in words."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Import name -> folder of the repository.
FOLDERS = {"raynas.common": "common", "raynas.search_spaces": "search_spaces", "raynas.param_server": "param_server",
           "raynas.workers": "workers", "raynas.controller": "controller", "raynas.protos": "protos",
           "raynas": "raynas"}
#: What each top-level package may import of ours (itself always).
ALLOWED = {
    "raynas": set(),
    "raynas.common": set(),
    "raynas.protos": set(),
    "raynas.search_spaces": {"raynas.common"},
    "raynas.param_server": {"raynas.common"},
    "raynas.workers": {"raynas.common", "raynas.search_spaces"},
    "raynas.controller": {"raynas.common", "raynas.search_spaces", "raynas.param_server", "raynas.workers",
                          "raynas.protos"},
}
#: The controller's sub-packages, lowest first; each may import only those before it. bench and
#: service share a rank: neither imports the other.
CONTROLLER_LAYERS = {"strategies": 0, "cluster": 1, "runtime": 2, "bench": 3, "service": 3, "api": 4, "cli": 5}
#: The only modules that import Ray, and the only ones that import gRPC or protobuf.
RAY_EDGES = ("raynas.controller.cluster.", "raynas.workers.execution.ray_pool")
GRPC_EDGES = ("raynas.controller.api.", "raynas.protos.")
#: protobuf also writes TensorBoard's event files (its messages in TFRecord frames): one module, no gRPC.
PROTOBUF_EDGES = (*GRPC_EDGES, "raynas.controller.runtime.event_file")


def _modules() -> dict[str, Path]:
    modules = {}
    for name, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if ".venv" in path.parts or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([name, *parts])] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(prefix + ([node.module] if node.module else []))
            found.append((base, node.lineno))
            # `from package import module` imports the module.
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names
                      if f"{base}.{alias.name}" in MODULES]
    return found


GRAPH = {m: [(i, line) for i, line in _imports(m, p) if i in MODULES or i.startswith("raynas")]
         for m, p in MODULES.items()}


def _top(module: str) -> str:
    return next((name for name in sorted(FOLDERS, key=len, reverse=True)
                 if module == name or module.startswith(name + ".")), module)


def test_every_module_imports_under_the_root():
    for module, path in MODULES.items():
        for imported, line in _imports(module, path):
            first = imported.split(".")[0]
            assert first not in {"common", "search_spaces", "param_server", "workers", "controller", "protos"}, \
                f"{path.relative_to(ROOT)}:{line} imports {imported}: use raynas.{imported}"


def test_no_import_cycle():
    """Module-level imports form a DAG (imports inside functions included: they are cycles too)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for imported, _ in GRAPH.get(module, []):
            target = imported if imported in MODULES else None
            # A package is initialised before its modules: importing one's own parent is no cycle.
            if target is None or module == target or module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module)


def test_packages_import_only_lower_layers():
    for module, edges in GRAPH.items():
        top = _top(module)
        for imported, line in edges:
            target = _top(imported)
            if target == top:
                continue
            assert target in ALLOWED[top], f"{MODULES[module].relative_to(ROOT)}:{line}: {top} imports {imported}"


def test_controller_sub_packages_are_layered():
    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "controller" and parts[2] in CONTROLLER_LAYERS else None

    for module, edges in GRAPH.items():
        own = layer(module)
        if own is None:
            continue
        for imported, line in edges:
            other = layer(imported)
            if other is None or other == own:
                continue
            assert CONTROLLER_LAYERS[other] < CONTROLLER_LAYERS[own], \
                f"{MODULES[module].relative_to(ROOT)}:{line}: controller.{own} imports {imported}"


@pytest.mark.parametrize("library,edges", [("ray", RAY_EDGES), ("grpc", GRPC_EDGES), ("grpc_health", GRPC_EDGES),
                                           ("grpc_reflection", GRPC_EDGES), ("google.protobuf", PROTOBUF_EDGES)])
def test_ray_and_grpc_only_at_the_edges(library, edges):
    for module, path in MODULES.items():
        if module.startswith(edges) or module in edges:
            continue
        for imported, line in _imports(module, path):
            assert not (imported == library or imported.startswith(library + ".")), \
                f"{path.relative_to(ROOT)}:{line} imports {library}; only {', '.join(edges)} may"


@pytest.mark.parametrize("package", ["raynas.common", "raynas.search_spaces"])
def test_the_base_and_the_vocabulary_import_no_torch_at_module_level(package):
    """`nas bench` and the service validate specs without loading torch's 1-2 s of imports."""
    for module, path in MODULES.items():
        if _top(module) != package:
            continue
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path.relative_to(ROOT)


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {name: ROOT / folder for name, folder in FOLDERS.items()}
    found = {module for module, path in MODULES.items() if path.name == "__init__.py"}
    assert found == listed, f"not installed: {sorted(found - listed)}; listed but missing: {sorted(listed - found)}"
    for name, path in folders.items():
        assert config["package-dir"][name] == path.name


def test_each_controller_sub_package_says_what_it_owns():
    for name in CONTROLLER_LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "controller" / name / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"controller/{name}/__init__.py needs a docstring saying what it owns"
