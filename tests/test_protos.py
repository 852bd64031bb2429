"""The generated APIs (admin, the usage log's subset of OpenTelemetry logs) are what protos/ says today: a .proto
edited without reinstalling fails here."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from grpc_tools import protoc

import xds_server.api

ROOT = Path(__file__).parent.parent


def test_generated_apis_match_the_protos(tmp_path: Path) -> None:
    protos = ROOT / "protos"
    includes = Path(grpc_tools.__file__).parent / "_proto"
    for proto in sorted(protos.rglob("*.proto")):
        args = ["protoc", f"-I{protos}", f"-I{includes}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
        assert protoc.main([*args, str(proto)]) == 0
    generated = sorted((tmp_path / "xds_server" / "api").glob("*.py"))
    assert [p.name for p in generated] == [
        "admin_pb2.py", "admin_pb2_grpc.py", "usage_log_pb2.py", "usage_log_pb2_grpc.py"
    ]  # fmt: skip
    installed = Path(xds_server.api.__file__).parent
    for fresh in generated:
        assert (installed / fresh.name).read_text() == fresh.read_text(), f"{fresh.name} is stale: pip install -e ."
