"""The drafter contract.

A `Drafter` is shared by all requests of a gateway; `start(prompt, ..., scope)` opens a per-request
`DraftSession`. `propose(context, k)` returns up to `k` tokens that plausibly follow `context` (the
whole token history, prompt included, ending with the last accepted token), and optionally the
probabilities `q` it sampled them from. A drafter that picks tokens deterministically returns
`probs=None`: the verifier then treats its proposal as one-hot, which keeps sampling lossless.
`observe(tokens, scope)` tells the drafter what was finally generated (learning drafters update on
it).

A drafter that learns from traffic is a store of that traffic, and its acceptance (in every
response's `drafted` / `accepted`, and in its latency) tells a caller whether the text they send was
seen before. So every request carries a `DraftScope`: whose request it is (the partition its drafts
may come from and its text may go to) and what its consent allows. A learning drafter must draft a
request only from that tenant's own partition and from text whose contributor granted `drafting`,
and must be able to `forget` a contributor (erasure) and a grant (revocation, expiry).

Drafters know nothing about the network, the target model's logits or the trace store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Draft:
    tokens: list[int]
    probs: torch.Tensor | None = None
    """[len(tokens), vocab] distributions the tokens were sampled from, or None (one-hot)."""


@dataclass(frozen=True)
class Shared:
    """The grant that lets a request's text teach every caller's drafts (scope `drafting`)."""

    contributor_id: str
    grant_id: str
    expires_at: float
    """Unix time after which the text must no longer be drafted from."""


@dataclass(frozen=True)
class DraftScope:
    """Whose request this is, and what a learning drafter may do with it."""

    tenant: str | None = None
    """The partition of the caller (its account id): its drafts come from this partition and from
    the shared one, never from another tenant's. None: no partition (an open gateway, where
    callers cannot be told apart): shared drafts only, nothing learnt."""
    learn: bool = False
    """May the tenant's own partition keep this request's text (False for `store: false`)."""
    shared: Shared | None = None
    """Set only when the caller's active grant includes `drafting`: the text may then teach the
    shared partition, until the grant expires or is revoked."""


NO_SCOPE = DraftScope()
"""Learns nothing, drafts only from consented shared text."""


class DraftSession(Protocol):
    def propose(self, context: list[int], k: int) -> Draft: ...

    def close(self) -> None: ...


class Drafter(Protocol):
    name: str

    def start(self, prompt: list[int], temperature: float, top_p: float,
              generator: torch.Generator | None,
              scope: DraftScope = NO_SCOPE) -> DraftSession: ...

    def observe(self, tokens: list[int], scope: DraftScope = NO_SCOPE) -> None: ...


class StatelessSession:
    """A DraftSession for drafters that need no per-request state."""

    def __init__(self, propose) -> None:
        self._propose = propose

    def propose(self, context: list[int], k: int) -> Draft:
        return self._propose(context, k)

    def close(self) -> None:
        pass
