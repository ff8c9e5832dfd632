"""Speculative verification: greedy exactness, lossless sampling, drafters, adaptive K."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest
import torch

from serve.drafters.base import DraftScope
from serve.drafters.prompt_lookup import PromptLookupDrafter
from serve.drafters.suffix import SuffixDrafter
from serve.sampling import SamplingParams, target_probs
from serve.gateway.speculative import AdaptiveK, verify

ALPHA = 0.001
"""Significance level of the distribution tests: a correct sampler fails them 0.1% of the time
(seeds are fixed, so each test's outcome is deterministic)."""
TEMPERATURE = 0.4
"""Low enough that the first two tokens concentrate on a few hundred pairs (a powerful test)."""


def chi_square_p(observed: Counter, expected: dict, n: int) -> float:
    """p-value of Pearson's chi-square test; cells expected < 5 are pooled."""
    stat, dof, pooled_o, pooled_e = 0.0, -1, 0.0, 0.0
    for key, p in expected.items():
        e = p * n
        if e < 5:
            pooled_o += observed.get(key, 0)
            pooled_e += e
            continue
        stat += (observed.get(key, 0) - e) ** 2 / e
        dof += 1
    outside = n - sum(observed.get(k, 0) for k in expected)
    pooled_o += outside
    if pooled_e >= 5:
        stat += (pooled_o - pooled_e) ** 2 / pooled_e
        dof += 1
    elif pooled_o > 5 * max(pooled_e, 1e-9) + 5:
        return 0.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def test_greedy_verdicts():
    logits = torch.full((4, 10), -5.0)
    for pos, best in enumerate([3, 7, 1, 9]):
        logits[pos, best] = 5.0
    greedy = SamplingParams(temperature=0.0)
    assert (v := verify(logits, [3, 7, 1], None, greedy, None)).accepted == 3 and v.next_token == 9
    assert (v := verify(logits, [3, 2, 1], None, greedy, None)).accepted == 1 and v.next_token == 7
    assert (v := verify(logits, [4, 7, 1], None, greedy, None)).accepted == 0 and v.next_token == 3


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    """The tiny target and a different tiny model as the drafter (same tokenizer)."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import make_tiny_llama

    draft_dir = tmp_path_factory.mktemp("draft")
    make_tiny_llama(draft_dir, seed=5, layers=2)
    target = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir).eval()
    return target, draft


def sample_first_tokens(target, draft, *, speculative: bool, plain_accept: bool = False,
                        one_hot: bool = False, n: int, seed: int) -> Counter:
    """Distribution of the first two generated tokens at TEMPERATURE, by Monte Carlo."""
    params = SamplingParams(temperature=TEMPERATURE, top_p=1.0)
    prompt = (5, 17, 42)

    @lru_cache(maxsize=None)
    def p_logits(ctx: tuple) -> torch.Tensor:
        with torch.no_grad():
            return target(torch.tensor([ctx])).logits[0, -1]

    @lru_cache(maxsize=None)
    def q_row(ctx: tuple) -> torch.Tensor:
        with torch.no_grad():
            return target_probs(draft(torch.tensor([ctx])).logits[0, -1], params)

    g = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    for _ in range(n):
        if not speculative:
            t0 = int(torch.multinomial(target_probs(p_logits(prompt), params), 1, generator=g))
            t1 = int(torch.multinomial(target_probs(p_logits(prompt + (t0,)), params), 1,
                                       generator=g))
            counts[(t0, t1)] += 1
            continue
        # draft 2 tokens from q (or deterministically: q's argmax, treated as one-hot)
        d0_row = q_row(prompt)
        d0 = int(d0_row.argmax()) if one_hot else int(torch.multinomial(d0_row, 1, generator=g))
        d1_row = q_row(prompt + (d0,))
        d1 = int(d1_row.argmax()) if one_hot else int(torch.multinomial(d1_row, 1, generator=g))
        logits = torch.stack([p_logits(prompt), p_logits(prompt + (d0,)),
                              p_logits(prompt + (d0, d1))])
        if plain_accept:
            counts[(d0, d1)] += 1
            continue
        q = None if one_hot else torch.stack([d0_row, d1_row])
        verdict = verify(logits, [d0, d1], q, params, g)
        out = [d0, d1][:verdict.accepted] + [verdict.next_token]
        if len(out) < 2:  # rejected at the first token: the second comes from the target
            out.append(int(torch.multinomial(target_probs(p_logits(prompt + (out[0],)), params),
                                             1, generator=g)))
        counts[tuple(out[:2])] += 1
    return counts


def exact_pairs(target, prompt: list[int] = (5, 17, 42)) -> dict:
    """The exact distribution of the first two tokens after `prompt` at TEMPERATURE."""
    params = SamplingParams(temperature=TEMPERATURE)
    prompt = list(prompt)
    with torch.no_grad():
        p0 = target_probs(target(torch.tensor([prompt])).logits[0, -1], params)
        out = {}
        for t0 in torch.nonzero(p0 > 1e-4).flatten().tolist():
            p1 = target_probs(target(torch.tensor([prompt + [t0]])).logits[0, -1], params)
            for t1 in torch.nonzero(p1 > 1e-5).flatten().tolist():
                out[(t0, t1)] = float(p0[t0] * p1[t1])
    return out


def test_sampling_is_lossless(two_models):
    target, draft = two_models
    expected = exact_pairs(target)
    n = 6000
    plain = sample_first_tokens(target, draft, speculative=False, n=n, seed=1)
    spec = sample_first_tokens(target, draft, speculative=True, n=n, seed=2)
    one_hot = sample_first_tokens(target, draft, speculative=True, one_hot=True, n=n, seed=3)
    assert chi_square_p(plain, expected, n) > ALPHA  # the test itself accepts the target
    assert chi_square_p(spec, expected, n) > ALPHA
    assert chi_square_p(one_hot, expected, n) > ALPHA


def test_plain_acceptance_fails_the_same_test(two_models):
    target, draft = two_models
    n = 6000
    broken = sample_first_tokens(target, draft, speculative=True, plain_accept=True, n=n, seed=4)
    assert chi_square_p(broken, exact_pairs(target), n) < ALPHA


def test_prompt_lookup_continues_repeated_text():
    d = PromptLookupDrafter()
    ctx = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3]
    assert d.propose(ctx, 3).tokens == [4, 5, 9]
    assert d.propose([7, 8, 6], 3).tokens == []


def test_suffix_index_learns_and_stays_bounded():
    d = SuffixDrafter(tenant_tokens=50)
    me = DraftScope(tenant="a", learn=True)
    assert d.propose([1, 2, 3], 4, me).tokens == []
    d.observe([10, 1, 2, 3, 4, 5, 6], me)
    d.observe([11, 1, 2, 3, 4, 5, 7], me)
    d.observe([12, 1, 2, 3, 4, 5, 7], me)
    assert d.propose([99, 2, 3], 4, me).tokens == [4, 5, 7]  # majority continuation
    for i in range(20):
        d.observe(list(range(100 + 10 * i, 110 + 10 * i)), me)
    assert d.tokens_held <= 50
    assert d.propose([99, 2, 3], 4, me).tokens == []  # the old sequences were evicted


def test_adaptive_k_grows_shrinks_and_switches_off():
    k = AdaptiveK(k=4, k_max=8)
    k.update(4, 4)
    assert k.next_k() == 5
    k.update(5, 0)
    assert k.next_k() == 2
    for _ in range(10):
        k.update(2, 0)
    ks = [k.next_k() for _ in range(16)]
    assert ks.count(0) >= 14 and max(ks) == 1  # off, with rare single-token probes
