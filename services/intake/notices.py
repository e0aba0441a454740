"""办事进度推送: the citizen is told by SMS or WeChat when the case is accepted, handed on, replied,
reopened or closed.

Rules only (no database, no gRPC): which handling step makes a notice, its Chinese text, which channel
carries it, the retry schedule of the notice outbox and the channel adapter's interface. The node that
registered the case sends the notices (it holds the citizen's phone), whichever node handles the case:
it follows that handling from the replicas and handling updates it already receives for tracking.

A notice's id is the case id and routing's per-case version of the event that caused it, so a
redelivered or replayed event never makes a second notice, and the outbox sends each id at most once
successfully.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

# The flag on a case whose citizen asked for no progress notices (at submission or later).
OPT_OUT_FLAG = "no_progress_notices"

# Routing's action labels (as intake follows them) → the notice kind the citizen gets.
NOTICE_KINDS: dict[str, str] = {
    "accept": "accepted",
    "transfer": "handed_on",
    "hand_off": "handed_on",
    "escalate_up": "handed_on",
    "reply": "replied",
    "reopen": "reopened",
    "close": "closed",
}

# SMS text per kind (at most 70 characters a message: one SMS segment). {case} is the case id, which
# says nothing about the citizen; the tracking code is not sent (a lost phone must not open the case).
SMS_TEMPLATES: dict[str, str] = {
    "accepted": "【连心】您反映的事项（编号{case}）已受理，我们将依法按时办理。",
    "handed_on": "【连心】您反映的事项（编号{case}）已转交有权处理的单位办理。",
    "replied": "【连心】您反映的事项（编号{case}）已答复，请凭查询码查看并评价。",
    "reopened": "【连心】您反映的事项（编号{case}）已退回重新办理。",
    "closed": "【连心】您反映的事项（编号{case}）已办结，感谢您的监督。",
}
# WeChat template message (模板消息): first line, keyword values and remark; {case} as above.
WECHAT_TITLES: dict[str, str] = {
    "accepted": "已受理",
    "handed_on": "已转交办理",
    "replied": "已答复",
    "reopened": "重新办理",
    "closed": "已办结",
}
CHANNELS = ("sms", "wechat")


@dataclass(frozen=True)
class Notice:
    """One progress notice in the outbox (no personal data: the recipient is looked up when sending)."""

    notice_id: str
    case_id: str
    kind: str
    channel: str
    text: str
    created_at: datetime


@dataclass(frozen=True)
class NoticeSettled:
    """A notice came to its end (sent, or given up): the fact stats counts, without personal data."""

    notice_id: str
    case_id: str
    kind: str
    channel: str
    outcome: str  # "sent" or "given_up"
    attempts: int
    at: datetime

    @property
    def step_version(self) -> int:
        """The version of the handling step that caused the notice (the notice id's suffix): each notice
        of a case has its own, so the settled event is keyed by it (docs/stats.md)."""
        return int(self.notice_id.rsplit("/", 1)[1])


@dataclass(frozen=True)
class NoticeStatus:
    """A notice as the citizen's tracking page shows it."""

    kind: str
    channel: str
    text: str
    state: str  # "pending", "sent", "given_up"
    created_at: datetime
    sent_at: datetime | None


def notice_for(
    *,
    case_id: str,
    version: int,
    action: str,
    told: frozenset[str] = frozenset(),
    channel: str,
    at: datetime,
    opted_out: bool,
    has_phone: bool,
) -> Notice | None:
    """The notice a handling step makes, or None (not a notified step, opted out, nobody to tell).

    "accepted" is told once (``told``: the kinds this case's citizen was already told): the first
    受理; a unit's later 签收 of the case assigned or handed down to it is not news to the citizen.
    ``channel`` is the case's intake channel: a WeChat submission is answered by WeChat template
    message, every other channel by SMS to the phone given.
    """
    kind = NOTICE_KINDS.get(action)
    if kind == "accepted" and kind in told:
        return None
    if kind is None or opted_out or not has_phone:
        return None
    via = "wechat" if channel == "wechat" else "sms"
    return Notice(
        notice_id=f"{case_id}/{version}",
        case_id=case_id,
        kind=kind,
        channel=via,
        text=render(kind, case_id),
        created_at=at,
    )


def render(kind: str, case_id: str) -> str:
    return SMS_TEMPLATES[kind].format(case=case_id)


def wechat_fields(kind: str, case_id: str) -> dict[str, str]:
    """The template message's data (first, keyword1 = case, keyword2 = progress, remark)."""
    return {
        "first": "您反映的事项有新的办理进度",
        "keyword1": case_id,
        "keyword2": WECHAT_TITLES[kind],
        "remark": "可在连心网站或公众号凭查询码查看详情。",
    }


def mask_phone(phone: str) -> str:
    """138****5678: what logs, files and metrics may show of a phone."""
    digits = phone.strip()
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts of one notice: the first at once, then after first_delay, doubling; give up after max_attempts."""

    max_attempts: int = 5
    first_delay: timedelta = timedelta(seconds=30)

    def next_attempt(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None: give up."""
        if attempts >= self.max_attempts:
            return None
        return now + self.first_delay * (1 << max(attempts - 1, 0))


@dataclass(frozen=True)
class OutgoingMessage:
    """What a channel adapter gets: the notice, with its recipient (personal data) filled in."""

    notice_id: str
    channel: str  # "sms" or "wechat"
    recipient: str  # the phone number (SMS) or the WeChat recipient the channel reference names
    text: str
    fields: Mapping[str, str] = field(default_factory=dict)  # WeChat template data


class ChannelFailure(Exception):
    """The channel did not take the message; the outbox tries again later (no personal data in it)."""


class NoticeChannel(Protocol):
    """A channel adapter (SMS gateway, WeChat template message API, or the embedded file).

    ``send`` delivers one message or raises ChannelFailure; it is called at most once per attempt and
    may be called again for the same ``notice_id`` after a failure, so a gateway that supports it
    should pass the id as its idempotency key.
    """

    def send(self, message: OutgoingMessage) -> None: ...
