"""Case passes: a short-lived proof that a citizen showed a case's tracking code and phone digits.

Intake checks the tracking code (查询码) and the last four phone digits on TrackCase and answers a
pass for that case; other services of the same node (video's citizen methods) accept the pass
instead of an operator token. The pass is ``cp1.<case id>.<expiry>.<mac>``, the MAC keyed by the
node's data keyring (``PersonalDataCipher.blind_index``, which every service of the node holds), so
only the node can mint one and a pass names exactly one case: it cannot be turned into another's.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from services.common.errors import InvalidArgument, PermissionDenied

PREFIX = "cp1"
PASS_TTL_S = 30 * 60  # as long as the portal keeps the tracking proof
Mac = Callable[[str, str], str]  # (kind, value) -> keyed digest: PersonalDataCipher.blind_index


def issue_case_pass(mac: Mac, case_id: str, *, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + PASS_TTL_S)
    return f"{PREFIX}.{case_id}.{expires}.{mac('case-pass', f'{case_id}|{expires}')}"


def case_of_pass(mac: Mac, value: str, *, field: str = "case_pass", now: float | None = None) -> str:
    """The case a pass proves; InvalidArgument when it is missing or malformed, PermissionDenied when
    it is forged, altered or expired (the citizen tracks the case again to get a fresh one)."""
    if not value.strip():
        raise InvalidArgument(field, "must be set (TrackCase answers it for the tracking code and phone digits)")
    parts = value.strip().split(".")
    if len(parts) < 4 or parts[0] != PREFIX or not parts[-2].isdigit() or len(value) > 300:
        raise InvalidArgument(field, "is not a case pass from TrackCase")
    case_id, expires, digest = ".".join(parts[1:-2]), int(parts[-2]), parts[-1]
    if not hmac.compare_digest(digest, mac("case-pass", f"{case_id}|{expires}")):
        raise PermissionDenied("the case pass was not issued by this node for this case")
    if expires < (time.time() if now is None else now):
        raise PermissionDenied("the case pass has expired; track the case again")
    return case_id
