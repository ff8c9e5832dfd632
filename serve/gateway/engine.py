"""Generation at the gateway: sampling, stop conditions, and the decode loop over a `Session`.

The engine turns token ids into tokens: it embeds, sends hidden states through the pipeline,
computes logits locally, samples, and stops on an end-of-sequence token, a stop string, or the
token budget. It knows nothing about HTTP or the OpenAI wire format.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from serve.gateway.head import Head
from serve.gateway.pipeline import Pipeline, Session


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


@dataclass
class Outcome:
    """Filled in while generating; read after the iterator ends."""

    finish_reason: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    traversals: int = 0
    failovers: int = 0
    route: list[str] = field(default_factory=list)
    first_token_s: float = 0.0
    total_s: float = 0.0


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


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> Step:
    if params.greedy:
        token = int(torch.argmax(logits))
    else:
        token = int(torch.multinomial(target_probs(logits, params), 1, generator=generator))
    step = Step(token)
    if params.logprobs:
        logp = torch.log_softmax(logits.float(), dim=-1)
        step.logprob = float(logp[token])
        if params.top_logprobs:
            values, ids = logp.topk(params.top_logprobs)
            step.top = [(int(i), float(v)) for i, v in zip(ids, values)]
    return step


class Engine:
    def __init__(self, head: Head, pipeline: Pipeline) -> None:
        self.head, self.pipeline = head, pipeline
        self.tokens_generated = 0
        self.requests = 0
        self.cancelled = 0
        """Requests whose client went away mid-generation (their sessions are closed)."""

    async def generate(self, prompt: list[int], params: SamplingParams,
                       outcome: Outcome) -> AsyncIterator[Step]:
        """Yield sampled tokens one by one; `outcome` says why it stopped and what it cost."""
        self.requests += 1
        t0 = time.perf_counter()
        generator = None
        if not params.greedy:
            generator = torch.Generator().manual_seed(
                params.seed if params.seed is not None else torch.seed() % (2**63))
        session = Session(self.pipeline, self.head.embed_ids)
        outcome.prompt_tokens = len(prompt)
        try:
            hidden = await session.extend(prompt)
            for _ in range(params.max_tokens):
                step = pick(self.head.logits(hidden[-1:])[0], params, generator)
                if outcome.completion_tokens == 0:
                    outcome.first_token_s = time.perf_counter() - t0
                if step.token in self.head.stop_ids and not params.ignore_eos:
                    outcome.finish_reason = "stop"
                    return
                outcome.completion_tokens += 1
                self.tokens_generated += 1
                yield step
                if outcome.finish_reason == "stop":  # the consumer matched a stop string
                    return
                if outcome.completion_tokens == params.max_tokens:
                    break
                hidden = await session.extend([step.token])
            outcome.finish_reason = "length"
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            outcome.traversals, outcome.failovers = session.traversals, session.failovers
            outcome.route = [h.node_id for h in session.route or []]
            outcome.total_s = time.perf_counter() - t0
            session.close()


def logprob_safe(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else max(value, -9999.0)
