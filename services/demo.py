"""`lianxin demo`: a scripted day of cases through a running federation, narrated for a person.

It uses only the public gRPC APIs, as a county clerk, a unit handler, a citizen and a provincial
supervisor would, against the nodes `lianxin up` started.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.personal_text import id_check_character
from services.common.regions import DEFAULT_TOPOLOGY


@dataclass
class Stubs:
    intake: intake_grpc.IntakeServiceStub
    routing: routing_grpc.RoutingServiceStub
    stats: stats_grpc.StatsServiceStub
    exchange: exchange_grpc.ExchangeServiceStub
    video: video_grpc.VideoServiceStub


def _stubs(address: str, connect: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> Stubs:
    channel = connect(address)
    return Stubs(
        intake_grpc.IntakeServiceStub(channel),
        routing_grpc.RoutingServiceStub(channel),
        stats_grpc.StatsServiceStub(channel),
        exchange_grpc.ExchangeServiceStub(channel),
        video_grpc.VideoServiceStub(channel),
    )


def resident_id(serial: int) -> str:
    """A well-formed resident ID number (GB 11643) for a made-up representative."""
    first17 = f"51110219800101{serial % 1000:03d}"
    return first17 + id_check_character(first17)


def consultation_units(
    host: Stubs, host_code: str, host_unit: str, other: Stubs, other_code: str, other_unit: str, tag: str
) -> list[video_pb2.ConsultationParticipant]:
    """A consultation room at each node (the other node's known to the host too) and the two units
    that join from them (远程会商)."""
    host_room, other_room = f"{host_code}-HS-{tag}", f"{other_code}-HS-{tag}"
    for stubs, room, code in (
        (host, host_room, host_code),
        (other, other_room, other_code),
        (host, other_room, other_code),
    ):
        stubs.video.RegisterRoom(
            video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=room, node=code, name="会商室")), timeout=5
        )
    return [
        video_pb2.ConsultationParticipant(node=host_code, unit_id=host_unit, room_id=host_room),
        video_pb2.ConsultationParticipant(node=other_code, unit_id=other_unit, room_id=other_room),
    ]


def reception_rooms(host: Stubs, host_code: str, terminal: Stubs, terminal_code: str, leader: str, tag: str) -> str:
    """A leader of ``host`` receiving on weekday mornings in the host's room, and a terminal room at
    ``terminal`` for a joint reception; returns the terminal room's id."""
    host_room, terminal_room = f"{host_code}-{tag}", f"{terminal_code}-{tag}"
    host.video.RegisterRoom(
        video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=host_room, node=host_code)), timeout=5
    )
    # The terminal is the other node's room, known to both: the host holds it there (HoldRoom).
    for stubs in (terminal, host):
        stubs.video.RegisterRoom(
            video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=terminal_room, node=terminal_code)), timeout=5
        )
    host.video.PublishSchedule(
        video_pb2.PublishScheduleRequest(
            actor="admin",
            schedule=video_pb2.Schedule(
                leader_id=leader,
                node=host_code,
                weekly_patterns=[
                    video_pb2.WeeklyPattern(weekday=day, start_time="09:00", end_time="12:00") for day in range(1, 6)
                ],
                slot_minutes=30,
                buffer_minutes=10,
                max_per_session=6,
                room_ids=[host_room],
            ),
        ),
        timeout=5,
    )
    return terminal_room


def _visit_state(value: int) -> str:
    return video_pb2.VisitState.Name(video_pb2.VisitState.ValueType(value)).removeprefix("VISIT_STATE_")


def _wait(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except grpc.RpcError:
            result = None
        if result:
            return result
        time.sleep(0.2)  # polling a condition with a deadline
    raise TimeoutError(f"demo: gave up waiting for {what}")


def _state(value: int) -> str:
    return common_pb2.CaseState.Name(common_pb2.CaseState.ValueType(value)).removeprefix("CASE_STATE_")


def _grown(stubs: Stubs, region: str, before: int) -> Callable[[], int]:
    """The region's received count once it is above ``before`` (0 until then)."""

    def check() -> int:
        now = _received(stubs, region)
        return now if now > before else 0

    return check


def _work_order(stubs: Stubs, case_id: str) -> routing_pb2.WorkOrder | None:
    found = stubs.routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5).work_orders
    return found[0] if found else None


def _received(stubs: Stubs, region: str) -> int:
    reply = stubs.stats.GetMetrics(stats_pb2.GetMetricsRequest(region_code=region, metrics=["received"]), timeout=5)
    return int(reply.metrics[0].numerator)


def run(base_port: int = 7400, say: Callable[[str], None] = print, *, secure_data_dir: Path | None = None) -> int:
    """The scripted day; ``secure_data_dir``: the data directory of `lianxin up --secure` (its CA,
    certificates and token keys), so every call goes over mutual TLS with the node's admin token."""
    from services.federation import Federation

    federation = Federation(
        data_dir=secure_data_dir or Path("var"), base_port=base_port, secure=secure_data_dir is not None
    )
    day = DemoDay(base_port, say, federation.operator_channel)
    # On a first start the nodes train the category model from messages.csv (a few seconds).
    _wait(
        "the category model",
        lambda: day.county.intake.ClassifyText(intake_pb2.ClassifyTextRequest(text="噪音扰民"), timeout=5).category,
        timeout=90,
    )
    called = day.hotline_call()
    if called is None:
        return 1
    call, work_order = called
    day.unit_replies(work_order)
    day.citizen_tracks_and_rates(call.tracking_code)
    letter, handed = day.letter_handed_down()
    day.video_visit(letter.case_id)
    day.consultation(letter.case_id, handed.unit_id)
    day.national_transfer()
    day.statistics()
    return day.reconciled()


class DemoDay:
    """The demo's scenes, in the order of a working day, over the six nodes' operator channels."""

    def __init__(self, base_port: int, say: Callable[[str], None], connect: Callable[[str], grpc.Channel]) -> None:
        self.base_port = base_port
        self.say = say
        self.connect = connect
        address = {code: f"127.0.0.1:{base_port + i}" for i, (code, _parent) in enumerate(DEFAULT_TOPOLOGY)}
        self.county, self.city, self.province, self.shawan = (
            _stubs(address[c], connect) for c in ("511102", "511100", "510000", "511111")
        )
        self.run_id = uuid.uuid4().hex[:6]
        self.before = {code: _received(_stubs(address[code], connect), code) for code in ("511102", "511100", "510000")}

    def hotline_call(self) -> tuple[intake_pb2.SubmitCaseResponse, routing_pb2.WorkOrder] | None:
        self.say("08:30 市中区 12345 hotline: a caller reports night-time construction noise")
        call = self.county.intake.SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_HOTLINE,
                channel_ref=f"demo-{self.run_id}-call-1",
                title="小区门口夜间施工噪音扰民",
                body="乐山市市中区嘉州大道某小区门口连续多晚施工到凌晨，噪音严重影响休息。",
                hotline_operator_id="op-017",
                complainant=common_pb2.Person(name="王五", phone="13912345678"),
            ),
            timeout=10,
        )
        case = call.case
        self.say(
            f"      registered {case.case_id}, tracking code {call.tracking_code}, "
            f"category {case.category or '(clerk)'}, place {case.region_code or '(clerk)'}"
        )
        if not case.region_code or not case.category:
            self.say("      (the category model is still training on first start; run the demo again in a few seconds)")
            return None
        work_order = _wait("the county's work order", lambda: _work_order(self.county, case.case_id))
        assert isinstance(work_order, routing_pb2.WorkOrder)
        self.say(f"      routed to unit {work_order.unit_id}: {_state(work_order.state)}")
        for deadline in work_order.deadlines:
            self.say(f"      deadline {deadline.kind}: {deadline.due_at.ToDatetime():%Y-%m-%d %H:%M} UTC")
        return call, work_order

    def unit_replies(self, work_order: routing_pb2.WorkOrder) -> None:
        self.say("09:10 the unit signs for it and replies in the afternoon")
        version = work_order.version
        accepted = self.county.routing.AcceptWorkOrder(
            routing_pb2.AcceptWorkOrderRequest(work_order_id=work_order.work_order_id, actor="handler-hb", note="签收"),
            timeout=5,
        ).work_order
        replied = self.county.routing.ReplyWorkOrder(
            routing_pb2.ReplyWorkOrderRequest(
                work_order_id=work_order.work_order_id,
                actor="handler-hb",
                expected_version=accepted.version,
                text="已责令施工单位夜间停工，城管执法大队将持续巡查。",
            ),
            timeout=5,
        ).work_order
        self.say(
            f"      work order {_state(accepted.state)} → {_state(replied.state)} "
            f"(version {version} → {replied.version})"
        )

    def citizen_tracks_and_rates(self, tracking_code: str) -> None:
        self.say("15:00 the citizen looks the case up with the tracking code and the last four phone digits")
        track = _wait(
            "the reply on the public timeline",
            lambda: (
                t
                if (
                    t := self.county.intake.TrackCase(
                        intake_pb2.TrackCaseRequest(tracking_code=tracking_code, phone_last4="5678"), timeout=5
                    )
                ).can_evaluate
                else None
            ),
        )
        assert isinstance(track, intake_pb2.TrackCaseResponse)
        for entry in track.timeline:
            self.say(f"      {entry.at.ToDatetime():%H:%M:%S} {_state(entry.state):<12} {entry.summary}")
        self.county.intake.EvaluateCase(
            intake_pb2.EvaluateCaseRequest(
                tracking_code=tracking_code,
                phone_last4="5678",
                satisfaction=common_pb2.SATISFACTION_SATISFIED,
                comment="处理及时",
            ),
            timeout=5,
        )
        self.say("      rated: satisfied")

    def letter_handed_down(self) -> tuple[common_pb2.Case, routing_pb2.WorkOrder]:
        self.say("10:00 a letter reaches the province about a road in 沙湾区 (乐山): it is handed down two tiers")
        letter = self.province.intake.SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=f"demo-{self.run_id}-web-1",
                title="沙湾区某乡道路面塌陷",
                body="乐山市沙湾区某乡通村道路路面塌陷，车辆无法通行，请尽快修复。",
                category="交通运输",
                anonymous=True,
            ),
            timeout=10,
        ).case
        self.say(f"      registered at the province as {letter.case_id}, place {letter.region_code}")
        handed = _wait("the work order at 沙湾区", lambda: _work_order(self.shawan, letter.case_id), timeout=30)
        assert isinstance(handed, routing_pb2.WorkOrder)
        self.say(f"      沙湾区 now owns it: unit {handed.unit_id}, {_state(handed.state)}")
        return letter, handed

    def video_visit(self, case_id: str) -> None:
        self.say("11:00 乐山市's leader receives the road's petitioners by video, jointly with 沙湾区's terminal room")
        terminal = reception_rooms(
            self.city, "511100", self.shawan, "511111", f"lss-leader-{self.run_id}", f"demo-{self.run_id}"
        )
        visit = self.city.video.BookVisit(
            video_pb2.BookVisitRequest(
                case_id=case_id, actor="city-clerk", leader_id=f"lss-leader-{self.run_id}", room_ids=[terminal]
            ),
            timeout=15,
        ).visit
        self.say(
            f"      booked {visit.visit_id} for {visit.starts_at.ToDatetime():%Y-%m-%d %H:%M} UTC: "
            f"{_visit_state(visit.state)}"
        )
        checked = self.city.video.CheckIn(
            video_pb2.CheckInRequest(
                visit_id=visit.visit_id,
                actor="city-clerk",
                representatives=[common_pb2.Person(name="赵六", id_number=resident_id(int(self.run_id, 16)))],
            ),
            timeout=5,
        ).visit
        done = self.city.video.RecordOutcome(
            video_pb2.RecordOutcomeRequest(
                visit_id=visit.visit_id,
                actor=f"lss-leader-{self.run_id}",
                minutes="群众反映乡道路面塌陷，影响出行。",
                decisions="责成沙湾区交通运输局十日内抢修并报告。",
            ),
            timeout=5,
        ).visit
        self.say(
            f"      {_visit_state(checked.state)} with 1 representative, "
            f"then {_visit_state(done.state)}: outcome recorded"
        )

    def consultation(self, case_id: str, unit_id: str) -> None:
        self.say(
            "11:30 乐山市交通运输局 and 沙湾区's unit consult by video about the road (远程会商, without the citizen)"
        )
        units = consultation_units(
            self.city, "511100", "lsj-jtj", self.shawan, "511111", unit_id, f"demo-{self.run_id}"
        )
        consulted = self.city.video.BookConsultation(
            video_pb2.BookConsultationRequest(
                case_id=case_id, actor="city-clerk", topic="乡道塌陷抢修的市区分工", participants=units
            ),
            timeout=20,
        ).consultation
        self.city.video.RecordConsultationMinutes(
            video_pb2.RecordConsultationMinutesRequest(
                consultation_id=consulted.consultation_id,
                actor="city-clerk",
                minutes="沙湾区交通运输局负责抢修，市交通运输局督导并协调资金。",
            ),
            timeout=5,
        )
        self.say(
            f"      booked {consulted.consultation_id} at the earliest common slot "
            f"{consulted.starts_at.ToDatetime():%Y-%m-%d %H:%M} UTC; minutes recorded, on 沙湾区's case history"
        )

    def national_transfer(self) -> None:
        self.say("14:00 the national system transfers (转送) a case about 市中区 to the province")
        national = national_grpc.NationalServiceStub(
            self.connect(f"127.0.0.1:{self.base_port + len(DEFAULT_TOPOLOGY)}")
        )
        national.SubmitTransfer(
            national_pb2.SubmitTransferRequest(
                province_code="510000",
                transfer=national_pb2.NationalTransfer(
                    national_case_id=f"DEMO{self.run_id}",
                    title="国家转送：市中区某小区供暖不热",
                    body="群众通过国家信访信息系统反映乐山市市中区某小区冬季供暖不热。",
                    category="城乡建设",
                    region_code="511102",
                ),
            ),
            timeout=5,
        )
        transferred = _wait(
            "the national transfer at 市中区", lambda: _work_order(self.county, f"N-DEMO{self.run_id}"), timeout=60
        )
        assert isinstance(transferred, routing_pb2.WorkOrder)
        self.say(f"      N-DEMO{self.run_id} reached 市中区 through 四川省 and 乐山市: {_state(transferred.state)}")

    def statistics(self) -> None:
        self.say("17:30 the statistics of every tier include the county's case")
        for code, stubs in (("511102", self.county), ("511100", self.city), ("510000", self.province)):
            now = _wait(f"stats at {code}", _grown(stubs, code, self.before[code]))
            self.say(f"      {code}: received {now} (was {self.before[code]})")
        for link in self.county.exchange.LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links:
            state = exchange_pb2.LinkState.Name(link.state)
            self.say(f"      link 511102 → {link.peer_node}: {state}, lag {link.lag_events} events")

    def reconciled(self) -> int:
        self.say("18:00 every tier holds the same cases (lianxin reconcile)")
        from services.exchange.reconcile import federation_pairs, reconcile, settled

        report = settled(
            federation_pairs(self.base_port, DEFAULT_TOPOLOGY),
            wait_s=30,
            run=lambda pairs: reconcile(pairs, self.connect),
        )
        for divergence in report.divergences:
            self.say(f"      {divergence.line()}")
        self.say(f"      {report.summary()}")
        self.say("done.")
        return 0 if not report.divergences else 1
