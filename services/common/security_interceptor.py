"""The one security layer of every business RPC: who calls (token, certificate, citizen), whether they
may, the principal the servicer sees, personal data masked in responses, and the audit trail.

The policy, the tokens and the masking rules are in ``services.common.security``; this is the layer
``GrpcServer`` runs them in. Its work per method (the rule, which metadata names the caller, whether
the method is audited) is decided once (``wrap``); per call it reads the caller from the context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from services.common.audit import AuditLog
from services.common.errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated
from services.common.rate_limit import RateLimiter, peer_host
from services.common.regions import RegionTree
from services.common.security import (
    ANONYMOUS,
    CITIZEN_ADDRESS_METADATA,
    CURRENT_PRINCIPAL,
    OFFICE,
    ROLES,
    Access,
    Principal,
    Rule,
    redact,
    trusted_citizen_address,
    verify_token,
)
from services.common.server_calls import MethodInterceptor
from services.common.tls import peer_region

Behavior = Callable[[Any, grpc.ServicerContext], Any]

# Tokens a process keeps verified; more distinct live tokens than a node's operators hold in a shift.
VERIFIED_TOKENS = 4096


class VerifiedTokens:
    """Operator tokens whose signature this process has checked, by their whole text.

    A console page is several calls with one token: checking its HMAC and parsing its JSON claims
    again each time was ~30 µs a call (issue 17). Only a token that verified is kept, and its expiry
    is checked at every use, so a cached token answers exactly as ``verify_token`` would.
    """

    def __init__(self, key: bytes, size: int = VERIFIED_TOKENS) -> None:
        self._key = key
        self._size = size
        self._known: dict[str, Principal] = {}

    def principal(self, token: str) -> Principal:
        principal = self._known.get(token)
        if principal is None:
            principal = verify_token(self._key, token)  # raises for malformed, forged or expired
            if len(self._known) >= self._size:
                self._known.clear()  # a flood of distinct valid tokens costs their verification again
            self._known[token] = principal
        elif principal.expires <= time.time():
            raise Unauthenticated("token expired")
        return principal


@dataclass
class SecurityInterceptor(MethodInterceptor):
    """Authentication, authorization, response masking and auditing for every business RPC."""

    node: str
    regions: RegionTree
    policy: Mapping[str, Rule]
    token_key: bytes | None = None  # None: tokens are not required (auth off; peers and audit only)
    audit: AuditLog | None = None
    require_mtls: bool = False
    citizen_limiter: RateLimiter | None = None
    _tokens: VerifiedTokens | None = field(default=None, init=False, repr=False)
    _dev: Principal = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tokens = None if self.token_key is None else VerifiedTokens(self.token_key)
        # Auth off: every call acts with all roles as the node itself (never shown to servicers).
        self._dev = Principal(subject="unauthenticated", node=self.node, unit="", roles=frozenset(ROLES), kind="dev")

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        full = method.lstrip("/")
        rule = self.policy.get(full)
        if rule is None:
            # Health, reflection: not business RPCs (unknown ones never get here: UNIMPLEMENTED).
            return handler
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream_behavior(handler.stream_stream, full, rule, streaming_in=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_behavior(handler.stream_unary, full, rule, streaming_in=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._stream_behavior(handler.unary_stream, full, rule, streaming_in=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary_behavior(handler.unary_unary, full, rule, streaming_in=False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -- checks

    def _authenticate(self, rule: Rule, full: str, context: grpc.ServicerContext) -> Principal:
        if rule.access is Access.CITIZEN:
            if self.citizen_limiter is not None:
                # A gateway names the citizen it calls for in this metadata (public methods take no token).
                source = trusted_citizen_address(self.token_key, _metadata_value(context, CITIZEN_ADDRESS_METADATA))
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
        if self._tokens is None:
            return self._dev
        scheme, _, token = _metadata_value(context, "authorization").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("operator token required (authorization: Bearer <token>)")
        principal = self._tokens.principal(token.strip())
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

    def _audit(self, full: str, principal: Principal | None, target: str, outcome: str) -> None:
        assert self.audit is not None  # only audited methods call this
        actor = principal.subject if principal is not None else "anonymous"
        self.audit.record(actor=actor, method=full, target=target, outcome=outcome)

    def _unary_behavior(self, behavior: Behavior, full: str, rule: Rule, *, streaming_in: bool) -> Behavior:
        # Only a mutating method is audited; the target and outcome are worked out for the audit alone.
        audited = self.audit is not None and rule.mutating

        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            principal: Principal | None = None
            target = "" if streaming_in or not audited else _target(request)
            outcome = "UNKNOWN"
            try:
                principal = self._authenticate(rule, full, context)
                request = self._admitted(request, principal, streaming_in)
                acting = CURRENT_PRINCIPAL.set(_visible(principal))
                try:
                    response = behavior(request, context)
                finally:
                    CURRENT_PRINCIPAL.reset(acting)
                if principal.kind == "operator" and isinstance(response, Message):
                    redact(response, principal)
                if audited:
                    if not target and isinstance(response, Message):
                        case = getattr(response, "case", None) if _has_field(response, "case") else None
                        target = (_target(case) if case is not None else "") or _target(response)
                    outcome = _outcome_of(context, None)
                return response
            except BaseException as exc:
                if audited:
                    outcome = _outcome_of(context, exc)
                raise
            finally:
                if audited:
                    self._audit(full, principal, target, outcome)

        return wrapper

    def _stream_behavior(self, behavior: Behavior, full: str, rule: Rule, *, streaming_in: bool) -> Behavior:
        audited = self.audit is not None and rule.mutating

        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal: Principal | None = None
            target = "" if streaming_in or not audited else _target(request)
            outcome = "UNKNOWN"
            try:
                principal = self._authenticate(rule, full, context)
                request = self._admitted(request, principal, streaming_in)
                acting = CURRENT_PRINCIPAL.set(_visible(principal))
                try:
                    for item in behavior(request, context):
                        if principal.kind == "operator" and isinstance(item, Message):
                            redact(item, principal)
                        yield item
                finally:
                    CURRENT_PRINCIPAL.reset(acting)
                if audited:
                    outcome = _outcome_of(context, None)
            except BaseException as exc:
                if audited:
                    outcome = _outcome_of(context, exc)
                raise
            finally:
                if audited:
                    self._audit(full, principal, target, outcome)

        return wrapper

    def _admitted(self, request: Any, principal: Principal, streaming_in: bool) -> Any:
        """The request (a stream: each of its requests, as read) once ``principal`` may send it."""
        if streaming_in:
            return self._checked_stream(request, principal)
        self._authorize_request(request, principal)
        return request

    def _checked_stream(self, requests: Iterator[Any], principal: Principal) -> Iterator[Any]:
        for request in requests:
            self._authorize_request(request, principal)
            yield request


def _metadata_value(context: grpc.ServicerContext, key: str) -> str:
    """The call's metadata ``key`` ("" without it); of repeated keys the last, as ``dict(metadata)`` had it."""
    value: Any = ""
    for name, item in context.invocation_metadata() or ():
        if name == key:
            value = item
    return str(value)


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
        # Imported here: interceptors loads the database drivers (psycopg, SQLAlchemy's errors).
        from services.common.interceptors import status_for

        return str(status_for(exc).name)
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if exc is None else ("CANCELLED" if isinstance(exc, GeneratorExit) else "UNKNOWN")
