"""Personal data a citizen writes into the text of a request survives nowhere in plaintext: not in
any table of any service at the county that registered it, nor at its parent that holds the
replica (SQLite and PostgreSQL), nor in the logs. The submitter's own answer keeps the original,
the case's place is kept apart from the complainant's home, and a handling unit sees the place.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.timeutil import to_timestamp
from services.exchange.package import Package, open_package, signing_key
from services.node import Node
from tests.support.exchange_nodes import Start, exchange, linked_nodes
from tests.support.helpers import wait_until

NAME, ID_NUMBER, MOBILE = "赵大海", "511102198805051231", "13700137000"
HOME = "乐山市市中区春华路5号"
SECRETS = (NAME, ID_NUMBER, MOBILE, HOME)
TITLE = f"我是{NAME}，反映小区门口夜间施工噪音"
BODY = f"我是{NAME}，身份证{ID_NUMBER}，电话{MOBILE}。嘉州大道某小区门口夜间施工，噪音扰民，请处理。{NAME}"
PLACE = f"嘉州大道88号小区门口（联系{MOBILE}）"


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def plaintext_in_tables(node: Node) -> list[str]:
    """Every (service.table.column) of every table of every service of ``node`` holding a secret."""
    hits: list[str] = []
    needles = [(s, s.encode()) for s in SECRETS]
    for service, engine in node.engines.items():
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')).mappings():
                    for column, value in row.items():
                        if isinstance(value, memoryview):
                            value = bytes(value)
                        for text, raw in needles:
                            if (isinstance(value, str) and text in value) or (
                                isinstance(value, bytes) and raw in value
                            ):
                                hits.append(f"{node.code} {service}.{table}.{column}: {text[:2]}…")
    return hits


def exported_package(node: Node, tmp_path: Path) -> Package:
    out = tmp_path / f"{node.code}.lxpkg"
    env = {
        **os.environ,
        "LIANXIN_NODE": node.code,
        "LIANXIN_DATA_DIR": str(node.settings.data_dir),
        "LIANXIN_DATABASE_URL": node.settings.database_url or "",
    }
    subprocess.run(
        [sys.executable, "-m", "services.cli", "exchange", "export", "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return open_package(out.read_bytes(), key=signing_key(Path(node.settings.data_dir) / node.code, production=False))


def operators_write_what_the_citizen_told_them(
    channel: grpc.Channel, case_id: str, order: routing_pb2.WorkOrder | None
) -> None:
    """A work-order note, a reply, a 督办 demand and video minutes, each repeating the citizen's data:
    the handlers get the masked text (the edge masks an operator's free text), so none is stored."""
    assert order is not None
    routing = routing_grpc.RoutingServiceStub(channel)
    accepted = routing.AcceptWorkOrder(
        routing_pb2.AcceptWorkOrderRequest(
            work_order_id=order.work_order_id, actor="unit-1", note=f"联系人{NAME}，电话{MOBILE}，已电话沟通"
        ),
        timeout=5,
    ).work_order
    assert accepted.work_order_id == order.work_order_id
    routing.ReplyWorkOrder(
        routing_pb2.ReplyWorkOrderRequest(
            work_order_id=order.work_order_id,
            actor="unit-1",
            text=f"投诉人{NAME}（身份证{ID_NUMBER}）反映的施工噪音已责令整改。",
        ),
        timeout=5,
    )
    routing.Supervise(
        routing_pb2.SuperviseRequest(
            case_id=case_id,
            actor="office",
            level="chase",
            demand=f"请三日内答复，联系人{NAME}，电话{MOBILE}",
            due_at=to_timestamp(datetime.now(UTC) + timedelta(days=3)),
        ),
        timeout=5,
    )
    video = video_grpc.VideoServiceStub(channel)
    video.RegisterRoom(
        video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id="511102-R1", node="511102", name="接访室"))
    )
    video.PublishSchedule(
        video_pb2.PublishScheduleRequest(
            actor="admin",
            schedule=video_pb2.Schedule(
                leader_id="leader-1",
                node="511102",
                weekly_patterns=[
                    video_pb2.WeeklyPattern(weekday=w, start_time="09:00", end_time="12:00") for w in (1, 3, 5)
                ],
                slot_minutes=30,
                buffer_minutes=10,
                max_per_session=4,
                room_ids=["511102-R1"],
            ),
        ),
        timeout=5,
    )
    visit = video.BookVisit(
        video_pb2.BookVisitRequest(case_id=case_id, actor="clerk", leader_id="leader-1"), timeout=5
    ).visit
    recorded = video.RecordOutcome(
        video_pb2.RecordOutcomeRequest(
            visit_id=visit.visit_id,
            actor="leader",
            minutes=f"反映人{NAME}（身份证{ID_NUMBER}，电话{MOBILE}）到场反映夜间施工噪音。",
            decisions=f"责成区环保局一周内处理，结果告知{MOBILE}",
        ),
        timeout=5,
    ).visit
    assert recorded.minutes.startswith("反映人赵**（身份证511102********1231") and MOBILE not in recorded.decisions


def test_personal_data_in_the_text_is_sealed_at_the_county_and_masked_everywhere_above(
    start: Start, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    city = start("511100")
    county = start("511102", city)
    with grpc.insecure_channel(county.address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref="pii-in-text-1",
                title=TITLE,
                body=BODY,
                category="环境保护",
                region_code="511102",
                address=PLACE,
                complainant=common_pb2.Person(name=NAME, id_number=ID_NUMBER, phone=MOBILE, address=HOME),
            ),
            timeout=10,
        )
        case_id = reply.case.case_id
        # The submitter's own answer: the words as written, and the home apart from the place.
        assert (reply.case.title, reply.case.body) == (TITLE, BODY)
        assert reply.case.complainant.address == HOME
        assert reply.case.address.startswith("嘉州大道88号小区门口") and MOBILE not in reply.case.address

        # Everybody else reads the masked text; the place of the matter stays visible.
        seen = intake_grpc.IntakeServiceStub(channel).GetCase(intake_pb2.GetCaseRequest(case_id=case_id), timeout=5)
        assert seen.case.title == "我是赵**，反映小区门口夜间施工噪音"
        assert not any(secret in seen.case.body for secret in SECRETS), seen.case.body
        assert seen.case.address.startswith("嘉州大道88号") and seen.case.complainant.address == ""

        def work_order() -> routing_pb2.WorkOrder | None:
            listed = routing_grpc.RoutingServiceStub(channel).ListWorkOrders(
                routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5
            )
            return listed.work_orders[0] if listed.work_orders else None

        wait_until(lambda: work_order() is not None, 15, "the county's work order")
        operators_write_what_the_citizen_told_them(channel, case_id, work_order())
        # The citizen's rating of the reply holds the number again: masked as it arrives.
        evaluation = intake_pb2.EvaluateCaseRequest(
            tracking_code=reply.tracking_code,
            phone_last4=MOBILE[-4:],
            satisfaction=common_pb2.SATISFACTION_SATISFIED,
            comment=f"已解决，谢谢，有事打{MOBILE}",
        )

        def evaluated() -> bool:
            try:  # the reply reaches intake through routing's event first
                intake_grpc.IntakeServiceStub(channel).EvaluateCase(evaluation, timeout=5)
                return True
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return False

        wait_until(evaluated, 20, "the citizen's evaluation of the reply")

    def replicated() -> bool:
        held = exchange(city).ListReplicas(exchange_pb2.ListReplicasRequest(case_id=case_id), timeout=5)
        # the registration, the work order, acceptance, reply, supervision, the visit and its outcome,
        # and the evaluation
        return bool(held.count >= 8)

    wait_until(replicated, 20, "the case's events at the city")
    county.drain()
    city.drain()

    leaks = plaintext_in_tables(county) + plaintext_in_tables(city)
    assert leaks == []
    # The offline package of the county's changes (lianxin exchange export) carries the masked text.
    package = exported_package(county, tmp_path)
    assert package.items and not [s for _, body, _ in package.items for s in SECRETS if s.encode() in body]
    logged = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    assert not [secret for secret in SECRETS if secret in logged]
