"""Errors raised by serve/. Only the gateway's HTTP layer (`serve/gateway/api.py`) turns them into
status codes; every error body there has OpenAI's shape."""

from __future__ import annotations

from dataclasses import dataclass


class ServeError(Exception):
    """Base class of serving errors."""


class HopFailed(ServeError):
    """A traversal failed at a node; `node_id` names the node to avoid."""

    def __init__(self, node_id: str, message: str, code: str = "failed",
                 reporter: str | None = None) -> None:
        super().__init__(f"node {node_id}: {message}")
        self.node_id = node_id
        self.code = code
        """The node's error code (`wire.Error.code`), or ``failed`` / ``timeout`` locally."""
        self.reporter = reporter
        """The node whose signed error this is, when it names another (its next hop)."""


class SessionEvicted(HopFailed):
    """A node no longer holds (all of) a session's cache: dropped by idle timeout or memory budget
    (``session-evicted``), or shorter than the request assumes (``cache-short``). Not the node's
    fault: the gateway re-prefills the session, without excluding the node."""

    CODES = ("session-evicted", "cache-short")


def hop_error(node_id: str, code: str, message: str, reporter: str | None = None
              ) -> HopFailed:
    """The exception for a node's `Error` frame."""
    cls = SessionEvicted if code in SessionEvicted.CODES else HopFailed
    return cls(node_id, f"{code}: {message}", code, reporter)


class NoRoute(ServeError):
    """No set of live nodes covers every layer; the message names the missing span."""


class WireError(ServeError, ValueError):
    """A frame that cannot be decoded: truncated, unknown type, or another protocol version."""


@dataclass
class ProofFailure(ServeError):
    """A live-weight proof failed `check` (a short name such as ``nonce`` or ``merkle``)."""

    check: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.detail}"


class FrameRejected(ServeError):
    """A protocol frame failed `check` (``ticket-signature``, ``route``, ``receipt-chain``…);
    `hop` names the hop at fault when the check can tell."""

    def __init__(self, check: str, detail: str, hop: int | None = None) -> None:
        super().__init__(f"[{check}] {detail}")
        self.check, self.detail, self.hop = check, detail, hop


class RecordRejected(ServeError):
    """A signed node record or verdict failed `check` (``signature``, ``node-id``, ``stale``…)."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"[{check}] {detail}")
        self.check, self.detail = check, detail


class TransportRefused(ServeError, OSError):
    """A connection refused before any frame was sent: plain ``ws://`` off loopback, a ``wss://``
    peer with no key to pin, or a peer whose TLS certificate key is not the one its signed record
    or ticket names (`check`: ``plain``, ``tls-pin``, ``tls-certificate``, ``scheme``). An
    `OSError`, so senders treat it as an unreachable peer."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"[{check}] {detail}")
        self.check, self.detail = check, detail


class VerdictNotPosted(ServeError):
    """A verdict could not be posted: no key to sign it with, or the tracker refused it (the
    message says which, with the tracker's answer)."""


class ApiError(ServeError):
    """A request the API refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type_,
                                                                       param, code)
        self.headers = headers or {}
        """Response headers the refusal needs (a 429's Retry-After)."""


class InviteError(ServeError, ValueError):
    """A swarm invite, a `--join` value or a sealed DHT value that cannot be used: malformed,
    or not sealed with the swarm's key."""


class StorageFull(ServeError):
    """An upload would take its owner's stored files past their allowance."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"the files stored for this key hold {held} bytes; at most {limit} may "
                         "be stored (delete files to make room)")
        self.held, self.limit = held, limit
