"""Requests to intake that several test modules build."""

from __future__ import annotations

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2


def submit_request(ref: str, **overrides: object) -> intake_pb2.SubmitCaseRequest:
    fields: dict[str, object] = dict(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code="511102",
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone="13812345678"),
    )
    fields.update(overrides)
    return intake_pb2.SubmitCaseRequest(**fields)  # type: ignore[arg-type]
