"""``lianxin call`` against a real node: reflection without dev-only packages, the server's refusals on one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.node import Node
from tests.support.cli import lianxin, one_error_line

SUBMIT = "lianxin.intake.v1.IntakeService/SubmitCase"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data_dir: Path = tmp_path_factory.mktemp("node")
    started = Node(Settings(node="511102", data_dir=data_dir, metrics_port=None)).start()
    yield started
    started.stop(grace=1.0)


def case(title: str) -> str:
    return json.dumps(
        {
            "channel": "CHANNEL_WEB",
            "channel_ref": f"cli-{title or 'empty'}",
            "title": title,
            "body": "乐山市市中区嘉州大道某小区门口夜间施工噪音扰民",
            "region_code": "511102",
            "category": "环境保护",
            "anonymous": True,
        },
        ensure_ascii=False,
    )


def test_call_lists_the_services_and_submits_a_case(node: Node) -> None:
    listed = lianxin("call", node.address, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "lianxin.intake.v1.IntakeService" in listed.stdout and "  SubmitCase" in listed.stdout
    result = lianxin("call", node.address, SUBMIT, case("噪音扰民"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["case"]["case_id"].startswith("511102-")


def test_server_refusal_is_one_line_with_field_and_reason(node: Node) -> None:
    result = lianxin("call", node.address, SUBMIT, case(""))
    assert result.returncode == 3
    assert one_error_line(result) == "lianxin: INVALID_ARGUMENT: title: must not be empty"


@pytest.mark.parametrize(
    "method", ["lianxin.intake.v1.IntakeService/NoSuchMethod", "lianxin.nothing.v1.Nothing/Call", "SubmitCase"]
)
def test_unknown_method_is_one_line(node: Node, method: str) -> None:
    result = lianxin("call", node.address, method, "{}")
    assert result.returncode == 3
    line = one_error_line(result)
    assert line.startswith(("lianxin: NOT_FOUND: ", "lianxin: INVALID_ARGUMENT: method: ")), line
