"""deploy/ agrees with the code: every manifest parses, every `nas` command in it parses with
the real CLI, ports, image tags and versions match what the project declares."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from controller.cli import build_parser
from controller.service import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
IMAGE = re.compile(r"ghcr\.io/raynas/raynas:[\w.-]+")


def documents():
    """Kubernetes objects (the launcher config has no `kind`; its own test reads it)."""
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc:
                yield path, doc


def walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def _commands_in(text: str):
    for line in text.splitlines():
        for part in re.split(r"&&|;|\|", line.split(" #")[0]):
            part = re.sub(r"^\s*(exec|nohup|--)\s+", "", part.strip()).rstrip("&").strip()
            part = part.split(" -- ", 1)[-1] if part.startswith("ray job submit") else part
            part = re.sub(r"\s*>.*$", "", part)
            if part.startswith("nas "):
                yield part


def nas_commands():
    """Every `nas ...` command in the manifests' strings and in the READMEs' code blocks."""
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            for node in walk(doc):
                if isinstance(node, str):
                    for cmd in _commands_in(node):
                        yield path.name, cmd
    for path in (DEPLOY / "README.md", ROOT / "README.md"):
        blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
        for block in blocks:
            for cmd in _commands_in(block):
                yield path.name, cmd


def test_manifests_parse_and_kuberay_kinds_are_v1():
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"RayCluster", "RayJob", "Service", "PersistentVolumeClaim"} <= kinds
    for _, doc in documents():
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"


def test_every_nas_command_parses():
    parser = build_parser()
    commands = list(nas_commands())
    assert any(cmd.startswith("nas serve") for _, cmd in commands)
    for where, cmd in commands:
        argv = [a for a in shlex.split(cmd)[1:] if a not in ("ID", "SEARCH_ID")] + \
            (["some-id"] if re.search(r"\b(SEARCH_)?ID\b", cmd) else [])
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `{cmd}` does not parse with the nas CLI")


def test_the_grpc_port_is_the_service_default():
    ports = []
    for _, doc in documents():
        for node in walk(doc):
            if isinstance(node, dict) and node.get("name") == "grpc":
                ports.append(node.get("containerPort") or node.get("port"))
    assert ports and set(ports) == {DEFAULT_PORT}
    for _, cmd in nas_commands():
        if cmd.startswith("nas serve") and "--port" in cmd:
            assert f"--port {DEFAULT_PORT}" in cmd
    assert str(DEFAULT_PORT) in (DEPLOY / "docker" / "Dockerfile").read_text().split("EXPOSE", 1)[1].splitlines()[0]


def test_probes_use_grpc_health_on_the_service_port():
    probes = [n[kind] for _, doc in documents() for n in walk(doc) if isinstance(n, dict)
              for kind in ("readinessProbe", "livenessProbe") if kind in n]
    assert probes and all(p["grpc"]["port"] == DEFAULT_PORT for p in probes)


def test_container_ports_are_named_and_unique_per_container():
    for path, doc in documents():
        for node in walk(doc):
            if isinstance(node, dict) and "image" in node and "ports" in node:
                names = [p["name"] for p in node["ports"]]
                assert len(names) == len(set(names)), f"{path.name}: {node['name']}"


def test_images_are_the_ones_the_build_commands_make():
    built = set(IMAGE.findall((DEPLOY / "README.md").read_text())) | set(
        IMAGE.findall((DEPLOY / "docker" / "Dockerfile").read_text()))
    used = {m for path in MANIFESTS for m in IMAGE.findall(path.read_text())}
    assert used and used <= built


def test_versions_agree_with_the_project():
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    base_ray = re.search(r"ARG BASE_IMAGE=rayproject/ray:([\d.]+)-py(\d)(\d+)", dockerfile)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray"))
    minimum = re.search(r">=([\d.]+)", ray_req).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(base_ray.group(1)) >= as_tuple(minimum)
    for _, doc in documents():
        for node in walk(doc):
            if isinstance(node, dict) and "rayVersion" in node:
                assert node["rayVersion"] == base_ray.group(1)
    ci_torch = re.search(r"torch==([\d.]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert f"ARG TORCH_VERSION={ci_torch}" in dockerfile
    assert f"{base_ray.group(2)}.{base_ray.group(3)}" >= project["requires-python"].lstrip(">=")


def test_cluster_launcher_head_starts_the_service():
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert any(cmd.startswith("nas serve") for c in config["head_start_ray_commands"] for cmd in _commands_in(c))
    assert all(target in config["file_mounts"] for target in ("/etc/nas/token", "/etc/nas/ray-token"))
