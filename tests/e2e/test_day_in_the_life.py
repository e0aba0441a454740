"""A day in the life of the six-node federation (issue 16), on SQLite and on PostgreSQL, and secure.

Six node processes as `lianxin up` runs them (四川省; 乐山市 with 市中区 and 沙湾区; 成都市 with 锦江区)
and the national simulator above the province. The day drives every state-changing RPC of the
contract across the tiers — intake on five channels, a 领导留言板 import and a moderated case, 交办
down two tiers automatically and by hand, 上报, objection and arbitration, extension, pause, replies,
an unsatisfied rating that reopens, a reopen and a 复查, closing, withdrawal, 不予受理, a provincial
督办, a joint video reception with check-in and outcome (and a visit moved and cancelled), a national
transfer in and an offline package — and then asserts that every tier holds the same (`lianxin
reconcile`: 0 divergences), that nothing is quarantined anywhere, and that for every rate the
province's numerator and denominator are the sums of the cities' own warehouses (and each parent's
view of a child region is the child's own figure). The figures are printed (pytest -s) for the report.

The secure run is `lianxin up --secure` (issue 19): one CA, each node and the national simulator with
its own certificate, mutual TLS on every link and client, and every call here made as the node's own
admin token — the same day, the same checks.

Left out, and why: `LoadCalendar` (the calendar's own tests load a year into this federation),
`ReplayQuarantine` / `DiscardQuarantine` (a clean day quarantines nothing; the exchange tests cover
them), the node-to-node `PushEvents`/`PullDown`/`AckDown`/`HoldRoom`/`ConfirmHold`/`ReleaseHold` and
national `ReportCases`/`FetchTransfers`/`AckTransfers` (driven here by the links and the joint
booking, not called by hand).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2

from services.cli import main
from services.common.timeutil import to_timestamp
from services.demo import Stubs, consultation_units, reception_rooms, resident_id
from services.demo import _stubs as stubs_for
from services.exchange.package import CHILD_KEYS_DIR, KEY_FILE
from services.exchange.reconcile import federation_pairs, reconcile, settled
from services.federation import BUSINESS_SERVICES, DEFAULT_TOPOLOGY, Federation, health_statuses
from services.stats.domain import COUNT_METRICS, REGISTERING_NODE_METRICS
from tests.support.helpers import free_port_block, wait_until

S = common_pb2
CITIES = ("511100", "510100")
CHILD_NODES = {"510000": CITIES, "511100": ("511102", "511111"), "510100": ("510104",)}
# A percentile is not a sum of its parts (its denominator is).
NOT_ADDITIVE = frozenset({"p90_reply_workdays"})
COUNTS = COUNT_METRICS  # counts have the denominator 1 at every node: not summed
WAIT_S = 60.0


# "-secure": mutual TLS everywhere (the national simulator too) and an admin token per node.
@pytest.fixture(params=["sqlite", "postgres", "sqlite-secure"])
def federation(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    backend, _, mode = str(request.param).partition("-")
    env = {"LIANXIN_LOG_LEVEL": "WARNING", "LIANXIN_INTAKE_CLASSIFIER": "off"}
    admin: sa.Engine | None = None
    names: list[str] = []
    if backend == "postgres":
        admin = sa.create_engine(str(request.getfixturevalue("postgres_admin_url")), isolation_level="AUTOCOMMIT")
        run = uuid.uuid4().hex[:8]
        names = [f"lianxin_day_{run}_{code}" for code, _ in DEFAULT_TOPOLOGY]
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        # One database per node ({node}), one schema per service inside it.
        url = admin.url.set(database=f"lianxin_day_{run}_NODE").render_as_string(False)
        env["LIANXIN_DATABASE_URL"] = url.replace("_NODE", "_{node}")  # set() would percent-encode the braces
    base = free_port_block(2 * len(DEFAULT_TOPOLOGY) + 1)
    fed = Federation(
        data_dir=Path(tmp_path_factory.mktemp(f"day-{request.param}")),
        base_port=base,
        metrics_base_port=base + len(DEFAULT_TOPOLOGY) + 1,
        extra_env=env,
        secure=mode == "secure",
    )
    try:
        fed.start(ready_timeout_s=180)
        yield fed
    finally:
        fed.stop()
        if admin is not None:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@dataclass
class Case:
    """A registered case and what its citizen needs to follow it where it was registered."""

    case_id: str
    at: str  # registering node
    code: str = ""
    last4: str = ""


@dataclass
class Day:
    fed: Federation
    node: dict[str, Stubs]
    registered: list[Case] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # RPCs driven, for the report

    def call(self, rpc: str, result: object) -> object:
        self.done.append(rpc)
        return result

    # -- intake ----------------------------------------------------------------------------------

    def submit(
        self, at: str, channel: int, ref: str, *, region: str, category: str, title: str, body: str = ""
    ) -> Case:
        phone = f"139{abs(hash(ref)) % 100_000_000:08d}"
        reply = self.node[at].intake.SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=channel,  # type: ignore[arg-type]
                channel_ref=ref,
                title=title,
                body=body or f"{title}，请有关部门尽快处理。",
                category=category,
                region_code=region,
                hotline_operator_id="op-1" if channel == S.CHANNEL_HOTLINE else "",
                complainant=S.Person(
                    name="张三", phone=phone, address="乐山市市中区嘉州大道1号" if channel == S.CHANNEL_LETTER else ""
                ),
            ),
            timeout=15,
        )
        self.done.append("SubmitCase")
        case = Case(reply.case.case_id, at, reply.tracking_code, phone[-4:])
        if case.case_id:
            self.registered.append(case)
        return case

    def track(self, case: Case) -> intake_pb2.TrackCaseResponse:
        reply: intake_pb2.TrackCaseResponse = self.node[case.at].intake.TrackCase(
            intake_pb2.TrackCaseRequest(tracking_code=case.code, phone_last4=case.last4), timeout=5
        )
        return reply

    def wait(self, predicate: Callable[[], object], message: str, case_id: str) -> None:
        """``wait_until``, and on a timeout the case as every tier holds it (the failure says where it stopped)."""
        try:
            wait_until(predicate, WAIT_S, message)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}\n{self.where_is(case_id)}") from None

    def where_is(self, case_id: str) -> str:
        """Work orders, held events, quarantine and links of every node, for one case."""
        lines = [f"-- {case_id} at every tier:"]
        for code, stubs in self.node.items():
            try:
                orders = stubs.routing.ListWorkOrders(
                    routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5
                ).work_orders
                held = stubs.exchange.ListReplicas(
                    exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=500), timeout=5
                ).entries
                quarantined = stubs.exchange.ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
                links = stubs.exchange.LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
                supervisions = stubs.routing.ListSupervisions(
                    routing_pb2.ListSupervisionsRequest(case_id=case_id), timeout=5
                ).supervisions
            except grpc.RpcError as error:
                lines.append(f"{code}: {error.code().name}")  # type: ignore[attr-defined]
                continue
            lines.append(
                f"{code}: work orders "
                + ", ".join(f"{w.node}/{S.CaseState.Name(w.state)} v{w.version}" for w in orders)
            )
            lines += [
                f"  history {w.node}: "
                + ", ".join(
                    f"{h.action}->{S.CaseState.Name(h.to_state).removeprefix('CASE_STATE_')}" for h in w.history
                )
                for w in orders
            ]
            lines.append(
                "  holds "
                + ", ".join(f"#{e.case_sequence} {e.event_type} v{e.version} from {e.origin_node}" for e in held)
            )
            lines += [f"  supervision {v.supervision_id} by {v.by_node} {v.level}" for v in supervisions]
            lines += [f"  quarantine {q.peer_node}: {q.payload_summary}: {q.reason}" for q in quarantined]
            lines += [
                f"  link {x.peer_node} {exchange_pb2.LinkDirection.Name(x.direction)} lag {x.lag_events}"
                f" acked {x.acked_position} {exchange_pb2.LinkState.Name(x.state)}"
                for x in links
            ]
        lines.append("outboxes not yet published (rows, oldest age s): " + self.backlogs())
        for case in self.registered:
            if case.case_id == case_id and case.code:
                seen = self.track(case)
                lines.append(
                    f"{case.at} TrackCase: {S.CaseState.Name(seen.state)} reply {seen.reply_text!r}"
                    f" can_evaluate {seen.can_evaluate}"
                )
        return "\n".join(lines)

    def backlogs(self) -> str:
        """Each node's services' outbox rows still to publish: a relay behind shows here, not in the links."""
        out = []
        for node in self.fed.nodes:
            for service in ("exchange", "intake", "routing", "stats"):
                url = self.fed.extra_env.get("LIANXIN_DATABASE_URL", "")
                if url:
                    engine = sa.create_engine(url.format(node=node.code), poolclass=sa.pool.NullPool)
                    table = f'"{service}".outbox'
                else:
                    engine = sa.create_engine(f"sqlite:///{self.fed.data_dir / node.code / f'{service}.db'}")
                    table = "outbox"
                try:
                    with engine.connect() as conn:
                        rows, oldest = conn.execute(
                            sa.text(f"SELECT count(*), min(created_at) FROM {table} WHERE published_at IS NULL")
                        ).one()
                finally:
                    engine.dispose()
                if rows:
                    at = datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest
                    age = datetime.now(UTC) - (at if at.tzinfo else at.replace(tzinfo=UTC))
                    out.append(f"{node.code}/{service} {rows} ({age.total_seconds():.0f})")
        return ", ".join(out) or "none"

    def rate(self, case: Case, satisfaction: int, comment: str) -> None:
        self.wait(lambda: self.track(case).can_evaluate, f"{case.case_id} ready to rate at {case.at}", case.case_id)
        self.node[case.at].intake.EvaluateCase(
            intake_pb2.EvaluateCaseRequest(
                tracking_code=case.code,
                phone_last4=case.last4,
                satisfaction=satisfaction,  # type: ignore[arg-type]
                comment=comment,
            ),
            timeout=5,
        )
        self.done.append("EvaluateCase")

    # -- routing ---------------------------------------------------------------------------------

    def order(self, at: str, case_id: str) -> routing_pb2.WorkOrder | None:
        found = self.node[at].routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), timeout=5)
        mine = [w for w in found.work_orders if w.node == at and w.state != S.CASE_STATE_TRANSFERRED]
        return mine[0] if mine else None

    def wait_order(self, at: str, case_id: str, *states: int) -> routing_pb2.WorkOrder:
        def ready() -> routing_pb2.WorkOrder | None:
            found = self.order(at, case_id)
            return found if found is not None and (not states or found.state in states) else None

        self.wait(lambda: ready() is not None, f"{case_id} at {at} in {states or 'any state'}", case_id)
        got = ready()
        assert got is not None
        return got

    def act(self, at: str, rpc: str, request: object) -> routing_pb2.WorkOrder:
        reply = getattr(self.node[at].routing, rpc)(request, timeout=10)
        self.done.append(rpc)
        return reply.work_order  # type: ignore[no-any-return]

    def start_and_reply(self, at: str, case_id: str, text: str) -> routing_pb2.WorkOrder:
        order = self.wait_order(at, case_id, S.CASE_STATE_ASSIGNED, S.CASE_STATE_REOPENED)
        wo = order.work_order_id
        self.act(at, "AcceptWorkOrder", routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="handler"))
        return self.act(
            at, "ReplyWorkOrder", routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="handler", text=text)
        )


def metrics(stubs: Stubs, region: str) -> dict[str, tuple[int, int]]:
    reply = stubs.stats.GetMetrics(stats_pb2.GetMetricsRequest(region_code=region), timeout=10)
    return {m.name: (int(m.numerator), int(m.denominator)) for m in reply.metrics}


def additive(figures: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    # The registering node's notices (办事进度推送) count there and above only: not a sum of the children's.
    return {
        n: (0 if n in NOT_ADDITIVE else a, 0 if n in COUNTS else b)
        for n, (a, b) in figures.items()
        if n not in REGISTERING_NODE_METRICS
    }


def summed(parts: list[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for part in parts:
        for name, (num, den) in additive(part).items():
            was = out.get(name, (0, 0))
            out[name] = (was[0] + num, was[1] + den)
    return out


# Six node processes started and about a hundred RPCs across them: on a loaded machine (or with
# PostgreSQL's connection slots taken for a moment at start) more than the suite's 300 s per test.
@pytest.mark.timeout(600)
def test_a_day_in_the_life_of_the_federation(federation: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    # Secure: each node's certificate and admin token (the simulator: its own certificate); else plaintext.
    connect = federation.operator_channel
    day = Day(federation, {n.code: stubs_for(n.address, connect) for n in federation.nodes})
    run = uuid.uuid4().hex[:6]
    national = national_grpc.NationalServiceStub(connect(federation.national_address or ""))
    if federation.secure:  # and nothing below could have gone in plaintext
        assert set(health_statuses(federation.nodes[0].address, BUSINESS_SERVICES).values()) == {"UNREACHABLE"}

    # 08:00 intake on every channel, at every tier.
    hotline = day.submit(
        "511102", S.CHANNEL_HOTLINE, f"h-{run}", region="511102", category="环境保护", title="夜间施工噪音扰民"
    )
    letter_down = day.submit(
        "510000", S.CHANNEL_WEB, f"p-{run}", region="511111", category="交通运输", title="沙湾区乡道路面塌陷"
    )
    app_case = day.submit(
        "510100", S.CHANNEL_APP, f"j-{run}", region="510104", category="城乡建设", title="锦江区老旧小区电梯停运"
    )
    wechat = day.submit(
        "511100", S.CHANNEL_WECHAT, f"c-{run}", region="511100", category="环境保护", title="乐山市区河道漂浮垃圾"
    )
    letter = day.submit(
        "511102", S.CHANNEL_LETTER, f"l-{run}", region="511102", category="城乡建设", title="小区路灯不亮"
    )
    clerk_only = day.submit(
        "511100", S.CHANNEL_WEB, f"r-{run}", region="511100", category="", title="咨询与本市无关的事项"
    )
    by_hand = day.submit(
        "510000", S.CHANNEL_WEB, f"m-{run}", region="510000", category="环境保护", title="省内某河段排污"
    )
    day.submit(
        "511111",
        S.CHANNEL_WEB,
        f"x-{run}",
        region="511111",
        category="交通运输",
        title="路灯坏了",
        body="路灯坏了一个月，混蛋才不修",
    )
    imported = list(
        day.node["510100"].intake.ImportCases(
            iter(
                [
                    intake_pb2.ImportCasesRequest(
                        row_index=0,
                        submission=intake_pb2.SubmitCaseRequest(
                            channel=S.CHANNEL_LEADER_BOARD,
                            channel_ref=f"lb-{run}",
                            title="领导留言：成都市某路段拥堵",
                            body="请市领导关注某路段早晚高峰拥堵问题。",
                            category="交通运输",
                            region_code="510100",
                            anonymous=True,
                        ),
                    )
                ]
            ),
            timeout=15,
        )
    )
    day.done.append("ImportCases")
    assert imported[0].case_id, imported[0].error_reason
    day.registered.append(Case(imported[0].case_id, "510100"))

    # The screened submission waits for a moderator, who releases it.
    queue = day.node["511111"].intake.ListModerationQueue(intake_pb2.ListModerationQueueRequest(), timeout=5)
    held_id = next(m.case.case_id for m in queue.items if "路灯" in m.case.title)
    day.node["511111"].intake.ReleaseModeratedCase(
        intake_pb2.ReleaseModeratedCaseRequest(
            case_id=held_id,
            decision=intake_pb2.MODERATION_DECISION_RELEASE,
            actor="moderator",
            note="言辞不当但诉求属实",
        ),
        timeout=5,
    )
    day.done.append("ReleaseModeratedCase")
    if held_id not in {c.case_id for c in day.registered}:
        day.registered.append(Case(held_id, "511111"))

    # 09:00 市中区: the hotline case is answered, rated unsatisfied (reopened once), answered again, rated satisfied.
    day.start_and_reply("511102", hotline.case_id, "已责令施工单位夜间停工。")
    day.rate(hotline, S.SATISFACTION_UNSATISFIED, "晚上还在施工")
    day.start_and_reply("511102", hotline.case_id, "已对施工单位立案处罚，夜间施工已停止。")
    day.rate(hotline, S.SATISFACTION_SATISFIED, "已经安静了")
    day.wait_order("511102", hotline.case_id, S.CASE_STATE_CLOSED)

    # 09:30 the province's web case about 沙湾区 arrives two tiers down; the unit objects, the office
    # upholds the assignment; the unit starts, asks for an extension, which is approved.
    order = day.wait_order("511111", letter_down.case_id, S.CASE_STATE_ASSIGNED)
    wo = order.work_order_id
    day.act("511111", "AcceptWorkOrder", routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="unit"))
    day.act(
        "511111",
        "ObjectWorkOrder",
        routing_pb2.ObjectWorkOrderRequest(work_order_id=wo, actor="unit", reason="乡道养护不归本局"),
    )
    day.act(
        "511111",
        "ArbitrateObjection",
        routing_pb2.ArbitrateObjectionRequest(
            work_order_id=wo,
            actor="office",
            decision=routing_pb2.ARBITRATION_DECISION_UPHOLD,
            reason="乡道养护属交通局",
        ),
    )
    day.act("511111", "AcceptWorkOrder", routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="unit"))
    day.act(
        "511111",
        "RequestExtension",
        routing_pb2.RequestExtensionRequest(work_order_id=wo, actor="unit", days=30, reason="需招标施工"),
    )
    day.act(
        "511111",
        "ApproveExtension",
        routing_pb2.ApproveExtensionRequest(work_order_id=wo, actor="office", approve=True, reason="同意"),
    )

    # 10:00 the province supervises (督办) the 沙湾区 case it does not own.
    due = to_timestamp(datetime.now(UTC) + timedelta(days=7))
    sent = day.node["510000"].routing.Supervise(
        routing_pb2.SuperviseRequest(
            case_id=letter_down.case_id, actor="sheng-duban", level="supervise", demand="七日内报告进展", due_at=due
        ),
        timeout=5,
    )
    day.done.append("Supervise")
    assert sent.forwarded_to_owner

    # 11:00 a joint video reception: 乐山市's leader, 沙湾区's terminal room; check-in and outcome.
    leader = f"lss-leader-{run}"
    terminal = reception_rooms(day.node["511100"], "511100", day.node["511111"], "511111", leader, f"day-{run}")
    day.done += ["RegisterRoom", "RegisterRoom", "RegisterRoom", "PublishSchedule"]
    visit = (
        day.node["511100"]
        .video.BookVisit(
            video_pb2.BookVisitRequest(
                case_id=letter_down.case_id, actor="clerk", leader_id=leader, room_ids=[terminal]
            ),
            timeout=20,
        )
        .visit
    )
    day.done.append("BookVisit")
    checked = (
        day.node["511100"]
        .video.CheckIn(
            video_pb2.CheckInRequest(
                visit_id=visit.visit_id,
                actor="clerk",
                representatives=[S.Person(name="赵六", id_number=resident_id(7))],
            ),
            timeout=10,
        )
        .visit
    )
    day.done.append("CheckIn")
    assert checked.state == video_pb2.VISIT_STATE_CHECKED_IN
    day.node["511100"].video.RecordOutcome(
        video_pb2.RecordOutcomeRequest(
            visit_id=visit.visit_id, actor=leader, minutes="群众反映乡道塌陷。", decisions="责成沙湾区交通运输局抢修。"
        ),
        timeout=10,
    )
    day.done.append("RecordOutcome")
    # 11:30 远程会商: 乐山市交通运输局 and 沙湾区's unit about the same case, at their earliest common slot;
    # the minutes go to 沙湾区's history (it handles the case) and up the tiers.
    units = consultation_units(
        day.node["511100"], "511100", "lsj-jtj", day.node["511111"], "511111", "lssw-jtj", f"day-{run}"
    )
    day.done += ["RegisterRoom", "RegisterRoom", "RegisterRoom"]
    consulted = (
        day.node["511100"]
        .video.BookConsultation(
            video_pb2.BookConsultationRequest(
                case_id=letter_down.case_id, actor="clerk", topic="乡道塌陷抢修的市区分工", participants=units
            ),
            timeout=20,
        )
        .consultation
    )
    day.done.append("BookConsultation")
    assert consulted.state == video_pb2.CONSULTATION_STATE_BOOKED
    day.node["511100"].video.RecordConsultationMinutes(
        video_pb2.RecordConsultationMinutesRequest(
            consultation_id=consulted.consultation_id, actor="clerk", minutes="沙湾区负责抢修，市局督导。"
        ),
        timeout=10,
    )
    day.done.append("RecordConsultationMinutes")
    # A second one is called off.
    called_off = (
        day.node["511100"]
        .video.BookConsultation(
            video_pb2.BookConsultationRequest(
                case_id=letter_down.case_id, actor="clerk", topic="复核", participants=units
            ),
            timeout=20,
        )
        .consultation
    )
    day.done.append("BookConsultation")
    day.node["511100"].video.CancelConsultation(
        video_pb2.CancelConsultationRequest(consultation_id=called_off.consultation_id, reason="已在上次会商中议定"),
        timeout=10,
    )
    day.done.append("CancelConsultation")
    # A second visit for the city's own case is moved, then cancelled.
    second = (
        day.node["511100"]
        .video.BookVisit(
            video_pb2.BookVisitRequest(case_id=wechat.case_id, actor="clerk", leader_id=leader), timeout=20
        )
        .visit
    )
    day.done.append("BookVisit")
    moved = (
        day.node["511100"]
        .video.RescheduleVisit(
            video_pb2.RescheduleVisitRequest(
                visit_id=second.visit_id, actor="clerk", not_before=second.ends_at, reason="群众请求改期"
            ),
            timeout=20,
        )
        .visit
    )
    day.done.append("RescheduleVisit")
    day.node["511100"].video.CancelVisit(
        video_pb2.CancelVisitRequest(visit_id=moved.visit_id, actor="clerk", reason="群众已撤回请求"), timeout=10
    )
    day.done.append("CancelVisit")

    # 14:00 沙湾区 replies; the citizen, at the province where she wrote, is satisfied (closed), then
    # asks for a 复查 (reopened there); 沙湾区 answers again and closes.
    order = day.wait_order("511111", letter_down.case_id, S.CASE_STATE_EXTENDED)
    day.act(
        "511111",
        "ReplyWorkOrder",
        routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="unit", text="已完成抢修。"),
    )
    day.rate(letter_down, S.SATISFACTION_SATISFIED, "修好了")
    day.wait_order("511111", letter_down.case_id, S.CASE_STATE_CLOSED)
    day.wait(
        lambda: day.track(letter_down).can_request_review, "the close in the province's TrackCase", letter_down.case_id
    )
    day.node["510000"].intake.RequestReview(
        intake_pb2.RequestReviewRequest(tracking_code=letter_down.code, phone_last4=letter_down.last4, reason="又塌了"),
        timeout=5,
    )
    day.done.append("RequestReview")
    day.start_and_reply("511111", letter_down.case_id, "复查：已加固路基。")
    day.act("511111", "CloseWorkOrder", routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="office"))
    day.wait(
        lambda: day.track(letter_down).reply_text == "复查：已加固路基。",
        "the 复查 reply at the province",
        letter_down.case_id,
    )

    # 锦江区 escalates (上报) the 成都市 case handed down to it; 成都市 answers, and its office upholds on review.
    day.wait_order("510104", app_case.case_id, S.CASE_STATE_ASSIGNED)
    day.node["510104"].routing.EscalateCase(
        routing_pb2.EscalateCaseRequest(case_id=app_case.case_id, actor="clerk", reason="涉及全市电梯维保合同"),
        timeout=5,
    )
    day.done.append("EscalateCase")
    replied = day.start_and_reply("510100", app_case.case_id, "已协调维保单位修复电梯。")
    day.act(
        "510100",
        "ReviewWorkOrder",
        routing_pb2.ReviewWorkOrderRequest(
            work_order_id=replied.work_order_id,
            actor="office",
            decision=routing_pb2.REVIEW_DECISION_UPHOLD,
            reason="答复适当",
        ),
    )

    # 乐山市's own case: paused for a hearing, resumed, answered, reopened by the office, answered, closed.
    order = day.wait_order("511100", wechat.case_id, S.CASE_STATE_ASSIGNED)
    wo = order.work_order_id
    day.act(
        "511100", "PauseWorkOrder", routing_pb2.PauseWorkOrderRequest(work_order_id=wo, actor="office", reason="听证")
    )
    day.act("511100", "ResumeWorkOrder", routing_pb2.ResumeWorkOrderRequest(work_order_id=wo, actor="office"))
    day.start_and_reply("511100", wechat.case_id, "已清理河道。")
    day.act(
        "511100",
        "ReopenWorkOrder",
        routing_pb2.ReopenWorkOrderRequest(work_order_id=wo, actor="office", reason="答复过简"),
    )
    day.start_and_reply("511100", wechat.case_id, "已清理河道并建立每日巡查。")
    day.act("511100", "CloseWorkOrder", routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="office"))

    # The letter is withdrawn by its citizen; the uncategorised request is not accepted (不予受理).
    day.wait_order("511102", letter.case_id)
    day.node["511102"].intake.WithdrawCase(
        intake_pb2.WithdrawCaseRequest(tracking_code=letter.code, phone_last4=letter.last4, reason="已自行解决"),
        timeout=5,
    )
    day.done.append("WithdrawCase")
    day.wait_order("511102", letter.case_id, S.CASE_STATE_WITHDRAWN)
    refused = day.wait_order("511100", clerk_only.case_id, S.CASE_STATE_REGISTERED)
    day.act(
        "511100",
        "RefuseWorkOrder",
        routing_pb2.RefuseWorkOrderRequest(
            work_order_id=refused.work_order_id, actor="office", reason="不属于信访事项"
        ),
    )

    # The province hands a case down by hand (交办) straight to 市中区, two tiers below.
    day.wait_order("510000", by_hand.case_id)
    day.node["510000"].routing.AssignManually(
        routing_pb2.AssignManuallyRequest(
            case_id=by_hand.case_id, actor="clerk", node="511102", reason="请市中区核实办理"
        ),
        timeout=5,
    )
    day.done.append("AssignManually")
    # Not 市中区's own region, so its clerk places it with a unit by hand.
    day.wait_order("511102", by_hand.case_id, S.CASE_STATE_REGISTERED)
    day.node["511102"].routing.AssignManually(
        routing_pb2.AssignManuallyRequest(
            case_id=by_hand.case_id, actor="county-clerk", unit_id="lszq-sthjj", reason="生态环境局办理"
        ),
        timeout=5,
    )
    day.done.append("AssignManually")
    day.start_and_reply("511102", by_hand.case_id, "已核实并处理。")

    # 15:00 a national transfer (转送) for 市中区 reaches it through the province and the city.
    national.SubmitTransfer(
        national_pb2.SubmitTransferRequest(
            province_code="510000",
            transfer=national_pb2.NationalTransfer(
                national_case_id=f"DAY{run}",
                title="国家转送：供暖不热",
                body="反映市中区某小区供暖不热。",
                category="城乡建设",
                region_code="511102",
            ),
        ),
        timeout=5,
    )
    day.done.append("SubmitTransfer")
    day.start_and_reply("511102", f"N-DAY{run}", "已督促供热公司整改。")
    transferred = day.wait_order("511102", f"N-DAY{run}", S.CASE_STATE_REPLIED)
    day.act(
        "511102",
        "CloseWorkOrder",
        routing_pb2.CloseWorkOrderRequest(work_order_id=transferred.work_order_id, actor="office"),
    )

    # 16:00 an offline package from 锦江区, carried to 成都市: everything in it arrived by the link already.
    package = federation.data_dir / f"jinjiang-{run}.lxp"
    monkeypatch.setenv("LIANXIN_DATA_DIR", str(federation.data_dir))
    if "LIANXIN_DATABASE_URL" in federation.extra_env:
        monkeypatch.setenv("LIANXIN_DATABASE_URL", federation.extra_env["LIANXIN_DATABASE_URL"])
    monkeypatch.setenv("LIANXIN_NODE", "510104")
    assert main(["exchange", "export", "--since", "0", "--out", str(package)]) == 0
    # 成都市's operator was handed 锦江区's package key once (its first export made it).
    keys = federation.data_dir / "510100" / CHILD_KEYS_DIR
    keys.mkdir(parents=True, exist_ok=True)
    shutil.copy(federation.data_dir / "510104" / KEY_FILE, keys / "510104")
    monkeypatch.setenv("LIANXIN_NODE", "510100")
    assert main(["exchange", "import", str(package)]) == 0
    day.done.append("offline package")

    # 18:00 every tier holds the same, nothing is quarantined, and the figures add up.
    pairs = federation_pairs(federation.nodes[0].grpc_port, DEFAULT_TOPOLOGY)
    report = settled(pairs, wait_s=90, run=lambda each: reconcile(each, connect))
    assert not report.divergences, "\n".join(d.line() for d in report.divergences)
    for code, stubs in day.node.items():
        items = stubs.exchange.ListQuarantine(exchange_pb2.ListQuarantineRequest(), timeout=5).items
        assert list(items) == [], (code, [f"{i.payload_summary}: {i.reason}" for i in items])

    total = len({c.case_id for c in day.registered}) + 1  # and the national transfer

    def differences() -> list[str]:
        """Where a parent's view of a child region, or the province's sum, differs from the child's own."""
        own = {code: metrics(day.node[code], code) for code in day.node}
        out = [
            f"{parent} sees {child} as {seen} but {child} has {additive(own[child])}"
            for parent, children in CHILD_NODES.items()
            for child in children
            if (seen := additive(metrics(day.node[parent], child))) != additive(own[child])
        ]
        if additive(own["510000"]) != summed([own[c] for c in CITIES]):
            out.append(f"510000 {additive(own['510000'])} is not the sum of its cities")
        if own["510000"]["received"][0] != total:
            out.append(f"510000 received {own['510000']['received'][0]}, not {total}")
        return out

    # Each warehouse folds its events a moment after exchange holds them: the figures settle.
    try:
        wait_until(lambda: not differences(), WAIT_S, "every tier's figures to add up")
    except AssertionError:
        raise AssertionError("\n".join([*differences(), day.where_is(letter_down.case_id)])) from None
    own = {code: metrics(day.node[code], code) for code in day.node}
    assert own["510000"]["received"][0] == total
    assert own["510000"]["supervised"][0] >= 1

    backend = "PostgreSQL" if "LIANXIN_DATABASE_URL" in federation.extra_env else "SQLite"
    print(f"\nday in the life ({backend}{', mutual TLS and per-node tokens' if federation.secure else ''})")
    print(report.summary())
    print(f"RPCs driven: {len(day.done)} calls, {len(set(day.done))} kinds: {', '.join(sorted(set(day.done)))}")
    print(f"{'metric':<26}" + "".join(f"{code:>12}" for code in own))
    for name in own["510000"]:
        print(f"{name:<26}" + "".join(f"{f'{own[c][name][0]}/{own[c][name][1]}':>12}" for c in own))
