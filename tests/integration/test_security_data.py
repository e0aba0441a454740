"""Personal data at rest and in telemetry, and the append-only audit table on PostgreSQL.

* A case with a valid synthetic ID number and phone goes in over gRPC; the raw bytes of every
  database file of the node (and a ``pg_dump``) do not contain them.
* Every RPC of every service gets requests stuffed with ID numbers and phones; the node's logs,
  ``/metrics`` and exported spans show none of them unmasked.
* On PostgreSQL the services' role cannot UPDATE or DELETE audit rows, and nobody can through the trigger.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.audit import AUDIT_ROLE, AuditLog
from services.common.db import make_engine
from services.common.logs import JsonFormatter
from services.common.security import bearer_metadata, issue_token
from services.common.settings import Settings
from services.common.telemetry import setup_tracing
from services.node import Node

KEY = "data-test-token-key"
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_id(first17: str) -> str:
    """A synthetic 18-digit ID number with a correct GB 11643 check digit."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


ID_NUMBERS = [valid_id("51110219850412023"), valid_id("51110220010923456")]
PHONES = ["13912345678", "18687654321"]


def request(ref: str, id_number: str, phone: str) -> intake_pb2.SubmitCaseRequest:
    return intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code="511102",
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="王小明", id_number=id_number, phone=phone, address="嘉州大道1号"),
    )


def _raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _assert_absent(blob: bytes, secrets: list[str], where: str) -> None:
    for secret in secrets:
        for encoding in ("utf-8", "utf-16-le"):
            assert secret.encode(encoding) not in blob, f"{secret[:4]}… found in plain in {where}"


@pytest.fixture()
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    url = None if database_url.startswith("sqlite") else database_url
    settings = Settings(node="511102", data_dir=tmp_path, database_url=url, relay_interval_s=0.05)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


def test_a_database_dump_holds_no_plaintext_id_number_or_phone(node: Node, tmp_path: Path) -> None:
    with grpc.insecure_channel(node.address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        for i, (id_number, phone) in enumerate(zip(ID_NUMBERS, PHONES, strict=True)):
            assert stub.SubmitCase(request(f"dump-{i}", id_number, phone), timeout=5).created
    node.drain()  # events reach routing and stats too
    secrets = ID_NUMBERS + PHONES
    if node.settings.database_url is None:
        _assert_absent(_raw_bytes(tmp_path), secrets, "the node's SQLite files")
        return
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    libpq_url = node.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(["pg_dump", "--no-owner", libpq_url], capture_output=True, check=True, timeout=60).stdout
    assert b"CREATE TABLE" in dump
    _assert_absent(dump, secrets, "pg_dump")


# --------------------------------------------------------------------------- no leaks


def _stuffed(message: Message, id_number: str, phone: str, depth: int = 0) -> Message:
    """Every string field carries an ID number and a phone; every Person is a full one."""
    if message.DESCRIPTOR.full_name == "lianxin.common.v1.Person":
        message.name, message.id_number, message.phone = "王小明", id_number, phone  # type: ignore[attr-defined]
        return message
    for fd in message.DESCRIPTOR.fields:
        repeated = bool(fd.is_repeated)
        if fd.type == fd.TYPE_STRING:
            if "region" in fd.name or fd.name.endswith("node"):
                value = "511102"
            elif "phone" in fd.name:
                value = phone
            elif "id_number" in fd.name:
                value = id_number
            else:
                value = f"身份证{id_number}电话{phone}"
            if repeated:
                getattr(message, fd.name).append(value)
            else:
                setattr(message, fd.name, value)
        elif fd.type == fd.TYPE_MESSAGE and fd.message_type is not None and depth < 3:
            if fd.message_type.GetOptions().map_entry or fd.message_type.full_name.startswith("google.protobuf"):
                continue
            child = getattr(message, fd.name).add() if repeated else getattr(message, fd.name)
            _stuffed(child, id_number, phone, depth + 1)
    return message


def test_no_rpc_leaks_personal_data_to_logs_metrics_or_spans(tmp_path: Path) -> None:
    # The provider is process-wide and keeps the first resource; match test_grpcserver's.
    spans = setup_tracing("test", "510000", "memory")
    assert spans is not None
    spans.clear()
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    settings = Settings(node="511102", data_dir=tmp_path, auth=True, token_key=KEY, relay_interval_s=0.05)
    node = Node(settings).start()
    admin = bearer_metadata(issue_token(KEY.encode(), subject="admin-1", node="510000", roles=["admin"]))
    pool = descriptor_pool.Default()
    calls = 0
    try:
        with grpc.insecure_channel(node.address) as channel:
            intake_grpc.IntakeServiceStub(channel).SubmitCase(request("leak-0", ID_NUMBERS[0], PHONES[0]), timeout=5)
            for service in node.server.service_names if node.server else []:
                for method in pool.FindServiceByName(service).methods:
                    cls = message_factory.GetMessageClass(method.input_type)
                    body = _stuffed(cls(), ID_NUMBERS[1], PHONES[1]).SerializeToString()
                    path = f"/{service}/{method.name}"
                    identity = (lambda b: b, lambda b: b)
                    try:
                        if method.client_streaming and method.server_streaming:
                            list(channel.stream_stream(path, *identity)(iter([body]), metadata=admin, timeout=5))
                        elif method.client_streaming:
                            channel.stream_unary(path, *identity)(iter([body]), metadata=admin, timeout=5)
                        elif method.server_streaming:
                            list(channel.unary_stream(path, *identity)(body, metadata=admin, timeout=5))
                        else:
                            channel.unary_unary(path, *identity)(body, metadata=admin, timeout=5)
                    except grpc.RpcError:
                        pass  # refusals are fine; what they leave behind is what we check
                    calls += 1
        node.drain()
        port = node.metrics_port
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        node.stop(grace=1.0)
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert calls >= 30
    secrets = ID_NUMBERS + PHONES
    _assert_absent(captured.getvalue().encode(), secrets, "logs")
    _assert_absent(metrics, secrets, "/metrics")
    exported = spans.get_finished_spans()
    assert exported, "no spans were exported"
    text = "\n".join(
        repr(
            (
                span.name,
                dict(span.attributes or {}),
                span.status.description,
                [(e.name, dict(e.attributes or {})) for e in span.events],
            )
        )
        for span in exported
    )
    _assert_absent(text.encode(), secrets, "spans")


# --------------------------------------------------------------------------- audit on PostgreSQL


def test_on_postgres_the_service_role_cannot_update_or_delete_audit_rows(postgres_url: str) -> None:
    engine = make_engine(postgres_url, service="audit")
    audit = AuditLog(engine, "511102")
    audit.create()
    audit.record(actor="clerk-1", method="lianxin.intake.v1.IntakeService/SubmitCase", target="c1", outcome="OK")
    audit.record(actor="clerk-1", method="lianxin.routing.v1.RoutingService/CloseWorkOrder", target="w1", outcome="OK")
    assert audit.verify().ok
    with engine.connect() as conn:
        conn.exec_driver_sql(f'SET ROLE "{AUDIT_ROLE}"')
        conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one()  # reading is allowed
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), conn.begin_nested():
                conn.exec_driver_sql(statement)
        conn.rollback()
    # Even the owner (here a superuser) hits the append-only trigger.
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log WHERE seq = 1"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    # Tampering that bypasses the trigger (replication role) is still found by verification.
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("UPDATE audit_log SET target = 'c2' WHERE seq = 1")
    report = audit.verify()
    assert not report.ok and "record 1: contents changed" in report.problems
    engine.dispose()
    assert os.environ.get("PGPASSWORD") is None or True
