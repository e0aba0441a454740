"""Who may call what: operator tokens, the per-RPC policy, and the one security interceptor.

* Operators present ``authorization: Bearer <token>``; a token is ``lx1.<claims>.<mac>`` with
  base64url JSON claims (sub, node, unit, roles, exp) and an HMAC-SHA256 over them.
* ``build_policy`` gives every method of every business service a rule: citizen (public, rate
  limited; the servicer checks tracking code + phone digits), peer (node-to-node, authenticated by
  the mTLS certificate) or operator roles. Unknown verbs make the server refuse to start.
* ``SecurityInterceptor`` enforces it: no/invalid token → UNAUTHENTICATED; a role, region or unit
  out of scope → PERMISSION_DENIED; it masks personal data in responses by role (a handling unit,
  which may be the subject of the complaint, sees no complainant identity at all: 条例 Art. 30),
  and writes an audit record for every mutating RPC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from services.common.audit import AuditLog, load_audit_key
from services.common.errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated
from services.common.names import LINK_METHODS
from services.common.rate_limit import RateLimiter, peer_host
from services.common.redaction import redact_fields
from services.common.regions import RegionTree
from services.common.settings import Settings
from services.common.tls import peer_region

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
        return bool(self.roles & set(roles))


ANONYMOUS = Principal(subject="anonymous", node="", unit="", roles=frozenset(), kind="citizen")
_current: ContextVar[Principal | None] = ContextVar("lianxin_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (None when security is off)."""
    return _current.get()


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


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


# --------------------------------------------------------------------------- the interceptor

Behavior = Callable[[Any, grpc.ServicerContext], Any]


@dataclass
class SecurityInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authentication, authorization, response masking and auditing for every business RPC."""

    node: str
    regions: RegionTree
    policy: Mapping[str, Rule]
    token_key: bytes | None = None  # None: tokens are not required (auth off; peers and audit only)
    audit: AuditLog | None = None
    require_mtls: bool = False
    citizen_limiter: RateLimiter | None = None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        full = handler_call_details.method.lstrip("/")
        rule = self.policy.get(full)
        if handler is None or rule is None:
            # Health, reflection, or unknown: not business RPCs (unknown ones answer UNIMPLEMENTED).
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        authorization = str(metadata.get("authorization", ""))
        if rule.access is Access.CITIZEN:
            # The citizen's address rides in the authorization slot of the wrappers: public methods
            # take no token, and the wrappers then need no extra argument.
            authorization = str(metadata.get(CITIZEN_ADDRESS_METADATA, ""))
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream_behavior(handler.stream_stream, full, rule, authorization, streaming_in=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_behavior(handler.stream_unary, full, rule, authorization, streaming_in=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._stream_behavior(handler.unary_stream, full, rule, authorization, streaming_in=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary_behavior(handler.unary_unary, full, rule, authorization, streaming_in=False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -- checks

    def _authenticate(self, rule: Rule, full: str, authorization: str, context: grpc.ServicerContext) -> Principal:
        if rule.access is Access.CITIZEN:
            if self.citizen_limiter is not None:
                source = trusted_citizen_address(self.token_key, authorization)
                source = f"citizen:{source}" if source else peer_host(context)
                if not self.citizen_limiter.allow(f"{source}|{full}"):
                    raise ResourceExhausted("too many requests; try again in a minute")
            return ANONYMOUS
        if rule.access is Access.PEER:
            return self._peer(context)
        if rule.access is Access.NODE_OR_OPERATOR:
            region = peer_region(context)
            if region is not None and region in self.regions:
                return Principal(subject=f"node:{region}", node=region, unit="", roles=frozenset(), kind="peer")
        if self.token_key is None:
            return Principal(subject="unauthenticated", node=self.node, unit="", roles=frozenset(ROLES), kind="dev")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("operator token required (authorization: Bearer <token>)")
        principal = verify_token(self.token_key, token.strip())
        if not principal.has_any(rule.roles):
            raise PermissionDenied(f"{full.rsplit('/', 1)[-1]} needs one of the roles {', '.join(sorted(rule.roles))}")
        return principal

    def _peer(self, context: grpc.ServicerContext) -> Principal:
        region = peer_region(context)
        if region is None:
            if self.require_mtls:
                raise Unauthenticated("node-to-node calls need a client certificate")
            return Principal(subject="peer", node="", unit="", roles=frozenset(), kind="peer")
        # A parent accepts only its own direct children (a county's certificate cannot skip its
        # city); the national system (no region) accepts provinces.
        if self.node in self.regions and (region not in self.regions or self.regions.parent(region) != self.node):
            raise PermissionDenied(f"node {region} is not a direct child of node {self.node}")
        return Principal(subject=f"node:{region}", node=region, unit="", roles=frozenset(), kind="peer")

    def _authorize_request(self, request: Any, principal: Principal) -> None:
        if principal.kind == "peer" and principal.node:
            for speaks_for in ("child_node", "requesting_node"):
                claimed = getattr(request, speaks_for, "")
                if claimed and claimed != principal.node:
                    raise PermissionDenied(f"certificate of node {principal.node} cannot speak for node {claimed}")
            return
        if principal.kind != "operator":
            return
        region = getattr(request, "region_code", "") if _has_field(request, "region_code") else ""
        if region:
            if not self.regions.contains(principal.node, region):
                raise PermissionDenied(f"region {region} is outside the operator's region {principal.node}")
        elif not self.regions.contains(principal.node, self.node):
            # An operator of a lower node at a higher node must name a region within their own.
            raise PermissionDenied(f"node {self.node} is outside the operator's region {principal.node}")
        if "handler" in principal.roles and not principal.has_any(OFFICE) and _has_field(request, "unit_id"):
            unit = request.unit_id
            assisting = getattr(request, "assisting_unit_id", "") if _has_field(request, "assisting_unit_id") else ""
            if assisting and assisting != principal.unit:
                raise PermissionDenied("work of another unit")
            if assisting and not unit:
                pass  # 协办 inbox: the lead's work orders that wait for the operator's own unit's answer
            elif not unit:
                request.unit_id = principal.unit  # a handling unit lists its own work only
            elif unit != principal.unit:
                raise PermissionDenied("work of another unit")

    # -- wrappers

    def _audit(self, full: str, rule: Rule, principal: Principal | None, target: str, outcome: str) -> None:
        if self.audit is None or not rule.mutating:
            return
        actor = principal.subject if principal is not None else "anonymous"
        self.audit.record(actor=actor, method=full, target=target, outcome=outcome)

    def _unary_behavior(
        self, behavior: Behavior, full: str, rule: Rule, authorization: str, *, streaming_in: bool
    ) -> Behavior:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            principal: Principal | None = None
            target = "" if streaming_in else _target(request)
            outcome = "UNKNOWN"
            try:
                principal = self._authenticate(rule, full, authorization, context)
                if streaming_in:
                    request = self._checked_stream(request, principal)
                else:
                    self._authorize_request(request, principal)
                with acting_as(_visible(principal)):
                    response = behavior(request, context)
                if principal.kind == "operator" and isinstance(response, Message):
                    redact(response, principal)
                if not target and isinstance(response, Message):
                    case = getattr(response, "case", None) if _has_field(response, "case") else None
                    target = (_target(case) if case is not None else "") or _target(response)
                outcome = _outcome_of(context, None)
                return response
            except BaseException as exc:
                outcome = _outcome_of(context, exc)
                raise
            finally:
                self._audit(full, rule, principal, target, outcome)

        return wrapper

    def _stream_behavior(
        self, behavior: Behavior, full: str, rule: Rule, authorization: str, *, streaming_in: bool
    ) -> Behavior:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal: Principal | None = None
            target = "" if streaming_in else _target(request)
            outcome = "UNKNOWN"
            try:
                principal = self._authenticate(rule, full, authorization, context)
                if streaming_in:
                    request = self._checked_stream(request, principal)
                else:
                    self._authorize_request(request, principal)
                token = _current.set(_visible(principal))
                try:
                    for item in behavior(request, context):
                        if principal.kind == "operator" and isinstance(item, Message):
                            redact(item, principal)
                        yield item
                finally:
                    _current.reset(token)
                outcome = _outcome_of(context, None)
            except BaseException as exc:
                outcome = _outcome_of(context, exc)
                raise
            finally:
                self._audit(full, rule, principal, target, outcome)

        return wrapper

    def _checked_stream(self, requests: Iterator[Any], principal: Principal) -> Iterator[Any]:
        for request in requests:
            self._authorize_request(request, principal)
            yield request


def _visible(principal: Principal) -> Principal | None:
    # With auth off servicers see no principal at all, as documented for current_principal().
    return None if principal.kind == "dev" else principal


def _has_field(message: Any, name: str) -> bool:
    return isinstance(message, Message) and name in message.DESCRIPTOR.fields_by_name


def _target(request: Any) -> str:
    for name in ("case_id", "work_order_id", "visit_id", "tracking_code", "child_node"):
        if _has_field(request, name) and getattr(request, name):
            value = str(getattr(request, name))
            return value if name != "tracking_code" else f"tracking:{value[:4]}***"
    return ""


def _outcome_of(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    if isinstance(exc, DomainError):
        # Imported here, as before the move: interceptors loads the database drivers, which the
        # processes importing security for tokens alone (the web gateway, the CLI) do not need.
        from services.common.interceptors import status_for

        return str(status_for(exc).name)
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if exc is None else ("CANCELLED" if isinstance(exc, GeneratorExit) else "UNKNOWN")


# --------------------------------------------------------------------------- wiring


@dataclass
class ServerSecurity:
    """What a host passes to ``GrpcServer``: interceptors, credentials, and a closer."""

    interceptors: list[grpc.ServerInterceptor]
    credentials: grpc.ServerCredentials | None
    audit: AuditLog | None

    def close(self) -> None:
        if self.audit is not None:
            self.audit.engine.dispose()


def server_security(settings: Settings, regions: RegionTree, service_names: Iterable[str]) -> ServerSecurity:
    """Security for a server of ``settings.node`` hosting ``service_names`` (all off by default)."""
    from services.common.db import make_engine, service_database_url
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
