"""Domain errors that business code raises; ``services.common.interceptors.status_for`` maps them to gRPC."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused the request. ``message`` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """A request field is malformed or out of range; nothing was changed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(DomainError):
    """The named thing does not exist (or is not visible to this node)."""

    def __init__(self, what: str, key: str) -> None:
        super().__init__(f"{what} {key} not found")
        self.what = what
        self.key = key


class FailedPrecondition(DomainError):
    """The request is well formed but the current state does not allow it (e.g. closing a REGISTERED case)."""

    def __init__(self, reason: str, current_state: str | None = None) -> None:
        message = reason if current_state is None else f"{reason} (current state: {current_state})"
        super().__init__(message)
        self.reason = reason
        self.current_state = current_state


class AlreadyExists(DomainError):
    """Creating something whose key is taken (a second registration of the same submission)."""

    def __init__(self, what: str, key: str) -> None:
        super().__init__(f"{what} {key} already exists")
        self.what = what
        self.key = key


class PermissionDenied(DomainError):
    """The caller is known but out of scope for this region, unit or role."""


class Unauthenticated(DomainError):
    """The caller did not present valid credentials."""

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(message)


class Conflict(DomainError):
    """Optimistic concurrency lost: the record changed since the caller read it; re-read and retry."""


class StaleOwner(FailedPrecondition):
    """A write carried an ownership epoch older than the case's current one (the case was handed off)."""

    def __init__(self, key: str, epoch: int, current_epoch: int | None = None) -> None:
        current = None if current_epoch is None else f"owner epoch {current_epoch}"
        super().__init__(f"write for {key} from stale owner epoch {epoch}", current)
        self.key = key
        self.epoch = epoch
        self.current_epoch = current_epoch


class ResourceExhausted(DomainError):
    """A rate limit or quota was hit; the caller may retry later."""


class Unavailable(DomainError):
    """A dependency (database, parent node) is temporarily unreachable; the caller may retry."""
