"""Sampling at the gateway: the parameters a request samples with, and the distribution, token
choice and logprobs they define over one row of logits.

Shared by the engine (choosing tokens), speculative verification (the target's distribution) and
drafters (sampling a draft from their own logits). It knows nothing about sessions, drafts or the
network.

Requests that shape the distribution with what was generated so far (`logit_bias`, presence and
frequency penalties, a `Constraint` such as a JSON schema) go through `shaped` before the choice;
the engine decodes those token by token, since speculative verification compares against the
unshaped distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


GREEDY_BELOW = 1e-4
"""Temperatures below this sample greedily: the distribution is the argmax to float precision,
and logits divided by a temperature near 1e-38 overflow to infinities."""


class Constraint(Protocol):
    """Which tokens may come next (constrained decoding, e.g. a JSON schema)."""

    def allowed(self, completion: list[int]) -> torch.Tensor:
        """Boolean mask over the vocabulary: the tokens allowed after `completion` (the tokens
        generated so far)."""


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
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits, as OpenAI's `logit_bias`."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token already generated."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated."""
    constraint: Constraint | None = field(default=None, compare=False)
    """Tokens allowed next (None: any)."""
    prompt_logprobs: bool = False
    """Also score the prompt: the logprob of each prompt token after the ones before it (a
    completion's `echo` with `logprobs`, what log-likelihood evaluations ask for)."""

    @property
    def greedy(self) -> bool:
        """Temperatures this close to 0 are the argmax (dividing logits by them overflows)."""
        return self.temperature < GREEDY_BELOW

    @property
    def shapes(self) -> bool:
        """Whether the distribution depends on more than the logits (see `shaped`)."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.constraint is not None)


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


def score(logits: torch.Tensor, tokens: list[int], top: int) -> list[Step]:
    """`tokens[i]` as a `Step` with its logprob (and `top` alternatives) under row i of the raw
    `logits` (rows, vocabulary): how a prompt is scored, one row per position at once."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1).tolist()
    steps = [Step(t, v) for t, v in zip(tokens, chosen)]
    if top:
        values, ids = logp.topk(top, dim=-1)
        for step, vs, is_ in zip(steps, values.tolist(), ids.tolist()):
            step.top = list(zip(is_, vs))
    return steps


def shaped(logits: torch.Tensor, params: SamplingParams, tokens: list[int],
           completion: int) -> torch.Tensor:
    """`logits` with the bias, the penalties (over the last `completion` of `tokens`, the ones
    generated) and the constraint applied, as OpenAI defines them."""
    logits = logits.float().clone()
    for token, bias in params.logit_bias:
        logits[token] += bias
    generated = tokens[len(tokens) - completion:] if completion else []
    if generated and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(generated).unique(return_counts=True)
        logits[ids] -= params.frequency_penalty * counts + params.presence_penalty
    if params.constraint is not None:
        logits[~params.constraint.allowed(generated)] = float("-inf")
    return logits


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
         tokens: list[int] | None = None, completion: int = 0) -> Step:
    """Choose the next token after `tokens` (the last `completion` of them generated)."""
    raw = logits
    if params.shapes:
        logits = shaped(logits, params, tokens or [], completion)
    if params.greedy:
        token = int(torch.argmax(logits))
    else:
        token = int(torch.multinomial(target_probs(logits, params), 1, generator=generator))
    return annotate(Step(token), raw, params)
