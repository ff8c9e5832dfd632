"""The drafter contract.

A `Drafter` is shared by all requests of a gateway; `start(prompt)` opens a per-request
`DraftSession`. `propose(context, k)` returns up to `k` tokens that plausibly follow `context` (the
whole token history, prompt included, ending with the last accepted token), and optionally the
probabilities `q` it sampled them from. A drafter that picks tokens deterministically returns
`probs=None`: the verifier then treats its proposal as one-hot, which keeps sampling lossless.
`observe(tokens)` tells the drafter what was finally generated (learning drafters update on it).

Drafters know nothing about the network or the target model's logits.
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


class DraftSession(Protocol):
    def propose(self, context: list[int], k: int) -> Draft: ...

    def close(self) -> None: ...


class Drafter(Protocol):
    name: str

    def start(self, prompt: list[int], temperature: float, top_p: float,
              generator: torch.Generator | None) -> DraftSession: ...

    def observe(self, tokens: list[int]) -> None: ...


class StatelessSession:
    """A DraftSession for drafters that need no per-request state."""

    def __init__(self, propose) -> None:
        self._propose = propose

    def propose(self, context: list[int], k: int) -> Draft:
        return self._propose(context, k)

    def close(self) -> None:
        pass
