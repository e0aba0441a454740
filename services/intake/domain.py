"""Intake's domain: the case as registered, its public timeline and the events intake emits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum

from services.common.categories import CATEGORIES, OTHER_CATEGORY, SUBJECT_CATEGORIES
from services.common.ids import registering_node

__all__ = ["CATEGORIES", "OTHER_CATEGORY", "SUBJECT_CATEGORIES"]  # re-exported: intake's vocabulary is the common one


class CaseState(str, Enum):
    """The names are the contract (DESIGN §3); proto enum values are CASE_STATE_<name>."""

    REGISTERED = "REGISTERED"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"
    ASSIGNED = "ASSIGNED"
    IN_PROGRESS = "IN_PROGRESS"
    REPLIED = "REPLIED"
    CLOSED = "CLOSED"
    TRANSFERRED = "TRANSFERRED"
    OBJECTED = "OBJECTED"
    EXTENDED = "EXTENDED"
    REOPENED = "REOPENED"
    WITHDRAWN = "WITHDRAWN"
    MERGED = "MERGED"
    MODERATION = "MODERATION"


# Channels where a citizen may stay anonymous is validation's business; these are the names.
CHANNELS = (
    "web",
    "app",
    "hotline",
    "wechat",
    "letter",
    "leader_board",
    "national_transfer",
    "walk_in",
    "video",
)


@dataclass(frozen=True)
class Complainant:
    """Personal data: sealed at rest, masked in logs, never in events."""

    name: str = ""
    id_number: str = ""
    phone: str = ""
    address: str = ""  # the complainant's home or postal address
    # The citizen's own title and body, only when they held personal data (the case's title and
    # body are then the masked text everybody else reads).
    title: str = ""
    body: str = ""


@dataclass(frozen=True)
class Case:
    case_id: str
    tracking_code: str
    channel: str
    channel_ref: str
    title: str
    body: str
    category: str
    region_code: str
    registering_node: str
    owner_node: str
    state: CaseState
    submitted_at: datetime
    updated_at: datetime
    complainant: Complainant = field(default_factory=Complainant)
    place: str = ""  # where the matter is (事发地址), masked like the text; handlers see it
    owner_epoch: int = 1
    version: int = 1
    category_auto: bool = False
    place_unresolved: bool = False
    anonymous: bool = False
    repeat_of: str = ""
    duplicate_of: str = ""
    flags: tuple[str, ...] = ()
    hotline_operator_id: str = ""
    moderation_reasons: tuple[str, ...] = ()
    fingerprint: str = ""
    simhash: int = 0
    # Learnt from routing's events: who handles it and how many replies the citizen has had.
    handling_version: int = 0
    work_order_id: str = ""
    unit_id: str = ""
    reply_count: int = 0
    replied_at: datetime | None = None
    reply_text: str = ""  # the latest reply, as the citizen reads it
    handling_due: datetime | None = None  # the handling deadline the handling node last set
    merged_into: str = ""  # 并单: the main case this one follows, until the merge is undone
    evaluated_reply: int = 0
    satisfaction: str = ""
    review_reply: int = 0

    @property
    def idempotency_key(self) -> str | None:
        """channel + the channel's own reference; without a reference a submit is not retry-safe."""
        return idempotency_key(self.channel, self.channel_ref)

    def with_flag(self, flag: str) -> Case:
        return self if flag in self.flags else replace(self, flags=(*self.flags, flag))


# Cases that are still being dealt with: a new submission about the same matter links to one.
CLOSED_STATES = frozenset({CaseState.CLOSED, CaseState.WITHDRAWN, CaseState.MERGED, CaseState.REFUSED})
OPEN_STATES = frozenset(CaseState) - CLOSED_STATES
# After a reply (or once closed) there is nothing left to withdraw.
WITHDRAWABLE_STATES = OPEN_STATES - {CaseState.REPLIED}
REVIEW_WINDOW = timedelta(days=30)  # 复查 request within 30 days of the reply (信访工作条例 Art. 35)
REVIEW_DECISION = timedelta(days=30)  # and decided within 30 days
SATISFACTIONS = ("SATISFIED", "BASICALLY_SATISFIED", "UNSATISFIED")


def can_evaluate(case: Case) -> bool:
    """Once per reply: a reply the citizen has not rated yet, and the case still at or after it."""
    return (
        case.state in (CaseState.REPLIED, CaseState.CLOSED)
        and case.reply_count > 0
        and case.evaluated_reply < case.reply_count
    )


def can_request_review(case: Case, now: datetime) -> bool:
    """Within 30 days of the latest reply, once per reply."""
    return (
        case.state in (CaseState.REPLIED, CaseState.CLOSED)
        and case.replied_at is not None
        and now <= case.replied_at + REVIEW_WINDOW
        and case.review_reply < case.reply_count
    )


def can_withdraw(case: Case) -> bool:
    return case.state in WITHDRAWABLE_STATES


# Routing's deadline kinds that bound the handling (办理期限), in the order one is picked: petitions
# settle, hotline cases by class; "reply" for work orders that only owe a reply.
HANDLING_DEADLINE_KINDS = ("settle", "hotline_emergency", "hotline_enquiry", "hotline_complaint", "reply")

# What the citizen's timeline says for routing's actions (public wording; reasons stay internal).
PUBLIC_MILESTONES: dict[str, str] = {
    "assign": "已交办 assigned to the handling unit",
    "accept": "已受理 accepted",
    "refuse": "不予受理 not accepted",
    "hand_off": "已转送 transferred",
    # Routing's actual labels for a hand-off to another node (交办/转送) and for 上报.
    "transfer": "已转送 transferred",
    "escalate_up": "已上报 escalated to the tier above",
    "extend": "已延期 handling extended",
    "approve_extension": "已延期 handling extended",
    "reply": "已答复 replied",
    "close": "已办结 closed",
    "reopen": "重新办理 reopened",
    "review": "复查中 under review",
    "visit_outcome": "已视频接访 video reception held",
    "merge": "已并单 merged with a case about the same matter; you follow its handling",
    "unmerge": "已撤销并单 handled on its own again",
    "instruct": "领导已批示 a leader has instructed on your case",
}
# Routing's label prefix of a merged case following its main case ("main:reply").
FOLLOW_MAIN = "main:"


def idempotency_key(channel: str, channel_ref: str | None) -> str | None:
    return f"{channel}:{channel_ref}" if channel_ref else None


def registered_here(case_id: str, node: str) -> bool:
    """Whether ``case_id`` was registered by this node's intake (case ids name their node, ``ids.format_case_id``).

    Intake holds rows only for those, so replicas of other cases can be passed over unread.
    """
    return registering_node(case_id) == node


def newer_owner(case: Case, owner_node: str, owner_epoch: int) -> Case:
    """The case with ``owner_node`` as its owner when ``owner_epoch`` is newer than the one known, else as is.

    Ownership moves only by hand-offs, each with a higher epoch, so the highest epoch seen names the owner.
    """
    if not owner_node or owner_epoch <= case.owner_epoch:
        return case
    return replace(case, owner_node=owner_node, owner_epoch=owner_epoch)


@dataclass(frozen=True)
class TimelineEntry:
    case_id: str
    at: datetime
    state: CaseState
    summary: str


@dataclass(frozen=True)
class CaseRegistered:
    """Domain event: a case entered the platform at this node."""

    case: Case


@dataclass(frozen=True)
class CaseEvaluated:
    case: Case
    satisfaction: str
    comment: str


@dataclass(frozen=True)
class ReviewRequested:
    case: Case
    reason: str


@dataclass(frozen=True)
class CaseWithdrawn:
    case: Case
    reason: str


@dataclass(frozen=True)
class ProgressNoticesSet:
    """The citizen turned progress notices (办事进度推送) off, or on again; counted in stats."""

    case: Case
    enabled: bool


EVALUATE = "evaluate"
REQUEST_REVIEW = "request_review"
WITHDRAW = "withdraw"


@dataclass(frozen=True)
class CommandForOwner:
    """A citizen's rating, 复查 request or withdrawal (撤回) recorded here for a case another node owns,
    sent to that owner as a command (DESIGN §3).

    ``kind`` is the ``events.v1.Command`` body: "evaluate", "request_review" or "withdraw"; ``text`` is
    the rating's comment or the request's reason; ``satisfaction`` is set for a rating only.
    ``command_id`` is derived from what was recorded (the rating, the reply reviewed, the case
    withdrawn), so the same request is one command however often it is sent; ``owner_epoch_seen``
    lets exchange retarget it when the case moved on since.
    """

    command_id: str
    case_id: str
    target_node: str
    owner_epoch_seen: int
    issuing_node: str
    kind: str
    text: str
    at: datetime
    satisfaction: str = ""


DomainEvent = CaseRegistered | CaseEvaluated | ReviewRequested | CaseWithdrawn | ProgressNoticesSet
