"""How well a draft model predicts its target: the greedy acceptance rate.

For held-out prompts the target writes a greedy continuation; the draft is teacher-forced on the
same tokens, and the rate is the share of continuation positions where the draft's top token equals
the target's. Under greedy verification this is the per-token acceptance probability, which sets how
many tokens one traversal of the swarm can confirm.

`compare` is the evaluation of a distillation run: the trained draft and the untrained cut it
started from, on the same held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from train.records import Acceptance

DEFAULT_PROMPTS = 32
"""Held-out prompts `compare` uses when no limit is given."""


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


def compare(draft_dir: Path, target_dir: Path, heldout_rows: list[dict], *,
            layers: int | None, limit: int | None = None) -> Acceptance:
    """The acceptance rate against the target of the trained draft (`after`) and of the target's
    first `layers` layers untrained (`before`; the whole target when `layers` is None), on the
    prompts of the first `limit` held-out `messages` rows (`DEFAULT_PROMPTS` without a limit)."""
    from train.evaluate import load_model
    from train.model import truncate

    prompts = [r["messages"][:-1] for r in heldout_rows][: limit or DEFAULT_PROMPTS]
    target, tokenizer = load_model(Path(target_dir))
    trained, _ = load_model(Path(draft_dir))
    before, _ = load_model(Path(target_dir))
    if layers:
        truncate(before, layers)
    return Acceptance(before=acceptance_rate(before, target, tokenizer, prompts),
                      after=acceptance_rate(trained, target, tokenizer, prompts))
