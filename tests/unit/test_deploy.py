"""deploy/ agrees with the code and with itself: every manifest parses (the launcher config against
Ray's own schema), every `nas` command in it parses with the real CLI, the gRPC port is the service's,
the images are the ones the build commands make, versions match the project, and the pieces that must
line up for Ray token auth, the head-pod sidecar and the state volume do. No network, no Docker."""

import functools
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from raynas.controller.cli.main import build_parser
from raynas.controller.service.manager import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
README = DEPLOY / "README.md"
LAUNCHER = DEPLOY / "ray-cluster.yaml"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
IMAGE = re.compile(r"ghcr\.io/raynas/raynas:[\w.-]+")
BASE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<minor>\d+)-(?P<platform>cpu|cu\d+)")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@functools.cache
def docs(path: Path) -> tuple:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def k8s_objects():
    """(path, object) for every Kubernetes object; the launcher config has no `kind`."""
    return [(p, d) for p in MANIFESTS for d in docs(p) if "kind" in d]


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def pod_templates():
    """(path, owner kind, group, pod spec) for every Ray pod template in the KubeRay objects."""
    for path, obj in k8s_objects():
        spec = obj["spec"].get("rayClusterSpec", obj["spec"]) if obj["kind"] in ("RayCluster", "RayJob") else None
        if spec:
            yield path, obj, "head", spec, spec["headGroupSpec"]["template"]["spec"]
            for group in spec.get("workerGroupSpecs", []):
                yield path, obj, group["groupName"], spec, group["template"]["spec"]


# -- `nas` commands ------------------------------------------------------------------------

def shell_commands(text: str):
    """The simple commands of a shell snippet (redirections and `ray job submit ... --` dropped)."""
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)                         # comments
        line = re.sub(r"\s\d*(>>?|<)&?\s*\S+", " ", line)              # > file, 2>&1, < /dev/null
        for part in re.split(r"&&|\|\||[;|&]", line):
            part = part.strip()
            if part.startswith("ray job submit") and " -- " in part:
                part = part.split(" -- ", 1)[1]
            part = re.sub(r"^((exec|nohup|setsid|RUN)\s+|\w+=\S*\s+)+", "", part)
            if part:
                yield part


def nas_commands():
    """(where, command) for every `nas SUBCOMMAND ...` in the manifests, the Dockerfile and README's code."""
    found = []
    for path in MANIFESTS:
        for doc in docs(path):
            for node in walk(doc):
                if isinstance(node, str):
                    found += [(path.name, c) for c in shell_commands(node)]
    found += [(DOCKERFILE.name, c) for c in shell_commands(DOCKERFILE.read_text())]
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        found += [(README.name, c) for c in shell_commands(block)]
    # `nas --help` (the Dockerfile's smoke test) has no subcommand to parse.
    return [(w, c) for w, c in found if re.match(r"nas [a-z]", c)]


NAS_COMMANDS = nas_commands()


def argv(cmd: str) -> list[str]:
    """The arguments after `nas`, README placeholders (SEARCH_ID) made concrete."""
    return [re.sub(r"^(SEARCH_)?ID$", "0123abcd", a) for a in shlex.split(cmd)[1:]]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def subcommands(parser) -> set[str]:
    return {name for action in parser._subparsers._group_actions for name in action.choices}


@pytest.mark.parametrize("where,cmd", NAS_COMMANDS, ids=[f"{w}:{c[:48]}" for w, c in NAS_COMMANDS])
def test_nas_command_parses(parser, where, cmd):
    args = argv(cmd)
    assert args[0] in subcommands(parser), f"{where}: `nas {args[0]}` is not a nas subcommand"
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `{cmd}` does not parse with the nas CLI")


def test_every_way_to_run_it_is_covered():
    by_file = {}
    for where, cmd in NAS_COMMANDS:
        by_file.setdefault(where, set()).add(argv(cmd)[0])
    assert "serve" in by_file["ray-cluster.yaml"] and "serve" in by_file["raycluster.yaml"]
    assert "search" in by_file["rayjob.yaml"]
    assert {"submit", "status", "watch", "result", "cancel", "search"} <= by_file["README.md"]


def serve_args(parser, path: Path):
    cmds = [c for w, c in NAS_COMMANDS if w == path.name and argv(c)[0] == "serve"]
    assert len(cmds) == 1, f"{path.name}: one `nas serve` expected"
    return parser.parse_args(argv(cmds[0]))


# -- ports and probes ----------------------------------------------------------------------

def test_the_grpc_port_is_the_service_default(parser):
    named = [n.get("containerPort") or n.get("port") for _, d in k8s_objects() for n in walk(d)
             if isinstance(n, dict) and n.get("name") == "grpc"]
    assert named and set(named) == {DEFAULT_PORT}
    for path in (LAUNCHER, DEPLOY / "kuberay" / "raycluster.yaml"):
        args = serve_args(parser, path)
        assert args.port == DEFAULT_PORT
        assert args.host in ("0.0.0.0", "[::]"), "the service must listen beyond localhost"
    expose = re.search(r"^EXPOSE (.*)$", DOCKERFILE.read_text(), flags=re.M).group(1).split()
    assert {str(DEFAULT_PORT), "8265", "6379"} <= set(expose)
    rules = docs(LAUNCHER)[0]["provider"]["security_group"]["IpPermissions"]
    assert any(r["FromPort"] <= DEFAULT_PORT <= r["ToPort"] for r in rules)


def test_probes_use_grpc_health_on_the_service_port():
    probes = [(c, c[k]) for *_, pod in pod_templates() for c in pod["containers"]
              for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c]
    assert probes and all(p["grpc"]["port"] == DEFAULT_PORT for _, p in probes)
    for c, _ in probes:  # the container probed is the one that serves the port
        assert DEFAULT_PORT in [p["containerPort"] for p in c.get("ports", [])]
    serving = [c for *_, pod in pod_templates() for c in pod["containers"]
               if DEFAULT_PORT in [p["containerPort"] for p in c.get("ports", [])]]
    assert serving and all("readinessProbe" in c for c in serving)


def test_container_ports_are_named_and_unique_per_pod():
    for path, obj, group, _, pod in pod_templates():
        ports = [p for c in pod["containers"] for p in c.get("ports", [])]
        names = [p.get("name", "") for p in ports]
        where = f"{path.name} {obj['kind']} {group}"
        assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", n) for n in names), where
        assert len(names) == len(set(names)), where
        assert len(ports) == len({p["containerPort"] for p in ports}), where


def test_services_reach_named_ports_of_a_head_pod():
    clusters = {obj["metadata"]["name"]: pod for _, obj, group, _, pod in pod_templates()
                if obj["kind"] == "RayCluster" and group == "head"}
    services = [d for _, d in k8s_objects() if d["kind"] == "Service"]
    assert services
    for svc in services:
        selector = svc["spec"]["selector"]
        assert selector.get("ray.io/node-type") == "head" and selector.get("ray.io/cluster") in clusters
        pod = clusters[selector["ray.io/cluster"]]
        named = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert named.get(port["targetPort"]) == port["port"], port
    assert DEFAULT_PORT in [p["port"] for s in services for p in s["spec"]["ports"]]


# -- KubeRay -------------------------------------------------------------------------------

def test_kuberay_kinds_are_v1():
    kinds = {d["kind"]: d["apiVersion"] for _, d in k8s_objects()}
    assert {"RayCluster", "RayJob", "Service", "PersistentVolumeClaim"} <= set(kinds)
    assert kinds["RayCluster"] == kinds["RayJob"] == "ray.io/v1"
    assert kinds["Service"] == kinds["PersistentVolumeClaim"] == "v1"


def test_ray_token_auth_is_on_and_shared_with_every_ray_client():
    for path, _, _, spec, pod in pod_templates():
        auth = spec["authOptions"]
        assert auth["mode"] == "token" and auth["secretName"], path.name
        assert Version(spec["rayVersion"]) >= Version("2.52.0")  # token auth exists from 2.52
        ray_container, *sidecars = pod["containers"]
        assert ray_container["name"].startswith("ray-"), "KubeRay starts Ray in the first container"
        for c in sidecars:  # KubeRay injects the token only into its own containers
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": auth["secretName"], "key": "auth_token"}, c["name"]


def test_the_service_sidecar_can_reach_the_local_raylet():
    for path, _, _, _, pod in pod_templates():
        ray_container, *sidecars = pod["containers"]
        if not sidecars:
            continue
        # ray.init finds the local raylet by its process and talks to it through /tmp/ray's sockets.
        assert pod.get("shareProcessNamespace") is True, path.name
        mounts = lambda c: {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}  # noqa: E731
        for c in sidecars:
            assert mounts(c).get("/tmp/ray") == mounts(ray_container).get("/tmp/ray") is not None


def test_volumes_and_claims_resolve(parser):
    claims = {d["metadata"]["name"] for _, d in k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    for path, _, _, _, pod in pod_templates():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{path.name} {c['name']}: {m['name']}"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
                assert pod.get("securityContext", {}).get("fsGroup") == 100  # ray:users writes it
    # The service's state dir and token file are mounted where `nas serve` looks for them.
    head = next(pod for _, obj, g, _, pod in pod_templates() if obj["kind"] == "RayCluster" and g == "head")
    args = serve_args(parser, DEPLOY / "kuberay" / "raycluster.yaml")
    serve = next(c for c in head["containers"] if "nas serve" in json.dumps(c))
    volumes = {v["name"]: v for v in head["volumes"]}
    by_path = {m["mountPath"]: volumes[m["name"]] for m in serve["volumeMounts"]}
    assert "persistentVolumeClaim" in by_path[args.state_dir]
    token_dir, token_name = args.token_file.rsplit("/", 1)
    assert token_name in [i["path"] for i in by_path[token_dir]["secret"]["items"]]


# -- the cluster launcher ------------------------------------------------------------------

def test_launcher_config_matches_rays_schema():
    # Located without importing ray (slow): the schema `ray up` validates against.
    schema_path = Path(importlib.util.find_spec("ray").submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    config = docs(LAUNCHER)[0]
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    assert config["head_node_type"] in config["available_node_types"]


def test_launcher_head_runs_the_service_after_ray_with_auth_everywhere(parser):
    config = docs(LAUNCHER)[0]
    head = config["head_start_ray_commands"]
    start = next(i for i, c in enumerate(head) if "ray start --head" in c)
    serve = next(i for i, c in enumerate(head) if "nas serve" in c)
    assert start < serve and re.search(r"nohup nas serve .*>\s*\S+.*&", head[serve]), "in the background, logged"
    options = " ".join(config["docker"]["run_options"])  # every node: head and workers
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    args = serve_args(parser, LAUNCHER)
    assert token_path in config["file_mounts"] and args.token_file in config["file_mounts"]
    assert f":{args.state_dir}" in " ".join(config["docker"]["head_run_options"])


def test_services_on_autoscaling_clusters_wait_for_nodes_instead_of_refusing(parser):
    """Both clusters start GPU workers only when a search asks for them: a service that refused
    workers no current node can hold would refuse every GPU search."""
    launcher = docs(LAUNCHER)[0]
    assert any(t.get("max_workers", 0) > t.get("min_workers", 0) for t in launcher["available_node_types"].values())
    kuberay = next(o for _, o in k8s_objects() if o["kind"] == "RayCluster")
    assert kuberay["spec"]["enableInTreeAutoscaling"]
    for path in (LAUNCHER, DEPLOY / "kuberay" / "raycluster.yaml"):
        args = serve_args(parser, path)
        assert args.autoscaling, f"{path.name}: nas serve needs --autoscaling"
        # Listening beyond the pod or node is asked for explicitly (the default is loopback).
        assert args.host == "0.0.0.0"


# -- images and versions -------------------------------------------------------------------

def build_commands():
    """tag -> {build-arg: value} for every `docker build` in the README."""
    built = {}
    for line in README.read_text().splitlines():
        if line.startswith("docker build"):
            words = shlex.split(line)
            tag = words[words.index("-t") + 1]
            built[tag] = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--build-arg")
    return built


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def test_images_are_the_ones_the_build_commands_make():
    built = build_commands()
    version = PROJECT["version"]
    assert set(built) == {f"ghcr.io/raynas/raynas:{version}-cpu", f"ghcr.io/raynas/raynas:{version}-cuda"}
    assert built[f"ghcr.io/raynas/raynas:{version}-cpu"] == {}  # the Dockerfile's defaults are the CPU variant
    cuda = built[f"ghcr.io/raynas/raynas:{version}-cuda"]
    base = BASE.fullmatch(cuda["BASE_IMAGE"])
    assert base["platform"].startswith("cu") and cuda["TORCH_INDEX"].endswith("/whl/" + base["platform"])
    used = {m for p in MANIFESTS for m in IMAGE.findall(p.read_text())}
    assert used and used <= set(built)
    # GPU pods and launcher workers run the CUDA variant.
    for *_, pod in pod_templates():
        for c in pod["containers"]:
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                assert c["image"].endswith("-cuda")
    assert docs(LAUNCHER)[0]["docker"]["worker_image"].endswith("-cuda")


def test_versions_agree_with_the_project():
    args = dockerfile_args()
    base = BASE.fullmatch(args["BASE_IMAGE"])
    assert base and base["platform"] == "cpu"
    ray_req = next(Requirement(d) for d in PROJECT["dependencies"] if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(base["ray"])
    assert Requirement(f"python{PROJECT['requires-python']}").specifier.contains(f"{base['py']}.{base['minor']}")
    # CUDA variant: same Ray and Python as the CPU one (all nodes of a cluster must match).
    for tag, build_args in build_commands().items():
        if "BASE_IMAGE" in build_args:
            other = BASE.fullmatch(build_args["BASE_IMAGE"])
            assert (other["ray"], other["py"], other["minor"]) == (base["ray"], base["py"], base["minor"]), tag
    for *_, spec, _ in pod_templates():
        assert spec["rayVersion"] == base["ray"]
    ci_torch = re.search(r"torch==([\w.+]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert args["TORCH_VERSION"] == ci_torch
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"


def test_the_image_leaves_starting_ray_to_the_launchers():
    instructions = re.findall(r"^([A-Z]+)\s", DOCKERFILE.read_text(), flags=re.M)
    assert "CMD" not in instructions and "ENTRYPOINT" not in instructions
    assert instructions[-1] != "USER" and re.findall(r"^USER (\S+)", DOCKERFILE.read_text(), flags=re.M)[-1] == "ray"
