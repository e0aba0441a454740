"""Intake over real gRPC on a real node (intake alone), on SQLite and PostgreSQL where it matters.

Channels, validation, idempotent and concurrent retries, imports, auto category and place,
repeats and duplicates, moderation, rate limits, listing with stable pages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.personal_text import ID_CHECK as _ID_CHECK
from services.common.personal_text import ID_WEIGHTS as _ID_WEIGHTS
from services.common.settings import Settings
from services.node import Node

NODE = "511102"  # 乐山市市中区


def id_number(serial: int) -> str:
    """A valid GB 11643 number born 1990-01-01 in 市中区."""
    body = f"511102199001011{serial % 100:02d}"
    total = sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True))
    return body + _ID_CHECK[total % 11]


def phone(serial: int) -> str:
    return f"1390000{serial:04d}"


def start_node(tmp_path: Path, database_url: str | None = None, **extras: object) -> Node:
    url = None if database_url is None or database_url.startswith("sqlite") else database_url
    settings = Settings(node=NODE, data_dir=tmp_path, database_url=url, relay_interval_s=0.05, metrics_port=None)
    return Node(settings, services=("intake",), **extras).start()  # type: ignore[arg-type]


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    started = start_node(tmp_path)
    yield started
    started.stop(grace=0.2)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for tests that must leave nothing behind (refused submissions)."""
    started = start_node(tmp_path_factory.mktemp("intake"))
    yield started
    started.stop(grace=0.2)


@pytest.fixture()
def node_any_db(database_url: str, tmp_path: Path) -> Iterator[Node]:
    started = start_node(tmp_path, database_url)
    yield started
    started.stop(grace=0.2)


def stub_for(node: Node) -> intake_grpc.IntakeServiceStub:
    return intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address))


# Minimal valid submission per channel: the fields each channel cannot do without.
CHANNEL_FIELDS: dict[int, dict[str, object]] = {
    common_pb2.CHANNEL_WEB: {"complainant": common_pb2.Person(phone=phone(1))},
    common_pb2.CHANNEL_APP: {"complainant": common_pb2.Person(phone=phone(2))},
    common_pb2.CHANNEL_HOTLINE: {
        "hotline_operator_id": "op-12",
        "complainant": common_pb2.Person(phone="0833-2123456"),
    },
    common_pb2.CHANNEL_WECHAT: {"complainant": common_pb2.Person(phone=phone(4))},
    common_pb2.CHANNEL_LETTER: {
        "complainant": common_pb2.Person(name="李四", address="乐山市市中区人民南路1号", phone=phone(5))
    },
    common_pb2.CHANNEL_LEADER_BOARD: {"anonymous": True},
    common_pb2.CHANNEL_NATIONAL_TRANSFER: {"complainant": common_pb2.Person(phone=phone(7))},
    common_pb2.CHANNEL_WALK_IN: {"complainant": common_pb2.Person(name="王五", id_number=id_number(8))},
    common_pb2.CHANNEL_VIDEO: {"complainant": common_pb2.Person(name="赵六", id_number=id_number(9))},
}


def request(ref: str, channel: int = common_pb2.CHANNEL_WEB, **overrides: object) -> pb.SubmitCaseRequest:
    fields: dict[str, object] = {
        "channel": channel,
        "channel_ref": ref,
        "title": f"路灯不亮 {ref}",
        "body": f"嘉州大道路段路灯长期不亮，夜间出行不安全，编号{ref}。",
        "category": "城乡建设",
        "region_code": NODE,
        **CHANNEL_FIELDS[channel],
    }
    fields.update(overrides)
    return pb.SubmitCaseRequest(**fields)  # type: ignore[arg-type]


def total(stub: intake_grpc.IntakeServiceStub) -> int:
    return int(stub.ListCases(pb.ListCasesRequest(), timeout=5).page.total_size)


def test_every_channel_registers_a_case(node_any_db: Node) -> None:
    stub = stub_for(node_any_db)
    for channel in CHANNEL_FIELDS:
        reply = stub.SubmitCase(request(f"ch-{channel}", channel), timeout=10)
        assert reply.created, channel
        assert reply.case.channel == channel
        assert reply.case.state == common_pb2.CASE_STATE_REGISTERED
        assert reply.tracking_code
    cases = stub.ListCases(pb.ListCasesRequest(), timeout=5).cases
    assert {c.channel for c in cases} == set(CHANNEL_FIELDS)
    hotline = next(c for c in cases if c.channel == common_pb2.CHANNEL_HOTLINE)
    assert hotline.hotline_operator_id == "op-12"
    board = next(c for c in cases if c.channel == common_pb2.CHANNEL_LEADER_BOARD)
    assert board.anonymous and "anonymous" in board.flags
    walk_in = next(c for c in cases if c.channel == common_pb2.CHANNEL_WALK_IN)
    assert walk_in.complainant.id_number.startswith("511102") and "*" in walk_in.complainant.id_number  # masked


LONG = "长"
INVALID = [
    ({"title": LONG * 101}, "title"),
    ({"title": "  "}, "title"),
    ({"body": LONG * 4001}, "body"),
    ({"body": ""}, "body"),
    ({"channel": common_pb2.CHANNEL_UNSPECIFIED}, "channel"),
    ({"region_code": "110101"}, "region_code"),  # Beijing: outside this node
    ({"region_code": "511100"}, "region_code"),  # the city above this county node
    ({"region_code": "5111"}, "region_code"),
    ({"category": "天气"}, "category"),
    ({"complainant": common_pb2.Person(phone="12345")}, "phone"),
    ({"complainant": common_pb2.Person(phone="0833-2123456")}, "phone"),  # landline on the web
    ({"complainant": common_pb2.Person(id_number="511102199001011230")}, "id_number"),  # check digit
    ({"complainant": common_pb2.Person(id_number="51110219900231123X")}, "id_number"),  # 31 Feb
    ({"complainant": common_pb2.Person()}, "phone"),  # named, unreachable
    ({"channel": common_pb2.CHANNEL_HOTLINE, "hotline_operator_id": ""}, "hotline_operator_id"),
    (
        {"channel": common_pb2.CHANNEL_LETTER, "complainant": common_pb2.Person(name="李四", phone=phone(1))},
        "complainant.address",
    ),
    ({"channel": common_pb2.CHANNEL_WALK_IN, "complainant": common_pb2.Person(id_number=id_number(3))}, "name"),
    ({"channel": common_pb2.CHANNEL_VIDEO, "complainant": common_pb2.Person(name="赵六")}, "id_number"),
    ({"channel": common_pb2.CHANNEL_NATIONAL_TRANSFER, "channel_ref": ""}, "channel_ref"),
    ({"channel": common_pb2.CHANNEL_HOTLINE, "anonymous": True}, "anonymous"),
    ({"channel_ref": "x" * 65}, "channel_ref"),
]


@pytest.mark.parametrize(("overrides", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_submission_names_the_field_and_stores_nothing(
    shared_node: Node, overrides: dict[str, object], field: str
) -> None:
    stub = stub_for(shared_node)
    channel = overrides.get("channel", common_pb2.CHANNEL_WEB) or common_pb2.CHANNEL_WEB
    base = request("bad-1", int(channel))  # type: ignore[call-overload]
    base.MergeFrom(pb.SubmitCaseRequest())
    fields = {f.name: v for f, v in base.ListFields()}
    fields.update(overrides)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitCase(pb.SubmitCaseRequest(**fields), timeout=5)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")
    assert total(stub) == 0


def test_concurrent_retries_of_one_reference_make_one_case(node_any_db: Node) -> None:
    stub = stub_for(node_any_db)
    barrier = threading.Barrier(10)
    replies: list[pb.SubmitCaseResponse] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            barrier.wait(timeout=5)
            replies.append(stub.SubmitCase(request("same-ref"), timeout=20))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len({r.case.case_id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1
    assert len({r.tracking_code for r in replies}) == 1
    again = stub.SubmitCase(request("same-ref"), timeout=5)
    assert not again.created and again.case.case_id == replies[0].case.case_id
    # Same reference on another channel is another submission.
    other = stub.SubmitCase(request("same-ref", common_pb2.CHANNEL_APP, body="另一件事：公园厕所无人打扫。"), timeout=5)
    assert other.created and other.case.case_id != again.case.case_id
    assert total(stub) == 2


def _import_requests(rows: list[pb.SubmitCaseRequest]) -> Iterator[pb.ImportCasesRequest]:
    for index, row in enumerate(rows):
        yield pb.ImportCasesRequest(row_index=index, submission=row)


def test_import_answers_every_row_and_a_bad_row_does_not_stop_the_rest(node: Node) -> None:
    stub = stub_for(node)
    rows = [
        request("imp-0", common_pb2.CHANNEL_LEADER_BOARD),
        request("imp-1", common_pb2.CHANNEL_LEADER_BOARD, title=""),
        request("imp-2", common_pb2.CHANNEL_LEADER_BOARD, region_code="110101"),
        request("imp-3", common_pb2.CHANNEL_LEADER_BOARD),
        request("imp-0", common_pb2.CHANNEL_LEADER_BOARD),  # the same row again
    ]
    answers = list(stub.ImportCases(_import_requests(rows), timeout=20))
    assert [a.row_index for a in answers] == [0, 1, 2, 3, 4]
    assert answers[0].case_id and answers[0].created and answers[0].tracking_code
    assert (answers[1].error_field, answers[1].case_id) == ("title", "")
    assert answers[1].error_reason == "must not be empty"
    assert answers[2].error_field == "region_code"
    assert answers[3].case_id and answers[3].created
    assert answers[4].case_id == answers[0].case_id and not answers[4].created
    assert total(stub) == 2


def test_import_of_leader_board_rows_from_messages_csv(node: Node, messages_csv: Path) -> None:
    import csv

    with messages_csv.open(encoding="utf-8", newline="") as handle:
        rows = [row for _, row in zip(range(40), csv.DictReader(handle), strict=False)]
    submissions = [
        pb.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_LEADER_BOARD,
            channel_ref=row["id"],
            title=row["title"],
            body=row["body"],
            anonymous=True,
            submitted_at=Timestamp(seconds=int(datetime.fromisoformat(row["time"]).replace(tzinfo=UTC).timestamp()))
            if row["time"]
            else None,
        )
        for row in rows
    ]
    answers = list(stub_for(node).ImportCases(_import_requests(submissions), timeout=60))
    assert len(answers) == len(rows)
    for answer, row in zip(answers, rows, strict=True):
        if len(row["title"]) > 100 or len(row["body"].strip()) > 4000 or not row["body"].strip():
            assert answer.error_field in ("title", "body")
        else:
            assert answer.case_id, (answer.error_field, answer.error_reason)


def test_missing_category_is_filled_by_the_model_and_place_by_the_text(node: Node) -> None:
    model = node.hooks.intake_category_model
    assert model is not None
    assert model.ready.wait(120)
    if model.model is None:
        pytest.skip("no messages.csv to train the category model")
    stub = stub_for(node)
    reply = stub.SubmitCase(
        request(
            "auto-1",
            category="",
            region_code="",
            title="孩子入学报名难",
            body="乐山市市中区某小学今年秋季招生，孩子户口在学区内却不给报名入学，学校推说学位已满。",
        ),
        timeout=10,
    )
    assert reply.case.category == "教育文体"
    assert "category_auto" in reply.case.flags
    assert reply.case.region_code == NODE
    unresolved = stub.SubmitCase(
        request("auto-2", category="", region_code="", title="噪音扰民", body="楼下饭店每天深夜排风扇噪音很大。"),
        timeout=10,
    )
    assert unresolved.case.region_code == "" and "place_unresolved" in unresolved.case.flags
    classified = stub.ClassifyText(pb.ClassifyTextRequest(text="医院收费不合理，看病贵"), timeout=5)
    assert classified.category == "卫生计生" and 0 < classified.confidence <= 1
    located = stub.LocateText(
        pb.LocateTextRequest(text="四川省乐山市沙湾区某镇", within_region_code="511100"), timeout=5
    )
    assert located.region_code == "511111"
    assert located.candidates[0].name == "沙湾区"


def test_repeat_and_duplicate_link_to_the_open_case(node_any_db: Node) -> None:
    stub = stub_for(node_any_db)
    first = stub.SubmitCase(request("r-1"), timeout=5).case
    # Exact re-post (punctuation and spacing aside) by someone else: a duplicate to merge.
    repost = stub.SubmitCase(
        request("r-2", title=first.title + "！", body=" " + first.body, complainant=common_pb2.Person(phone=phone(50))),
        timeout=5,
    ).case
    assert repost.duplicate_of == first.case_id and "duplicate" in repost.flags
    # Same person, other words: a repeat.
    again = stub.SubmitCase(
        request("r-3", title="还是没人管", body="上次反映的问题到现在也没有人处理，请尽快答复。"), timeout=5
    ).case
    assert again.repeat_of == first.case_id and "repeat" in again.flags and not again.duplicate_of
    # Another person, a lightly edited re-post of a longer text: a repeat by SimHash.
    long_body = (
        "嘉州大道从人民医院到滨江路口这一段的路灯已经连续两个多月不亮了，晚上老人孩子出门只能摸黑走路，"
        "上周还有人在这里摔伤，多次打电话给物业和街道都说会处理，但一直没有人来修，希望有关部门尽快安排维修。"
    )
    long_case = stub.SubmitCase(
        request("r-4a", title="嘉州大道路灯", body=long_body, complainant=common_pb2.Person(phone=phone(53))), timeout=5
    ).case
    assert not long_case.repeat_of
    near = stub.SubmitCase(
        request(
            "r-4",
            title="嘉州大道路灯",
            body=long_body.replace("两个多月", "两个来月"),
            complainant=common_pb2.Person(phone=phone(51)),
        ),
        timeout=5,
    ).case
    assert near.repeat_of == long_case.case_id and not near.duplicate_of
    # Unrelated text by someone new: no link.
    other = stub.SubmitCase(
        request(
            "r-5",
            title="公交线路调整",
            body="希望增开到高铁站的公交线路。",
            complainant=common_pb2.Person(phone=phone(52)),
        ),
        timeout=5,
    ).case
    assert not other.repeat_of and not other.duplicate_of


def test_abusive_text_waits_for_a_moderator_and_is_released_or_refused(node: Node) -> None:
    stub = stub_for(node)
    held = stub.SubmitCase(request("m-1", body="物业公司的狗官 不管事，路灯坏了三个月。"), timeout=5).case
    rejected = stub.SubmitCase(
        request("m-2", body="这些王八蛋天天乱收费。", complainant=common_pb2.Person(phone=phone(60))), timeout=5
    ).case
    assert held.state == common_pb2.CASE_STATE_MODERATION and "moderation" in held.flags
    queue = stub.ListModerationQueue(pb.ListModerationQueueRequest(), timeout=5)
    assert [item.case.case_id for item in queue.items] == [held.case_id, rejected.case_id]
    assert list(queue.items[0].reasons) == ["abusive_language"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReleaseModeratedCase(
            pb.ReleaseModeratedCaseRequest(case_id=rejected.case_id, decision=pb.MODERATION_DECISION_REJECT), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "note" in (caught.value.details() or "")
    released = stub.ReleaseModeratedCase(
        pb.ReleaseModeratedCaseRequest(case_id=held.case_id, decision=pb.MODERATION_DECISION_RELEASE, actor="mod-1"),
        timeout=5,
    ).case
    refused = stub.ReleaseModeratedCase(
        pb.ReleaseModeratedCaseRequest(
            case_id=rejected.case_id, decision=pb.MODERATION_DECISION_REJECT, note="辱骂", actor="mod-1"
        ),
        timeout=5,
    ).case
    assert released.state == common_pb2.CASE_STATE_REGISTERED
    assert refused.state == common_pb2.CASE_STATE_REFUSED
    assert not stub.ListModerationQueue(pb.ListModerationQueueRequest(), timeout=5).items
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReleaseModeratedCase(
            pb.ReleaseModeratedCaseRequest(case_id=held.case_id, decision=pb.MODERATION_DECISION_RELEASE), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_one_submitter_is_rate_limited_but_retries_are_not(node_any_db: Node) -> None:
    stub = stub_for(node_any_db)
    person = common_pb2.Person(phone=phone(70))
    for n in range(5):
        stub.SubmitCase(
            request(f"rl-{n}", title=f"第{n}件事", body=f"第{n}个问题的内容{n * 7}。", complainant=person), timeout=5
        )
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitCase(request("rl-5", title="第6件", body="又一件事。", complainant=person), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = request("rl-0", title="第0件事", body="第0个问题的内容0。", complainant=person)
    assert not stub.SubmitCase(retry, timeout=5).created  # a retry still answers
    # Someone else is not affected, and a board import is exempt.
    assert stub.SubmitCase(request("rl-x", complainant=common_pb2.Person(phone=phone(71))), timeout=5).created
    assert total(stub) == 6


def test_list_cases_filters_and_pages_stably(node_any_db: Node) -> None:
    stub = stub_for(node_any_db)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for n in range(7):
        when = Timestamp()
        when.FromDatetime(start + timedelta(hours=n // 2))  # pairs share a time: the case id breaks ties
        channel = common_pb2.CHANNEL_WEB if n % 2 else common_pb2.CHANNEL_LEADER_BOARD
        stub.SubmitCase(
            request(
                f"l-{n}",
                channel,
                title=f"事项{n}",
                body=f"内容{n}号。",
                submitted_at=when,
                category="交通运输" if n < 3 else "城乡建设",
                **(
                    {} if channel != common_pb2.CHANNEL_WEB else {"complainant": common_pb2.Person(phone=phone(80 + n))}
                ),
            ),
            timeout=5,
        )
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListCases(
            pb.ListCasesRequest(page=common_pb2.PageRequest(page_size=3, page_token=token)), timeout=5
        )
        seen += [c.case_id for c in page.cases]
        assert page.page.total_size == (7 if len(seen) <= 3 else 8)
        # A new case arriving between pages lands before the first page, not inside later ones.
        stub.SubmitCase(
            request(
                f"late-{len(seen)}", common_pb2.CHANNEL_LEADER_BOARD, title=f"新{len(seen)}", body=f"新内容{len(seen)}"
            ),
            timeout=5,
        ) if len(seen) == 3 else None
        token = page.page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and len(set(seen)) == 7
    web = stub.ListCases(pb.ListCasesRequest(channel=common_pb2.CHANNEL_WEB), timeout=5)
    assert web.page.total_size == 3
    traffic = stub.ListCases(pb.ListCasesRequest(category="交通运输"), timeout=5)
    assert traffic.page.total_size == 3
    after = Timestamp()
    after.FromDatetime(start + timedelta(hours=2))
    before = Timestamp()
    before.FromDatetime(start + timedelta(days=1))
    window = stub.ListCases(
        pb.ListCasesRequest(
            submitted_after=after,
            submitted_before=before,
            states=[common_pb2.CASE_STATE_REGISTERED],
            region_code=NODE,
        ),
        timeout=5,
    )
    assert window.page.total_size == 3
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListCases(pb.ListCasesRequest(region_code="510100"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListCases(pb.ListCasesRequest(page=common_pb2.PageRequest(page_token="garbage")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
