"""Who may call what: operator tokens, the per-RPC policy, and the wiring of the one security layer.

* Operators present ``authorization: Bearer <token>``; a token is ``lx1.<claims>.<mac>`` with
  base64url JSON claims (sub, node, unit, roles, exp) and an HMAC-SHA256 over them.
* ``build_policy`` gives every method of every business service a rule: citizen (public, rate
  limited; the servicer checks tracking code + phone digits), peer (node-to-node, authenticated by
  the mTLS certificate) or operator roles. Unknown verbs make the server refuse to start.
* ``SecurityInterceptor`` (services.common.security_interceptor) enforces it: no/invalid token →
  UNAUTHENTICATED; a role, region or unit out of scope → PERMISSION_DENIED; it masks personal data
  in responses by role (a handling unit, which may be the subject of the complaint, sees no
  complainant identity at all: 条例 Art. 30), and writes an audit record for every mutating RPC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import grpc
from google.protobuf.message import Message

from services.common.audit import AuditLog, load_audit_key
from services.common.errors import Unauthenticated
from services.common.names import LINK_METHODS
from services.common.rate_limit import RateLimiter
from services.common.redaction import redact_fields
from services.common.regions import RegionTree
from services.common.server_calls import MethodInterceptor
from services.common.settings import Settings

ROLES: tuple[str, ...] = ("clerk", "handler", "supervisor", "auditor", "admin", "evaluator")
# 第三方评价: the evaluation group's members see their month's sample and rate it, nothing else.
EVALUATORS = frozenset({"evaluator"})
READERS = frozenset(ROLES) - EVALUATORS
WRITERS = frozenset({"clerk", "handler", "supervisor", "admin"})
OFFICE = frozenset({"clerk", "supervisor", "admin"})  # the 信访 office itself, not handling units
SUPERVISORS = frozenset({"supervisor", "admin"})
ADMINS = frozenset({"admin"})

TOKEN_PREFIX = "lx1"
# Reads are not audited. PullDown is a child's poll for hand-offs (every pump pass): auditing it filled
# the trail with hundreds of rows a minute per child; what the poll changes (AckDown) is audited.
READ_VERBS = ("Get", "List", "Rank", "Track", "Link", "Check", "Classify", "Locate", "Fetch", "Pull")


class Access(str, Enum):
    CITIZEN = "citizen"  # public: tracking code + phone digits checked by the servicer, rate-limited
    PEER = "peer"  # node-to-node: the TLS client certificate of a node below this one
    OPERATOR = "operator"  # a signed operator token with one of ``roles``
    # Another node of the federation (its verified certificate, any tier: a joint video reception
    # holds a room at whichever node has the terminal), or else an operator token with ``roles``.
    NODE_OR_OPERATOR = "node-or-operator"


@dataclass(frozen=True)
class Rule:
    access: Access
    roles: frozenset[str] = frozenset()
    mutating: bool = False


CITIZEN_METHODS = frozenset(
    {
        "lianxin.intake.v1.IntakeService/SubmitCase",
        "lianxin.intake.v1.IntakeService/TrackCase",
        "lianxin.intake.v1.IntakeService/EvaluateCase",
        "lianxin.intake.v1.IntakeService/RequestReview",
        "lianxin.intake.v1.IntakeService/WithdrawCase",
        "lianxin.intake.v1.IntakeService/ListPublishedReplies",
        "lianxin.intake.v1.IntakeService/SetProgressNotices",
        # The citizen's own video visit: the servicer checks the case pass TrackCase answered.
        "lianxin.video.v1.VideoService/ListReceivingLeaders",
        "lianxin.video.v1.VideoService/BookCitizenVisit",
        "lianxin.video.v1.VideoService/ListCitizenVisits",
        "lianxin.video.v1.VideoService/CancelCitizenVisit",
    }
)
PEER_METHODS = LINK_METHODS
# Called by another node's video service for a joint reception (services.video.peers.GrpcRemoteRooms).
NODE_METHODS = frozenset(
    {
        "lianxin.video.v1.VideoService/HoldRoom",
        "lianxin.video.v1.VideoService/ConfirmHold",
        "lianxin.video.v1.VideoService/ReleaseHold",
        # 远程会商: the host node asks each participant's node when its unit and room are free.
        "lianxin.video.v1.VideoService/ListFreePeriods",
    }
)
# Operator methods whose roles differ from the verb default (reads: everyone; writes: WRITERS).
ROLE_OVERRIDES: dict[str, frozenset[str]] = {
    "lianxin.intake.v1.IntakeService/ImportCases": OFFICE,
    "lianxin.intake.v1.IntakeService/ReleaseModeratedCase": OFFICE,
    "lianxin.intake.v1.IntakeService/ListModerationQueue": OFFICE | {"auditor"},
    "lianxin.routing.v1.RoutingService/ArbitrateObjection": SUPERVISORS,
    "lianxin.routing.v1.RoutingService/ApproveExtension": SUPERVISORS,
    "lianxin.routing.v1.RoutingService/CloseWorkOrder": OFFICE,
    "lianxin.routing.v1.RoutingService/ReopenWorkOrder": OFFICE,
    "lianxin.routing.v1.RoutingService/ReviewWorkOrder": SUPERVISORS,
    "lianxin.routing.v1.RoutingService/Supervise": SUPERVISORS,
    "lianxin.routing.v1.RoutingService/AssignManually": OFFICE,
    "lianxin.routing.v1.RoutingService/EscalateCase": OFFICE,
    "lianxin.routing.v1.RoutingService/AnswerAssist": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/RecordInstruction": OFFICE,
    "lianxin.routing.v1.RoutingService/DrawEvaluationSample": SUPERVISORS,
    "lianxin.routing.v1.RoutingService/ListEvaluationSample": EVALUATORS | SUPERVISORS | {"auditor"},
    "lianxin.routing.v1.RoutingService/RecordThirdPartyRating": EVALUATORS,
    "lianxin.routing.v1.RoutingService/AcceptWorkOrder": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/RefuseWorkOrder": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/ObjectWorkOrder": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/RequestExtension": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/ReplyWorkOrder": frozenset({"handler", "admin"}),
    "lianxin.routing.v1.RoutingService/LoadCalendar": ADMINS,
    "lianxin.exchange.v1.ExchangeService/ReplayQuarantine": ADMINS,
    "lianxin.exchange.v1.ExchangeService/DiscardQuarantine": ADMINS,
    "lianxin.video.v1.VideoService/PublishSchedule": OFFICE,
    "lianxin.video.v1.VideoService/RegisterRoom": ADMINS,
}


def is_mutating(method_name: str) -> bool:
    return not method_name.startswith(READ_VERBS)


def rule_for(full_method: str) -> Rule:
    """The rule of one ``package.Service/Method``."""
    name = full_method.rsplit("/", 1)[-1]
    mutating = is_mutating(name)
    if full_method in CITIZEN_METHODS:
        return Rule(Access.CITIZEN, mutating=mutating)
    if full_method in PEER_METHODS:
        return Rule(Access.PEER, mutating=mutating)
    roles = ROLE_OVERRIDES.get(full_method, WRITERS if mutating else READERS)
    access = Access.NODE_OR_OPERATOR if full_method in NODE_METHODS else Access.OPERATOR
    return Rule(access, roles=roles, mutating=mutating)


def business_methods(service_names: Iterable[str]) -> list[str]:
    """Every ``/package.Service/Method`` of the named services, from the generated descriptors."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    out: list[str] = []
    for service in service_names:
        desc = pool.FindServiceByName(service)
        out.extend(f"{service}/{m.name}" for m in desc.methods)
    return out


def build_policy(service_names: Iterable[str]) -> dict[str, Rule]:
    """A rule for every method of every ``lianxin.*`` service; raises if one cannot be given one."""
    policy: dict[str, Rule] = {}
    for method in business_methods(s for s in service_names if s.startswith("lianxin.")):
        rule = rule_for(method)
        if rule.access is Access.OPERATOR and not rule.roles:
            raise RuntimeError(f"no security policy for {method}: refusing to start")
        policy[method] = rule
    return policy


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Principal:
    subject: str
    node: str
    unit: str
    roles: frozenset[str]
    expires: int = 0
    kind: str = "operator"  # operator | citizen | peer

    def has_any(self, roles: Iterable[str]) -> bool:
        # Asked on every call: no intersection set built, the same answer.
        return not self.roles.isdisjoint(roles)


ANONYMOUS = Principal(subject="anonymous", node="", unit="", roles=frozenset(), kind="citizen")
# The caller of the RPC being handled; set by the security layer (services.common.security_interceptor).
CURRENT_PRINCIPAL: ContextVar[Principal | None] = ContextVar("lianxin_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (None when security is off)."""
    return CURRENT_PRINCIPAL.get()


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    token = CURRENT_PRINCIPAL.set(principal)
    try:
        yield
    finally:
        CURRENT_PRINCIPAL.reset(token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_token_key(value: str | None) -> bytes:
    """The HMAC key: the value itself, or the contents of the file it names."""
    if not value:
        raise ValueError("LIANXIN_TOKEN_KEY is required when LIANXIN_AUTH=1")
    path = Path(value)
    if len(value) < 256 and path.is_file():
        return path.read_bytes().strip()
    return value.encode()


def issue_token(
    key: bytes,
    *,
    subject: str,
    node: str,
    unit: str = "",
    roles: Sequence[str],
    ttl_s: int = 8 * 3600,
    now: float | None = None,
) -> str:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}")
    claims = {
        "sub": subject,
        "node": node,
        "unit": unit,
        "roles": sorted(roles),
        "exp": int((time.time() if now is None else now) + ttl_s),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, f"{TOKEN_PREFIX}.{body}".encode(), hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}.{body}.{_b64(mac)}"


def verify_token(key: bytes, token: str, *, now: float | None = None) -> Principal:
    """The token's principal; raises ``Unauthenticated`` when it is malformed, forged or expired."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise Unauthenticated("malformed token")
    try:
        mac = _unb64(parts[2])
    except ValueError:
        raise Unauthenticated("malformed token") from None
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise Unauthenticated("invalid token signature")
    try:
        claims = json.loads(_unb64(parts[1]))
        principal = Principal(
            subject=str(claims["sub"]),
            node=str(claims["node"]),
            unit=str(claims.get("unit", "")),
            roles=frozenset(str(r) for r in claims["roles"]),
            expires=int(claims["exp"]),
        )
    except (ValueError, KeyError, TypeError):
        raise Unauthenticated("malformed token") from None
    if principal.expires <= (time.time() if now is None else now):
        raise Unauthenticated("token expired")
    return principal


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying ``token``: ``stub.Method(req, metadata=bearer_metadata(token))``."""
    return (("authorization", f"Bearer {token}"),)


# --------------------------------------------------------------------------- personal data in responses


def redact(message: Message, principal: Principal) -> None:
    """Mask personal data in ``message`` in place for ``principal``.

    Handling units (role handler without an office role) may be the subject of the complaint, so
    they see no complainant identity at all (条例 Art. 30); every other role sees it masked.
    """
    hide = "handler" in principal.roles and not principal.has_any(OFFICE)
    redact_fields(message, hide)


# A web gateway calls the public methods for many citizens from one address: it names the citizen's
# address in this metadata, signed with the node's token key (only a gateway of this node holds it),
# so the rate limit counts each citizen apart. Unsigned, forged or stale values are ignored: the
# caller is then limited by its own address, so a citizen cannot pick a fresh budget by sending one.
CITIZEN_ADDRESS_METADATA = "x-lianxin-citizen-address"
CITIZEN_ADDRESS_TTL_S = 120


def _address_mac(key: bytes, address: str, expires: int) -> str:
    return _b64(hmac.new(key, f"citizen-address|{address}|{expires}".encode(), hashlib.sha256).digest())


def citizen_address_metadata(key: bytes, address: str, *, now: float | None = None) -> tuple[str, str]:
    """Metadata naming the citizen a gateway calls for: ``address|expiry|mac``."""
    expires = int((time.time() if now is None else now) + CITIZEN_ADDRESS_TTL_S)
    return (CITIZEN_ADDRESS_METADATA, f"{address}|{expires}|{_address_mac(key, address, expires)}")


def trusted_citizen_address(key: bytes | None, value: str, *, now: float | None = None) -> str | None:
    """The address a trusted gateway vouched for, or None (no key, malformed, forged or expired)."""
    if key is None or not value:
        return None
    parts = value.rsplit("|", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or len(parts[0]) > 64:
        return None
    address, expires, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(mac, _address_mac(key, address, expires)):
        return None
    current = time.time() if now is None else now
    if not current <= expires <= current + CITIZEN_ADDRESS_TTL_S + 5:
        return None
    return address


# --------------------------------------------------------------------------- wiring


@dataclass
class ServerSecurity:
    """What a host passes to ``GrpcServer``: interceptors, credentials, and a closer."""

    interceptors: list[MethodInterceptor]
    credentials: grpc.ServerCredentials | None
    audit: AuditLog | None

    def close(self) -> None:
        if self.audit is not None:
            self.audit.engine.dispose()


def server_security(settings: Settings, regions: RegionTree, service_names: Iterable[str]) -> ServerSecurity:
    """Security for a server of ``settings.node`` hosting ``service_names`` (all off by default)."""
    from services.common.db import make_engine, service_database_url
    from services.common.security_interceptor import SecurityInterceptor
    from services.common.tls import NodeTls

    credentials = None
    if settings.tls_dir is not None:
        credentials = NodeTls.load(Path(settings.tls_dir), settings.node).server_credentials(require_client_auth=True)
    elif settings.require_mtls:
        raise ValueError("LIANXIN_REQUIRE_MTLS=1 needs LIANXIN_TLS_DIR")
    audit = None
    if settings.audit or settings.auth:
        audit = AuditLog(
            make_engine(service_database_url(settings, "audit"), service="audit"),
            settings.node,
            key=load_audit_key(settings),
        )
        audit.create()
    interceptor = SecurityInterceptor(
        node=settings.node,
        regions=regions,
        policy=build_policy(service_names),
        token_key=load_token_key(settings.token_key) if settings.auth else None,
        audit=audit,
        require_mtls=settings.require_mtls,
        citizen_limiter=RateLimiter(settings.citizen_rate_per_min) if settings.auth else None,
    )
    return ServerSecurity(interceptors=[interceptor], credentials=credentials, audit=audit)
