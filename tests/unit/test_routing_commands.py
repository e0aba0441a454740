"""Where routing sends a command for a case's owner when the node it reached has handed the case on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common.calendar import ChineseWorkingCalendar
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain import WorkOrder
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, TimeRules
from services.routing.handlers import CaseOwner, StoredWorkOrder, handed_on_to

RULES = TimeRules(TimeLimitPolicy.default(), ChineseWorkingCalendar())
CASE = "510000-20261206-000001"
AT = datetime(2026, 12, 4, 10, tzinfo=CHINA)


@dataclass
class Known:
    """The three things ``handed_on_to`` reads of a node's routing tables."""

    order: StoredWorkOrder | None
    version: tuple[int, int] | None  # (version, owner epoch) of the case here
    replica: CaseOwner | None = None

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        return self.order

    def case_version(self, case_id: str) -> tuple[int, int] | None:
        return self.version

    def case_owner(self, case_id: str) -> CaseOwner | None:
        return self.replica


def order_at(node: str, *, handed_to: str = "") -> StoredWorkOrder:
    order, _ = WorkOrder.register(
        id=f"{CASE}@{node}",
        case_id=CASE,
        node=node,
        tier=Tier.PROVINCE,
        at=AT,
        actor="system",
        rules=RULES,
        category="交通运输",
        region_code="511111",
        handling_kind=DeadlineKind.SETTLE,
    )
    if handed_to:
        order.transfer(to_node=handed_to, at=AT, actor="system", reason="交办")
    return StoredWorkOrder(order=order, created_at=AT, updated_at=AT)


def test_a_node_that_handed_the_case_down_names_the_receiver_at_the_epoch_the_hand_off_gave_it() -> None:
    # The province (epoch 0) handed the case to 乐山市 at epoch 1; its case row already says 1.
    here = Known(order_at("510000", handed_to="511100"), (4, 1))
    owner = handed_on_to(CASE, here, "510000")  # type: ignore[arg-type]
    # Epoch 1, not 2: 乐山市's exchange, knowing 沙湾区 at epoch 2, then chases the command on to it.
    assert owner is not None and (owner.owner_node, owner.owner_epoch) == ("511100", 1)


def test_a_newer_owner_heard_from_the_replicas_wins_over_the_node_it_was_handed_to() -> None:
    here = Known(order_at("510000", handed_to="511100"), (4, 1), CaseOwner(CASE, "511111", 2, 8))
    owner = handed_on_to(CASE, here, "510000")  # type: ignore[arg-type]
    assert owner is not None and (owner.owner_node, owner.owner_epoch) == ("511111", 2)


def test_an_older_replica_does_not_send_the_command_back_behind_the_hand_off() -> None:
    # 乐山市 handed the case on to 沙湾区 (epoch 2); a replica of the province's own time says epoch 0.
    here = Known(order_at("511100", handed_to="511111"), (7, 2), CaseOwner(CASE, "510000", 0, 2))
    owner = handed_on_to(CASE, here, "511100")  # type: ignore[arg-type]
    assert owner is not None and (owner.owner_node, owner.owner_epoch) == ("511111", 2)


def test_the_node_that_handles_the_case_applies_the_command_itself() -> None:
    assert handed_on_to(CASE, Known(order_at("511111"), (8, 2)), "511111") is None  # type: ignore[arg-type]
    assert handed_on_to(CASE, Known(None, None), "511111") is None  # type: ignore[arg-type]
