"""The wire contract: generated code up to date, everything commented, the spec
message in step with SearchSpec, and usable from the .proto files alone."""

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raynas.controller.api.servicer import spec_from_message, spec_to_message
from raynas.controller.runtime.spec import SearchSpec
from raynas.protos import generate
from raynas.protos.nas.v1 import search_pb2 as pb


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / fresh.name
        assert committed.exists(), f"{fresh.name} is not committed: run python -m raynas.protos.generate"
        stale = f"{fresh.name} is stale: run python -m raynas.protos.generate"
        assert committed.read_text() == fresh.read_text(), stale


def test_every_rpc_message_field_and_enum_value_is_commented(tmp_path):
    pytest.importorskip("grpc_tools")
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{generate.ROOT}", f"-I{include}", "--include_source_info",
                        f"--descriptor_set_out={out}", "nas/v1/search.proto"]) == 0
    proto = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    comments = {tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
                for loc in proto.source_code_info.location}
    # Paths of FileDescriptorProto: 4 messages (2 fields), 5 enums (2 values), 6 services (2 methods).
    missing = [m.name for i, m in enumerate(proto.message_type) if not comments.get((4, i))]
    missing += [f"{m.name}.{f.name}" for i, m in enumerate(proto.message_type)
                for j, f in enumerate(m.field) if not comments.get((4, i, 2, j))]
    missing += [v.name for i, e in enumerate(proto.enum_type) for j, v in enumerate(e.value)
                if not comments.get((5, i, 2, j))]
    missing += [r.name for i, s in enumerate(proto.service) for j, r in enumerate(s.method)
                if not comments.get((6, i, 2, j))]
    assert not missing


def test_spec_message_has_exactly_the_search_spec_fields():
    dataclass_fields = {f.name for f in dataclasses.fields(SearchSpec)}
    message_fields = {f.name for f in pb.SearchSpec.DESCRIPTOR.fields}
    assert dataclass_fields == message_fields


def test_spec_round_trips_through_the_message_keeping_integers():
    spec = SearchSpec(space="macro", strategy="rl", evaluations=7, seed=3, max_staleness=2,
                      space_options={"num_layers": 8}, strategy_options={"lr": 0.001, "batch_size": 4},
                      evaluator_options={"epochs": 2, "channels": 8}).to_dict()
    back = spec_from_message(spec_to_message(spec))
    assert back == {k: v for k, v in spec.items() if v is not None}
    assert isinstance(back["space_options"]["num_layers"], int)
    assert SearchSpec.from_dict(back) == SearchSpec.from_dict(spec)


def test_unset_fields_are_not_sent_so_server_defaults_apply():
    assert spec_from_message(pb.SearchSpec(space="nb201")) == {"space": "nb201"}


CLIENT = """
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the generated stubs, beside this file
import grpc
from nas.v1 import search_pb2 as pb, search_pb2_grpc as rpc

meta = (("authorization", "Bearer " + sys.argv[2]),)
stub = rpc.SearchServiceStub(grpc.insecure_channel(sys.argv[1]))
spec = pb.SearchSpec(space="nb201", evaluator="table", strategy="random", evaluations=5, runtime="local")
search = stub.SubmitSearch(pb.SubmitSearchRequest(spec=spec), metadata=meta)
events = [e.WhichOneof("event") for e in stub.WatchSearch(pb.WatchSearchRequest(id=search.id), metadata=meta)]
result = stub.GetResult(pb.GetResultRequest(id=search.id), metadata=meta)
print(events.count("evaluation"), pb.State.Name(result.state), result.evaluations)
"""


def test_a_client_generated_from_the_proto_files_alone_submits_and_watches(tmp_path):
    """No project code on the client side: copy the .proto files, run protoc, and drive a
    real server from a clean interpreter that sees only the generated stubs."""
    pytest.importorskip("grpc_tools")
    from raynas.controller.api.servicer import serve
    from raynas.controller.service.manager import SearchManager, ThreadLauncher

    for proto in generate.proto_files():
        dest = tmp_path / "src" / "nas" / "v1" / proto.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, dest)
    out = tmp_path / "gen"
    out.mkdir()
    script = textwrap.dedent(f"""
        import grpc_tools, sys
        from pathlib import Path
        from grpc_tools import protoc
        include = str(Path(grpc_tools.__file__).parent / "_proto")
        sys.exit(protoc.main(["protoc", "-I{tmp_path / 'src'}", "-I" + include, "--python_out={out}",
                              "--grpc_python_out={out}", "nas/v1/search.proto"]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    (out / "client.py").write_text(CLIENT)
    server = serve(SearchManager(tmp_path / "state", ThreadLauncher(), poll_s=0.02), "proto-token",
                   host="127.0.0.1", port=0)
    try:
        # -I: isolated mode, so neither the working directory nor PYTHONPATH brings project code in.
        done = subprocess.run([sys.executable, "-I", str(out / "client.py"), f"127.0.0.1:{server.port}", "proto-token"],
                              capture_output=True, text=True, timeout=120)
    finally:
        server.stop(grace=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "STATE_SUCCEEDED", "5"]


def test_the_plug_in_fields_name_every_registered_plug_in():
    """SearchSpec's space, strategy, evaluator and dataset comments are written from the registries."""
    from raynas.controller.api import proto_docs

    text = proto_docs.PROTO.read_text()
    assert text == proto_docs.updated(text), "stale: run python -m raynas.controller.api.proto_docs"
    for kind in ("strategy", "evaluator", "dataset"):
        assert all(name in text for name, _ in proto_docs.catalogue.entries(kind))
