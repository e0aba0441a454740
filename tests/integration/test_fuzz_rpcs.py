"""Property-based fuzzing of every RPC of a real node: random and malformed fields never yield
INTERNAL or UNKNOWN, never stop the server, and a refused request writes nothing.

One embedded node serves the whole module over a real gRPC channel, once on SQLite and once on
PostgreSQL (which refuses NUL bytes and over-long values where SQLite stores them, so the two
must be fuzzed alike). Requests are built generically from each method's input descriptor
(tests/support/fuzz_messages.py), so an RPC added to a proto is fuzzed without touching this file, and a
test checks that the methods fuzzed are every method the node lists by reflection. Hypothesis runs
derandomized with no example database, so CI sees the same requests every run. Run with ``-s`` to
see the status codes each method answered on each backend.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lianxin.common.v1 import common_pb2, reads_pb2
from lianxin.exchange.v1 import exchange_service_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.interceptors import FIELD_METADATA_KEY
from services.common.request_rules import string_rule
from services.common.settings import Settings
from services.intake import models as intake_models
from services.node import Node
from services.routing import models as routing_models
from tests.support.fuzz_messages import assign, field_values, message_strategy
from tests.support.helpers import wait_until
from tests.support.services import fresh_postgres_database

NODE = "511102"
EXAMPLES = 20  # per method; ~60 methods keep the module well under a minute
PARTIAL_WRITE_EXAMPLES = 40
CALL_TIMEOUT_S = 10.0

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

SERVICES = [
    intake_pb2.DESCRIPTOR.services_by_name["IntakeService"],
    routing_pb2.DESCRIPTOR.services_by_name["RoutingService"],
    exchange_service_pb2.DESCRIPTOR.services_by_name["ExchangeService"],
    video_pb2.DESCRIPTOR.services_by_name["VideoService"],
    stats_service_pb2.DESCRIPTOR.services_by_name["StatsService"],
]
# Every server with query RPCs also answers ReadTogether (not a service of its own for health).
READS = reads_pb2.DESCRIPTOR.services_by_name["ReadsService"]
METHODS: list[MethodDescriptor] = [m for s in [*SERVICES, READS] for m in s.methods]
UNARY = [m for m in METHODS if not m.client_streaming and not m.server_streaming]
STREAMING = [m for m in METHODS if m.client_streaming or m.server_streaming]

# Codes a well-behaved server may answer to nonsense. INTERNAL, UNKNOWN, DEADLINE_EXCEEDED (a hang)
# and CANCELLED are bugs.
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
# Only these reach other nodes (remote video rooms are held through the owner node's HoldRoom; a
# remote consultation asks each participant's node ListFreePeriods); the seeded remote room's node
# has no address, so they may answer UNAVAILABLE.
MAY_BE_UNAVAILABLE = {
    "lianxin.video.v1.VideoService/BookVisit",
    "lianxin.video.v1.VideoService/RescheduleVisit",
    "lianxin.video.v1.VideoService/ListConsultationSlots",
    "lianxin.video.v1.VideoService/BookConsultation",
}

_TIME = "timeutil.from_timestamp calls Timestamp.ToDatetime unchecked: ValueError -> INTERNAL"
_OVERFLOW = "datetime arithmetic on a legal but extreme time: OverflowError -> INTERNAL"
# Requests (text format) the fuzzer once saw answered INTERNAL, one per bug, with the cause that
# was fixed. test_fixed_bug_request_is_refused_as_invalid_argument replays each as a regression.
FIXED_BUGS: list[tuple[str, str, str]] = [
    (
        "lianxin.routing.v1.RoutingService/ListWorkOrders",
        "states: 99",
        "routing/servicer.py:35 _domain_state: CaseState.Name(99) ValueError -> INTERNAL",
    ),
    (
        "lianxin.routing.v1.RoutingService/ListWorkOrders",
        "due_within { seconds: 315576000000 }",
        "routing/servicer.py:164 Duration.ToTimedelta / due_before arithmetic overflows -> INTERNAL",
    ),
    (
        "lianxin.routing.v1.RoutingService/Supervise",
        'case_id: "x" due_at { nanos: 1000000000 }',
        "routing/servicer.py:392 " + _TIME,
    ),
    (
        "lianxin.video.v1.VideoService/ListSlots",
        'leader_id: "L" not_before { seconds: 253402300800 }',
        "video/servicer.py:113 _time " + _TIME,
    ),
    (
        "lianxin.video.v1.VideoService/ListSlots",
        'leader_id: "L" not_before { seconds: 253402300799 }',
        "video/servicer.py:121 _window " + _OVERFLOW,
    ),
    (
        "lianxin.video.v1.VideoService/BookVisit",
        'case_id: "c" leader_id: "L" starts_at { seconds: -62135596801 }',
        "video/servicer.py:113 _time " + _TIME,
    ),
    (
        "lianxin.video.v1.VideoService/ListVisits",
        'leader_id: "L" not_before { nanos: 1000000000 }',
        "video/servicer.py:339 " + _TIME,
    ),
    (
        "lianxin.video.v1.VideoService/HoldRoom",
        'hold_id: "h" room_id: "r" requesting_node: "511100" starts_at { nanos: 1000000000 } ends_at { seconds: 1 }',
        "video/servicer.py:355 " + _TIME,
    ),
    (
        "lianxin.stats.v1.StatsService/GetMetrics",
        "period_start { seconds: -62135596801 }",
        "stats/servicer.py:59 " + _TIME,
    ),
    (
        "lianxin.stats.v1.StatsService/GetMetrics",
        "channel: 99",
        "stats/servicer.py:28 channel_name: Channel.Name(99) ValueError -> INTERNAL",
    ),
    (
        "lianxin.stats.v1.StatsService/ListHotspots",
        "as_of { seconds: -62135596800 }",
        "stats/handlers.py:301 hotspots " + _OVERFLOW,
    ),
    (
        "lianxin.stats.v1.StatsService/ListHotspots",
        "window { seconds: 9223372036854775807 }",
        "stats/servicer.py:36 _duration: timedelta OverflowError -> INTERNAL",
    ),
    ("lianxin.stats.v1.StatsService/ListHotspots", "as_of { seconds: 253402300800 }", "stats/servicer.py:166 " + _TIME),
    (
        "lianxin.stats.v1.StatsService/ListHotspots",
        "baseline { nanos: 1 }",
        "stats/hotspot.py:82 detect: window / baseline, a sub-microsecond baseline is zero: "
        "ZeroDivisionError -> INTERNAL",
    ),
    (
        "lianxin.intake.v1.IntakeService/SubmitCase",
        "channel: CHANNEL_WEB submitted_at { nanos: 1000000000 }",
        "intake/mapping.py:61 submitted_at " + _TIME,
    ),
    (
        "lianxin.intake.v1.IntakeService/ListCases",
        "submitted_after { seconds: 253402300800 }",
        "intake/servicer.py:111 " + _TIME,
    ),
]
# Methods fuzzed with tame times and enums only (while a bug is being fixed); none today.
TAMED: set[str] = set()

# Which codes each method answered per backend, for the summary printed by the last test.
OUTCOMES: dict[str, dict[str, Counter[str]]] = {}
BACKEND: list[str] = [""]  # the backend of the node the module's tests are running against now


def full_name(method: MethodDescriptor) -> str:
    return f"{method.containing_service.full_name}/{method.name}"


def shown(request: Message, limit: int = 3_000) -> str:
    text = text_format.MessageToString(request, as_utf8=True)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def response_class(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)


def call_unary(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> tuple[grpc.StatusCode, str]:
    rpc = channel.unary_unary(
        "/" + full_name(method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class(method.output_type).FromString,
    )
    try:
        rpc(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def call_stream(
    channel: grpc.Channel, method: MethodDescriptor, requests: list[Message]
) -> tuple[grpc.StatusCode, str]:
    rpc = channel.stream_stream(
        "/" + full_name(method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class(method.output_type).FromString,
    )
    try:
        list(rpc(iter(requests), timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def check_code(method: MethodDescriptor, code: grpc.StatusCode, details: str, shown_request: str) -> None:
    name = full_name(method)
    OUTCOMES.setdefault(BACKEND[0], {}).setdefault(name, Counter())[code.name] += 1
    allowed = ACCEPTABLE | ({grpc.StatusCode.UNAVAILABLE} if name in MAY_BE_UNAVAILABLE else set())
    assert code in allowed, f"{name} answered {code.name} ({details!r}) to:\n{shown_request}"


# --------------------------------------------------------------------------- the node and its seed data


# Intake limits new cases per phone (5 an hour): every valid submission here is a different citizen.
_PHONES = itertools.count(1)


def submit_request(ref: str, **overrides: Any) -> intake_pb2.SubmitCaseRequest:
    fields: dict[str, Any] = dict(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code=NODE,
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone=f"139{next(_PHONES):08d}"),
    )
    fields.update(overrides)
    return intake_pb2.SubmitCaseRequest(**fields)


class _Errors(logging.Handler):
    """ERROR records from every thread of the node (consumers, relay, timers), not just the RPC's."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


BACKGROUND_ERRORS = _Errors()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data_dir: Path = tmp_path_factory.mktemp(f"fuzz-node-{request.param}")
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgres":
            database_url = stack.enter_context(fresh_postgres_database(request.getfixturevalue("postgres_admin_url")))
        logging.getLogger().addHandler(BACKGROUND_ERRORS)
        BACKGROUND_ERRORS.records.clear()
        BACKEND[0] = request.param
        settings = Settings(node=NODE, data_dir=data_dir, database_url=database_url, relay_interval_s=0.05)
        started = Node(settings).start()
        try:
            yield started
        finally:
            started.stop(grace=1.0)
            logging.getLogger().removeHandler(BACKGROUND_ERRORS)


@pytest.fixture(scope="module")
def channel(node: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


def registered_work_order(
    channel: grpc.Channel, ref: str
) -> tuple[intake_pb2.SubmitCaseResponse, routing_pb2.WorkOrder]:
    """Submit a valid case and wait for routing to open its work order."""
    reply = intake_pb2.SubmitCaseResponse()
    reply.CopyFrom(_intake(channel).SubmitCase(submit_request(ref), timeout=CALL_TIMEOUT_S))
    found: list[routing_pb2.WorkOrder] = []

    def listed() -> bool:
        orders = _routing(channel).ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(case_id=reply.case.case_id), timeout=CALL_TIMEOUT_S
        )
        found[:] = list(orders.work_orders)
        return bool(found)

    wait_until(listed, timeout=10, message=f"a work order for {reply.case.case_id}")
    return reply, found[0]


def _intake(channel: grpc.Channel) -> intake_grpc.IntakeServiceStub:
    return intake_grpc.IntakeServiceStub(channel)


def _routing(channel: grpc.Channel) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(channel)


@pytest.fixture(scope="module")
def known(channel: grpc.Channel) -> tuple[str, ...]:
    """Real ids on the node, mixed into fuzzed strings so requests get past "not found"."""
    reply, order = registered_work_order(channel, "fuzz-seed-1")
    video = video_grpc.VideoServiceStub(channel)
    rooms = [
        video_pb2.Room(room_id="511102-T1", node=NODE, name="市中区视频接访室"),
        video_pb2.Room(room_id="511100-T1", node="511100", name="乐山市视频接访室"),
    ]
    for room in rooms:
        video.RegisterRoom(video_pb2.RegisterRoomRequest(room=room, actor="fuzz"), timeout=CALL_TIMEOUT_S)
    return (
        reply.case.case_id,
        reply.tracking_code,
        order.work_order_id,
        order.unit_id,
        "511102-T1",
        "511100-T1",
        "fuzz-seed-1",
    )


# --------------------------------------------------------------------------- every RPC, generic requests


@pytest.mark.parametrize("method", UNARY, ids=full_name)
def test_unary_rpc_never_answers_internal(
    channel: grpc.Channel, known: tuple[str, ...], method: MethodDescriptor
) -> None:
    requests = message_strategy(method.input_type, known=known, wild=full_name(method) not in TAMED)

    @FUZZ
    @given(request=requests)
    def fuzz(request: Message) -> None:
        code, details = call_unary(channel, method, request)
        check_code(method, code, details, shown(request))

    fuzz()


@pytest.mark.parametrize("method", STREAMING, ids=full_name)
def test_streaming_rpc_never_answers_internal(
    channel: grpc.Channel, known: tuple[str, ...], method: MethodDescriptor
) -> None:
    rows = st.lists(message_strategy(method.input_type, known=known, wild=full_name(method) not in TAMED), max_size=3)

    @FUZZ
    @given(requests=rows)
    def fuzz(requests: list[Message]) -> None:
        code, details = call_stream(channel, method, requests)
        check_code(method, code, details, "\n---\n".join(shown(r) for r in requests))

    fuzz()


@pytest.mark.parametrize(
    ("method_name", "request_text"),
    [pytest.param(m, text, id=f"{m.rsplit('/', 1)[1]}:{text[:40]}") for m, text, _why in FIXED_BUGS],
)
def test_fixed_bug_request_is_refused_as_invalid_argument(
    channel: grpc.Channel, method_name: str, request_text: str
) -> None:
    method = next(m for m in METHODS if full_name(m) == method_name)
    request = response_class(method.input_type)()
    text_format.Parse(request_text, request)
    code, details = call_unary(channel, method, request)
    check_code(method, code, details, request_text)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


# --------------------------------------------------------------------------- the contract's string rules

REFLECTION_AND_HEALTH = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_fuzzed_methods_are_every_method_the_node_lists_by_reflection(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    listed = {s.name for s in answer.list_services_response.service} - REFLECTION_AND_HEALTH
    pool = descriptor_pool.Default()
    reflected = {f"{name}/{m.name}" for name in listed for m in pool.FindServiceByName(name).methods}
    assert reflected == {full_name(m) for m in METHODS}


def string_fields(descriptor: Descriptor) -> list[FieldDescriptor]:
    return [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]


STRING_FIELDS = [(m, f) for m in UNARY for f in string_fields(m.input_type)]


def call_with_field(
    channel: grpc.Channel, method: MethodDescriptor, field: FieldDescriptor, value: str
) -> tuple[grpc.StatusCode, str, str]:
    """Call ``method`` with only ``field`` set to ``value``: (code, details, the field the server named)."""
    request = response_class(method.input_type)()
    if field.is_repeated:
        getattr(request, field.name).append(value)
    else:
        setattr(request, field.name, value)
    rpc = channel.unary_unary(
        "/" + full_name(method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class(method.output_type).FromString,
    )
    try:
        rpc(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        named = dict(error.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")  # type: ignore[attr-defined]
        return error.code(), error.details() or "", str(named)  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", ""


@pytest.mark.parametrize(("method", "field"), STRING_FIELDS, ids=[f"{m.name}.{f.name}" for m, f in STRING_FIELDS])
def test_nul_byte_in_any_string_field_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, method: MethodDescriptor, field: FieldDescriptor
) -> None:
    code, details, named = call_with_field(channel, method, field, "5\x00")
    check_code(method, code, details, f"{field.name}: '5\\x00'")
    expected = f"{field.name}[0]" if field.is_repeated else field.name
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, expected), details
    assert "U+0000" in details


@pytest.mark.parametrize(("method", "field"), STRING_FIELDS, ids=[f"{m.name}.{f.name}" for m, f in STRING_FIELDS])
def test_string_longer_than_the_contract_allows_is_invalid_argument(
    channel: grpc.Channel, method: MethodDescriptor, field: FieldDescriptor
) -> None:
    limit = string_rule(field).max_chars
    code, details, named = call_with_field(channel, method, field, "5" * (limit + 1))
    check_code(method, code, details, f"{field.name}: {limit + 1} characters")
    expected = f"{field.name}[0]" if field.is_repeated else field.name
    if method.name == "SubmitCase" or code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # A citizen's request over the public size limit is refused before it is parsed.
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), details
    else:
        assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, expected), details
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED or f"at most {limit} characters" in details


# --------------------------------------------------------------------------- refused means nothing written


def quiesce(node: Node) -> None:
    """Publish every pending outbox row (and what its consumers write in turn) until none is left."""
    assert node.relay_loop is not None
    for _ in range(50):
        if node.relay_loop.run_now() == 0:
            return
    raise AssertionError("outboxes did not drain")


def row_counts(
    engine: sa.Engine, tables: list[sa.Table], where: Callable[[sa.Table], Any] | None = None
) -> dict[str, int]:
    with engine.connect() as conn:
        counts = {}
        for table in tables:
            query = sa.select(sa.func.count()).select_from(table)
            if where is not None:
                query = query.where(where(table))
            counts[table.name] = int(conn.execute(query).scalar_one())
        return counts


INTAKE_TABLES: list[sa.Table] = [
    intake_models.CaseRow.__table__,  # type: ignore[list-item]
    intake_models.TimelineRow.__table__,  # type: ignore[list-item]
    intake_models.EvaluationRow.__table__,  # type: ignore[list-item]
    intake_models.outbox,
]
SUBMIT_FIELDS = list(intake_pb2.SubmitCaseRequest.DESCRIPTOR.fields)


@st.composite
def malformed_submissions(draw: st.DrawFn, known: tuple[str, ...]) -> intake_pb2.SubmitCaseRequest:
    """A valid submission with a fresh idempotency key, then one to three fields made awkward."""
    request = submit_request(f"pw-{draw(st.uuids(version=4))}")
    for field in draw(st.lists(st.sampled_from(SUBMIT_FIELDS), min_size=1, max_size=3, unique_by=lambda f: f.name)):
        request.ClearField(field.name)  # type: ignore[arg-type]
        assign(request, field, draw(field_values(field, known, wild=True)))
    return request


def submission_rows(engine: sa.Engine) -> dict[str, int]:
    """The rows a submission could write. The progress-notice sender settles notices of cases submitted
    by earlier examples on its own thread, whenever it is woken, so its settlement events are left out."""
    return row_counts(
        engine,
        INTAKE_TABLES,
        lambda table: table.c.event_type != "progress_notice_settled" if table is intake_models.outbox else sa.true(),
    )


def test_refused_submission_writes_no_row(node: Node, channel: grpc.Channel, known: tuple[str, ...]) -> None:
    engine = node.engines["intake"]
    method = intake_pb2.DESCRIPTOR.services_by_name["IntakeService"].methods_by_name["SubmitCase"]
    refused: Counter[str] = Counter()

    @settings(FUZZ, max_examples=PARTIAL_WRITE_EXAMPLES)
    @given(request=malformed_submissions(known))
    def fuzz(request: intake_pb2.SubmitCaseRequest) -> None:
        quiesce(node)
        before = submission_rows(engine)
        code, details = call_unary(channel, method, request)
        check_code(method, code, details, shown(request))
        if code is not grpc.StatusCode.OK:
            refused[code.name] += 1
            quiesce(node)
            after = submission_rows(engine)
            assert after == before, (
                f"SubmitCase answered {code.name} yet wrote rows: {before} -> {after}\n{shown(request)}"
            )

    fuzz()
    # The property is only worth something if plenty of the submissions were refused.
    assert sum(refused.values()) >= PARTIAL_WRITE_EXAMPLES // 4, refused


ROUTING = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"]
# Every RPC that changes one work order named by work_order_id.
WORK_ORDER_MUTATORS = [
    m
    for m in ROUTING.methods
    if "work_order_id" in m.input_type.fields_by_name and m.name not in ("GetWorkOrder", "ListWorkOrders")
]
ROUTING_TABLES: list[sa.Table] = [routing_models.WorkOrderHistoryRow.__table__, routing_models.outbox]  # type: ignore[list-item]


def test_refused_work_order_change_leaves_version_and_history(
    node: Node, channel: grpc.Channel, known: tuple[str, ...]
) -> None:
    _, order = registered_work_order(channel, "fuzz-partial-write-routing")
    target = order.work_order_id
    engine = node.engines["routing"]
    refused: Counter[str] = Counter()
    assert len(WORK_ORDER_MUTATORS) >= 5, [m.name for m in WORK_ORDER_MUTATORS]

    def current() -> routing_pb2.WorkOrder:
        reply = _routing(channel).GetWorkOrder(
            routing_pb2.GetWorkOrderRequest(work_order_id=target), timeout=CALL_TIMEOUT_S
        )
        work_order: routing_pb2.WorkOrder = reply.work_order
        return work_order

    @settings(FUZZ, max_examples=PARTIAL_WRITE_EXAMPLES)
    @given(
        data=st.data(),
        method=st.sampled_from(WORK_ORDER_MUTATORS),
        version=st.sampled_from(["current", "zero", "fuzzed"]),
    )
    def fuzz(data: st.DataObject, method: MethodDescriptor, version: str) -> None:
        request = data.draw(message_strategy(method.input_type, known=known), label="request")
        quiesce(node)
        before = current()
        request.work_order_id = target  # type: ignore[attr-defined]
        if "expected_version" in method.input_type.fields_by_name and version != "fuzzed":
            request.expected_version = before.version if version == "current" else 0  # type: ignore[attr-defined]
        before_rows = row_counts(engine, ROUTING_TABLES)
        code, details = call_unary(channel, method, request)
        check_code(method, code, details, shown(request))
        if code is not grpc.StatusCode.OK:
            refused[f"{method.name}:{code.name}"] += 1
            quiesce(node)
            after = current()
            assert (after.version, len(after.history)) == (before.version, len(before.history)), (
                f"{method.name} answered {code.name} yet changed the work order: version "
                f"{before.version} -> {after.version}, history {len(before.history)} -> {len(after.history)}\n"
                f"{shown(request)}"
            )
            assert row_counts(engine, ROUTING_TABLES) == before_rows, shown(request)

    fuzz()
    assert sum(refused.values()) >= PARTIAL_WRITE_EXAMPLES // 4, refused


# --------------------------------------------------------------------------- and the node still serves


def test_node_still_serves_after_fuzzing(node: Node, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *(s.full_name for s in SERVICES)]:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    # Still answers real work, not just health checks.
    reply = _intake(channel).SubmitCase(submit_request("fuzz-after"), timeout=CALL_TIMEOUT_S)
    assert reply.case.case_id.startswith(NODE + "-")
    outcomes = OUTCOMES.get(BACKEND[0], {})
    totals: Counter[str] = Counter()
    for name, codes in sorted(outcomes.items()):
        print(f"{BACKEND[0]:8} {name:58} {dict(codes)}")
        totals.update(codes)
    print(f"{BACKEND[0]:8} {sum(totals.values())} calls: {dict(totals.most_common())}")
    # An accepted request must not poison what runs after the answer (event consumers, relay,
    # timers); the RPC layer's own "unexpected error" records are the INTERNALs asserted above.
    quiesce(node)
    crashes = [r for r in BACKGROUND_ERRORS.records if r.name != "services.common.grpcserver"]
    assert not crashes, [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in crashes]
