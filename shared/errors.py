"""Typed domain errors. Views map them to HTTP statuses; domain code never imports Flask."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors domain code raises on purpose; each names its HTTP status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFound(DomainError):
    """The thing asked for does not exist."""

    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The request contradicts what is already stored."""

    status = 409
    code = "conflict"


class InvalidRequest(DomainError):
    """The request is well-formed JSON but asks for something impossible."""

    status = 422
    code = "validation_error"


class BadCursor(DomainError):
    """A page cursor that is malformed or belongs to a run no longer served."""

    status = 400
    code = "bad_cursor"


class BatchTooLarge(DomainError):
    """A batch with more records than the configured limit."""

    status = 413
    code = "batch_too_large"


class Unavailable(DomainError):
    """A dependency (no published model yet, database down) is not there."""

    status = 503
    code = "unavailable"
