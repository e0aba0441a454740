"""The gRPC/protobuf contract: buf lint, fresh generated code, a comment on everything, importable modules."""

from __future__ import annotations

import importlib
import importlib.resources
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen" / "python"

# Field numbers of the descriptor.proto messages, for source_code_info paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2


def _proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "lianxin").rglob("*.proto"))


def _buf() -> str | None:
    local = Path(sys.executable).parent / "buf"
    return str(local) if local.is_file() else shutil.which("buf")


def test_buf_lint_passes_with_standard_rules() -> None:
    buf = _buf()
    if buf is None:
        pytest.skip("buf is not installed (pip install buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=PROTO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_generated_python_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"gen/python is stale:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("descriptors") / "contract.binpb"
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *_proto_files(),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _enum_paths(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str
) -> list[tuple[tuple[int, ...], str]]:
    found = [(path, f"enum {name}")]
    for i, value in enumerate(enum.value):
        found.append(((*path, ENUM_VALUE, i), f"enum value {name}.{value.name}"))
    return found


def _message_paths(
    message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str
) -> list[tuple[tuple[int, ...], str]]:
    if message.options.map_entry:  # synthesized for map<,> fields; has no source of its own
        return []
    found = [(path, f"message {name}")]
    for i, field in enumerate(message.field):
        found.append(((*path, MESSAGE_FIELD, i), f"field {name}.{field.name}"))
    for i, nested in enumerate(message.nested_type):
        found += _message_paths(nested, (*path, MESSAGE_NESTED, i), f"{name}.{nested.name}")
    for i, enum in enumerate(message.enum_type):
        found += _enum_paths(enum, (*path, MESSAGE_ENUM, i), f"{name}.{enum.name}")
    return found


def _documented_elements(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[tuple[int, ...], str]]:
    found: list[tuple[tuple[int, ...], str]] = []
    for i, message in enumerate(file.message_type):
        found += _message_paths(message, (FILE_MESSAGE, i), message.name)
    for i, enum in enumerate(file.enum_type):
        found += _enum_paths(enum, (FILE_ENUM, i), enum.name)
    for i, service in enumerate(file.service):
        found.append(((FILE_SERVICE, i), f"service {service.name}"))
        for j, method in enumerate(service.method):
            found.append(((FILE_SERVICE, i, SERVICE_METHOD, j), f"rpc {service.name}.{method.name}"))
    return found


def test_every_service_rpc_message_field_and_enum_value_has_a_leading_comment(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    ours = [f for f in descriptor_set.file if f.name.startswith("lianxin/")]
    assert {f.name for f in ours} == set(_proto_files())
    missing: list[str] = []
    checked = 0
    for file in ours:
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for path, label in _documented_elements(file):
            checked += 1
            if not comments.get(path, "").strip():
                missing.append(f"{file.name}: {label}")
    assert checked > 500, f"only {checked} elements found; is source info missing?"
    assert not missing, "elements without a leading // comment:\n" + "\n".join(missing)


def test_every_generated_module_imports() -> None:
    modules = sorted(
        ".".join(p.relative_to(GEN_DIR).with_suffix("").parts) for p in (GEN_DIR / "lianxin").rglob("*_pb2*.py")
    )
    assert len(modules) == 2 * len(_proto_files())
    if str(GEN_DIR) not in sys.path:
        sys.path.insert(0, str(GEN_DIR))
    for name in modules:
        importlib.import_module(name)


def test_contract_names_other_services_code_against() -> None:
    from lianxin.common.v1 import common_pb2
    from lianxin.events.v1 import events_pb2
    from lianxin.exchange.v1 import exchange_service_pb2_grpc
    from lianxin.intake.v1 import intake_service_pb2, intake_service_pb2_grpc
    from lianxin.national.v1 import national_service_pb2_grpc
    from lianxin.routing.v1 import routing_service_pb2_grpc
    from lianxin.stats.v1 import stats_service_pb2_grpc
    from lianxin.video.v1 import video_service_pb2_grpc

    assert common_pb2.CaseState.Name(common_pb2.CASE_STATE_MODERATION) == "CASE_STATE_MODERATION"
    assert common_pb2.CASE_STATE_MODERATION == 14
    assert common_pb2.Channel.Value("CHANNEL_HOTLINE") == 3
    for stubs in (
        intake_service_pb2_grpc.IntakeServiceStub,
        routing_service_pb2_grpc.RoutingServiceStub,
        exchange_service_pb2_grpc.ExchangeServiceStub,
        national_service_pb2_grpc.NationalServiceStub,
        video_service_pb2_grpc.VideoServiceStub,
        stats_service_pb2_grpc.StatsServiceStub,
    ):
        assert callable(stubs)
    envelope = events_pb2.EventEnvelope(
        event_id="e1",
        case_id="511102-20261122-000123",
        case_registered=events_pb2.CaseRegistered(case=common_pb2.Case(case_id="511102-20261122-000123")),
    )
    again = events_pb2.EventEnvelope.FromString(envelope.SerializeToString())
    assert again.WhichOneof("payload") == "case_registered"
    request = intake_service_pb2.SubmitCaseRequest(channel=common_pb2.CHANNEL_HOTLINE, hotline_operator_id="op7")
    assert request.hotline_operator_id == "op7"
