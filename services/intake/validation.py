"""Validation of a citizen's submission before it is registered: formats, lengths and per-channel rules."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from services.common.errors import InvalidArgument

# The identity formats are shared with video's representatives: one rule, in the kernel.
from services.common.identity import check_id_number, check_phone

CHANNELS: frozenset[str] = frozenset(
    {"web", "app", "hotline", "wechat", "letter", "leader_board", "national_transfer", "walk_in", "video"}
)
# Online boards accept anonymous messages (they are still handled, but nobody can be told the outcome
# except through the tracking code); every other channel registers a person.
ANONYMOUS_CHANNELS: frozenset[str] = frozenset({"web", "app", "wechat", "leader_board"})

# Fields each channel cannot do without, beyond title and body. Hotline and walk-in/video have a clerk
# who can ask; letters must be answerable in writing; a national transfer must point back to its source.
REQUIRED_BY_CHANNEL: dict[str, tuple[str, ...]] = {
    "hotline": ("hotline_operator_id", "phone"),
    "letter": ("name", "address"),
    "walk_in": ("name", "id_number"),
    "video": ("name", "id_number"),
    "national_transfer": ("channel_ref",),
}

# Submission fields named differently in the request (errors name the request's field).
_REQUEST_FIELD = {"address": "complainant.address", "place": "address"}

TITLE_MAX = 100
BODY_MAX = 4000
NAME_MAX = 50
ADDRESS_MAX = 200
CHANNEL_REF_MAX = 64
OPERATOR_ID_MAX = 64


@dataclass(frozen=True)
class Submission:
    """One request as it arrives from a channel; optional fields are None (or blank) when unknown."""

    channel: str
    title: str
    body: str
    channel_ref: str | None = None
    category: str | None = None
    region_code: str | None = None
    address: str | None = None  # the complainant's home or postal address (complainant.address)
    place: str | None = None  # where the matter is (事发地址, the request's own address)
    name: str | None = None
    id_number: str | None = None
    phone: str | None = None
    anonymous: bool = False
    hotline_operator_id: str | None = None
    publish_consent: bool = False  # the reply may go on the public board (公开答复), masked
    no_progress_notices: bool = False  # the citizen wants no SMS/WeChat progress notices (办事进度推送)


def _clean(value: str | None) -> str | None:
    """Trimmed text, with blank treated as absent (protobuf sends "" for unset strings)."""
    if value is None:
        return None
    return value.strip() or None


def _check_length(field: str, value: str, maximum: int) -> None:
    if len(value) > maximum:
        raise InvalidArgument(field, f"must be at most {maximum} characters, got {len(value)}")


def check_text_lengths(title: str, body: str) -> tuple[str, str]:
    """Return title and body trimmed; both must be non-empty, title ≤ 100 and body ≤ 4,000 characters."""
    title, body = title.strip(), body.strip()
    if not title:
        raise InvalidArgument("title", "must not be empty")
    _check_length("title", title, TITLE_MAX)
    if not body:
        raise InvalidArgument("body", "must not be empty")
    _check_length("body", body, BODY_MAX)
    return title, body


def validate_submission(submission: Submission, *, allowed_regions: Collection[str]) -> Submission:
    """Check a submission against the channel's rules and the node's region subtree.

    ``allowed_regions`` is the node's subtree (``set(tree.subtree(node))``). Returns a normalised copy
    (trimmed text, blanks as None, canonical phone and ID number); the first problem found raises
    InvalidArgument naming the Submission field.
    """
    s = submission
    if s.channel not in CHANNELS:
        raise InvalidArgument("channel", f"must be one of {', '.join(sorted(CHANNELS))}, got {s.channel!r}")
    title, body = check_text_lengths(s.title, s.body)

    values: dict[str, str | None] = {
        "channel_ref": _clean(s.channel_ref),
        "category": _clean(s.category),
        "region_code": _clean(s.region_code),
        "address": _clean(s.address),
        "place": _clean(s.place),
        "name": _clean(s.name),
        "id_number": _clean(s.id_number),
        "phone": _clean(s.phone),
        "hotline_operator_id": _clean(s.hotline_operator_id),
    }

    if s.anonymous and s.channel not in ANONYMOUS_CHANNELS:
        raise InvalidArgument("anonymous", f"channel {s.channel} does not accept anonymous submissions")
    for field in REQUIRED_BY_CHANNEL.get(s.channel, ()):
        if values[field] is None:
            raise InvalidArgument(_REQUEST_FIELD.get(field, field), f"is required for channel {s.channel}")
    if not s.anonymous and values["phone"] is None and values["id_number"] is None:
        raise InvalidArgument("phone", "a named submission needs a phone or an id_number")

    for field, maximum in (
        ("name", NAME_MAX),
        ("address", ADDRESS_MAX),
        ("place", ADDRESS_MAX),
        ("channel_ref", CHANNEL_REF_MAX),
        ("hotline_operator_id", OPERATOR_ID_MAX),
    ):
        value = values[field]
        if value is not None:
            _check_length(_REQUEST_FIELD.get(field, field), value, maximum)
    if values["id_number"] is not None:
        values["id_number"] = check_id_number(values["id_number"])
    if values["phone"] is not None:
        values["phone"] = check_phone(values["phone"], landline=s.channel == "hotline")
    region = values["region_code"]
    if region is not None:
        if len(region) != 6 or not region.isdigit():
            raise InvalidArgument("region_code", f"must be a 6-digit region code, got {region!r}")
        if region not in allowed_regions:
            raise InvalidArgument("region_code", f"{region} is outside this node's regions")

    return Submission(
        channel=s.channel,
        title=title,
        body=body,
        channel_ref=values["channel_ref"],
        category=values["category"],
        region_code=values["region_code"],
        address=values["address"],
        place=values["place"],
        name=values["name"],
        id_number=values["id_number"],
        phone=values["phone"],
        anonymous=s.anonymous,
        hotline_operator_id=values["hotline_operator_id"],
        publish_consent=s.publish_consent,
        no_progress_notices=s.no_progress_notices,
    )
