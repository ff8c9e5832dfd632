"""Verifying drafted tokens against the target's distributions.

Given the target's logits at K+1 positions (after the last accepted token, and after each of the K
drafted tokens), accept the longest valid prefix of the draft and add one token from the target:

- greedy: a drafted token is valid when it equals the target's argmax;
- sampling: accept drafted x with probability min(1, p(x)/q(x)); at the first rejection sample from
  norm(max(0, p - q)); if all K pass, sample a bonus token from p at the last position (Leviathan et
  al. 2023; Chen et al. 2023). The result is distributed exactly as sampling from p alone. A drafter
  without probabilities is one-hot: q(x) = 1.

`AdaptiveK` picks how many tokens to draft next from the recent acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serve.sampling import SamplingParams, target_probs


@dataclass
class Acceptance:
    accepted: int
    """How many drafted tokens were accepted."""
    next_token: int
    """The target's token after them (a correction or a bonus)."""


def verify(logits: torch.Tensor, draft: list[int], q: torch.Tensor | None,
           params: SamplingParams, generator: torch.Generator | None) -> Acceptance:
    """`logits`: [K+1, vocab]; `draft`: K tokens; `q`: [K, vocab] or None (one-hot)."""
    k = len(draft)
    assert logits.shape[0] == k + 1, (logits.shape, k)
    if params.greedy:
        choice = logits.argmax(-1).tolist()
        for i, token in enumerate(draft):
            if token != choice[i]:
                return Acceptance(i, choice[i])
        return Acceptance(k, choice[k])
    for i, token in enumerate(draft):
        p = target_probs(logits[i], params)
        q_row = q[i] if q is not None else None
        q_x = float(q_row[token]) if q_row is not None else 1.0
        u = float(torch.rand((), generator=generator))
        if q_x > 0 and u < min(1.0, float(p[token]) / q_x):
            continue
        if q_row is None:
            residual = p.clone()
            residual[token] = 0.0
        else:
            residual = torch.clamp(p - q_row, min=0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else p
        return Acceptance(i, int(torch.multinomial(residual, 1, generator=generator)))
    bonus = target_probs(logits[k], params)
    return Acceptance(k, int(torch.multinomial(bonus, 1, generator=generator)))


class AdaptiveK:
    """Draft length that follows acceptance: grow after a fully accepted draft, shrink after
    misses, and switch drafting off (K = 0) while it does not pay, probing again now and then."""

    def __init__(self, k: int = 4, k_max: int = 8, off_below: float = 0.15,
                 probe_every: int = 8) -> None:
        self.k, self.k_max, self.off_below, self.probe_every = k, k_max, off_below, probe_every
        self.rate = 0.5
        self._off_steps = 0

    def next_k(self) -> int:
        if self.rate < self.off_below:
            self._off_steps += 1
            if self._off_steps % self.probe_every:
                return 0
            return 1
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.rate = 0.7 * self.rate + 0.3 * (accepted / drafted)
        if accepted == drafted:
            self.k = min(self.k_max, self.k + 1)
        elif accepted == 0:
            self.k = max(1, self.k // 2)
        else:
            self.k = max(1, accepted + 1)
