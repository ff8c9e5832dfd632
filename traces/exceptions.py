"""Errors of the trace store. The gateway maps them to 401 / 403 / 404 / 400."""

from __future__ import annotations


class TraceStoreError(Exception):
    """Base class."""


class AuthError(TraceStoreError):
    """Unknown or revoked API key (401)."""


class Forbidden(TraceStoreError):
    """The caller may not touch this resource (403): another contributor's trace, wrong role."""


class NotFound(TraceStoreError):
    """No such trace, grant or account (404)."""


class InvalidInput(TraceStoreError, ValueError):
    """Bad scope, expiry, role or feedback (400)."""
