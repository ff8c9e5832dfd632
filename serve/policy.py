"""Routing policies: which nodes a request's activations may go through.

A node sees the hidden states of every position it computes, and prompts can be recovered from
them (docs/privacy.md), so who may compute on a request is a privacy decision, made per request:

- `any`: every live node that serves the version (the default);
- `allowlist`: only nodes whose id a maintainer listed (`RoutingPolicyConfig.allowlist`);
- `attested`: only nodes whose record carries an attestation a configured verifier accepts
  (serve/attestation.py): a trusted attester vouches for the node's key, its software
  measurement and the weights it serves.

A request names a policy in its `routing` field; an account may be given one by the maintainer
(`RoutingPolicyConfig.accounts`). Both hold: a node must meet the account's policy and the
request's, so a request can narrow its key's policy and never widen it. With no node meeting
them the gateway answers 503 naming the policy (never a silent fallback to `any`). Pure
functions and a small cache of verified attestations; no network.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve.attestation import AttestationRejected, InTotoDsseVerifier

Policy = Literal["any", "allowlist", "attested"]
POLICIES = ("any", "allowlist", "attested")


class RoutingPolicyConfig(BaseModel):
    """The maintainer's routing policies (part of `GatewayConfig`)."""

    model_config = ConfigDict(extra="forbid")
    default: Policy = "any"
    """Policy of requests from accounts not listed in `accounts`."""
    accounts: dict[str, Policy] = Field(default_factory=dict)
    """Account id → the policy its keys require."""
    allowlist: set[str] = Field(default_factory=set)
    """Node ids the `allowlist` policy admits."""
    attesters: list[str] = Field(default_factory=list)
    """Ed25519 public keys (hex) of the attestation keys `attested` trusts."""
    measurements: set[str] | None = None
    """Software measurements (SHA-256 hex) `attested` accepts (None: any a trusted key signed)."""


class RoutingPolicies:
    """Decides, for a set of required policies, whether a node may compute on a request."""

    def __init__(self, config: RoutingPolicyConfig | None = None,
                 cache_s: float = 60.0) -> None:
        self.config = config or RoutingPolicyConfig()
        self.verifier = InTotoDsseVerifier(self.config.attesters, self.config.measurements)
        self.cache_s = cache_s
        self._verified: dict[str, tuple[float, str | None]] = {}
        """Evidence digest → (trusted until, None if accepted else why not); an acceptance is
        never trusted past the attestation's expiry."""

    def required(self, account_id: str | None, asked: str | None) -> tuple[str, ...]:
        """The policies a request must meet: its account's and its own (`any` dropped)."""
        if asked is not None and asked not in POLICIES:
            raise ValueError(f"routing policy {asked!r} is not one of {', '.join(POLICIES)}")
        account = self.config.accounts.get(account_id or "", self.config.default)
        return tuple(sorted({p for p in (account, asked) if p and p != "any"}))

    def filter_for(self, account_id: str | None, asked: str | None) -> "NodeFilter | None":
        """The node filter of a request: its account's policy and its own `routing.policy`."""
        return self.admits(self.required(account_id, asked))

    def rejection(self, policy: str, node) -> str | None:
        """Why `node` (a `NodeInfo`) does not meet `policy`, or None when it does."""
        if policy == "any":
            return None
        if policy == "allowlist":
            return None if node.node_id in self.config.allowlist else "not on the allowlist"
        if policy == "attested":
            return self._attestation(node)
        return f"unknown policy {policy!r}"

    def admits(self, policies: tuple[str, ...]) -> "NodeFilter | None":
        """The node filter `Pipeline.route` applies (None: admit every node)."""
        if not policies:
            return None
        return NodeFilter(describe(policies),
                          lambda node: all(self.rejection(p, node) is None for p in policies))

    def _attestation(self, node) -> str | None:
        evidence = getattr(node, "attestation", None)
        if not evidence:
            return "presents no attestation"
        digest = hashlib.sha256(json.dumps([node.public_key, node.version, evidence],
                                           sort_keys=True).encode()).hexdigest()
        cached = self._verified.get(digest)
        now = time.time()
        if cached is not None and now < cached[0]:
            return cached[1]
        until = now + self.cache_s
        try:
            until = min(until, self.verifier.verify(node.public_key, node.version,
                                                    evidence).expires_at)
            why = None
        except AttestationRejected as exc:
            why = str(exc)
        if len(self._verified) > 4096:
            self._verified.clear()
        self._verified[digest] = (until, why)
        return why


class NodeFilter:
    """A named node predicate: the route's admission test, and what a 503 names."""

    def __init__(self, name: str, test) -> None:
        self.name, self.test = name, test

    def __call__(self, node) -> bool:
        return self.test(node)


def describe(policies: tuple[str, ...]) -> str:
    """How a trace records the policy a request was routed under."""
    return "+".join(policies) or "any"
