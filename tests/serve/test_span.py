"""Span compute: split layers reproduce the full model, with caches, batching and truncation."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from serve.span import SessionCache, SpanModel


def run_spans(spans, caches, hidden):
    for span, cache in zip(spans, caches):
        hidden = span.forward([(cache, hidden)])[0]
    return hidden


def logits_of(model, hidden):
    return model.lm_head(model.model.norm(hidden))


def test_two_spans_match_full_model_logits(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    spans = [SpanModel(tiny_model_dir, 0, 2), SpanModel(tiny_model_dir, 2, 4)]
    ids = torch.tensor([[3, 17, 42, 99, 7, 250, 11]])
    with torch.no_grad():
        expected = model(ids).logits[0]
        caches = [SessionCache(), SessionCache()]
        hidden = run_spans(spans, caches, model.model.embed_tokens(ids)[0])
        got = logits_of(model, hidden)
    assert torch.allclose(got, expected, atol=1e-4)
    # incremental: prefill 4 then one position at a time gives the same last logits
    with torch.no_grad():
        caches = [SessionCache(), SessionCache()]
        emb = model.model.embed_tokens(ids)[0]
        run_spans(spans, caches, emb[:4])
        for pos in range(4, ids.shape[1]):
            step = logits_of(model, run_spans(spans, caches, emb[pos:pos + 1]))
            assert torch.allclose(step[0], expected[pos], atol=1e-4)
    assert caches[0].length == ids.shape[1]


def test_batched_forward_equals_separate(tiny_model_dir):
    span = SpanModel(tiny_model_dir, 0, 4)
    torch.manual_seed(0)
    a_prompt, b_prompt = torch.randn(5, 64), torch.randn(2, 64)
    a_step, b_step = torch.randn(1, 64), torch.randn(3, 64)
    solo_a, solo_b = SessionCache(), SessionCache()
    span.forward([(solo_a, a_prompt)]), span.forward([(solo_b, b_prompt)])
    exp_a = span.forward([(solo_a, a_step)])[0]
    exp_b = span.forward([(solo_b, b_step)])[0]
    both_a, both_b = SessionCache(), SessionCache()
    span.forward([(both_a, a_prompt), (both_b, b_prompt)])
    got_a, got_b = span.forward([(both_a, a_step), (both_b, b_step)])
    assert torch.allclose(got_a, exp_a, atol=1e-5) and torch.allclose(got_b, exp_b, atol=1e-5)
    assert both_a.length == 6 and both_b.length == 5


def test_truncation_forgets_rejected_positions(tiny_model_dir):
    span = SpanModel(tiny_model_dir, 1, 3)
    torch.manual_seed(1)
    prompt, wrong, right = torch.randn(4, 64), torch.randn(3, 64), torch.randn(1, 64)
    clean, dirty = SessionCache(), SessionCache()
    span.forward([(clean, prompt)])
    span.forward([(dirty, prompt)])
    span.forward([(dirty, wrong)])
    dirty.truncate(4)
    assert torch.allclose(span.forward([(dirty, right)])[0], span.forward([(clean, right)])[0],
                          atol=1e-6)
