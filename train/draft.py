"""How well a draft model predicts its target: the greedy acceptance rate.

For held-out prompts the target writes a greedy continuation; the draft is teacher-forced on the
same tokens, and the rate is the share of continuation positions where the draft's top token equals
the target's. Under greedy verification this is the per-token acceptance probability, which sets how
many tokens one traversal of the swarm can confirm.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def acceptance_rate(draft, target, tokenizer, prompts: list[list[dict]], *,
                    new_tokens: int = 24) -> dict:
    from train.data import flatten

    agree = total = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for prompt in prompts:
        text = tokenizer.apply_chat_template([flatten(m) for m in prompt], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        full = target.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        n = full.shape[1] - ids.shape[1]
        if n == 0:
            continue
        guess = draft(input_ids=full).logits[0, ids.shape[1] - 1:-1].argmax(-1)
        agree += int((guess == full[0, ids.shape[1]:]).sum())
        total += n
    return {"rate": agree / total if total else None, "tokens": total, "prompts": len(prompts)}
