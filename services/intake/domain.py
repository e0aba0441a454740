"""Intake's domain: the case as registered, its public timeline and the events intake emits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum


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
    address: str = ""


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
    owner_epoch: int = 1
    version: int = 1
    category_auto: bool = False
    place_unresolved: bool = False
    anonymous: bool = False
    repeat_of: str = ""
    duplicate_of: str = ""
    flags: tuple[str, ...] = ()
    hotline_operator_id: str = ""

    @property
    def idempotency_key(self) -> str | None:
        """channel + the channel's own reference; without a reference a submit is not retry-safe."""
        return idempotency_key(self.channel, self.channel_ref)

    def with_flag(self, flag: str) -> Case:
        return self if flag in self.flags else replace(self, flags=(*self.flags, flag))


def idempotency_key(channel: str, channel_ref: str | None) -> str | None:
    return f"{channel}:{channel_ref}" if channel_ref else None


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


DomainEvent = CaseRegistered
