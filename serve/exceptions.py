"""Errors raised by serve/. The gateway's HTTP layer turns them into OpenAI-shaped responses."""

from __future__ import annotations


class ServeError(Exception):
    """Base class of serving errors."""


class SessionEvicted(ServeError):
    """A node dropped a session (idle timeout or memory budget); the gateway re-prefills."""


class HopFailed(ServeError):
    """A traversal failed at a node; `node_id` names the node to avoid."""

    def __init__(self, node_id: str, message: str, code: str = "failed") -> None:
        super().__init__(f"node {node_id}: {message}")
        self.node_id = node_id
        self.code = code
        """``session-evicted`` and ``cache-short`` are not the node's fault: re-prefill only."""


class NoRoute(ServeError):
    """No set of live nodes covers every layer; the message names the missing span."""

