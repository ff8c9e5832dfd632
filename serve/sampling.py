"""Sampling at the gateway: the parameters a request samples with, and the distribution, token
choice and logprobs they define over one row of logits.

Shared by the engine (choosing tokens), speculative verification (the target's distribution) and
drafters (sampling a draft from their own logits). It knows nothing about sessions, drafts or the
network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    """Generate exactly max_tokens (benchmarks)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Step:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution the target samples from: temperature, then nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cumulative = sorted_p.cumsum(-1)
        drop = cumulative - sorted_p > params.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs /= probs.sum()
    return probs


def annotate(step: "Step", logits: torch.Tensor, params: SamplingParams) -> "Step":
    """Attach the logprob (and top alternatives) of `step.token` under the raw logits."""
    if params.logprobs:
        logp = torch.log_softmax(logits.float(), dim=-1)
        step.logprob = float(logp[step.token])
        if params.top_logprobs:
            values, ids = logp.topk(params.top_logprobs)
            step.top = [(int(i), float(v)) for i, v in zip(ids, values)]
    return step


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> Step:
    if params.greedy:
        token = int(torch.argmax(logits))
    else:
        token = int(torch.multinomial(target_probs(logits, params), 1, generator=generator))
    return annotate(Step(token), logits, params)
