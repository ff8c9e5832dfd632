"""Drafters for speculative decoding: one interface (`base`), one file per drafter.

- `prompt_lookup`: n-gram match against the prompt and the text so far;
- `suffix`: a bounded suffix index over completions the swarm has served, updated online;
- `draft_model`: a small causal LM sharing the tokenizer, run at the gateway.

`make_drafter(name, ...)` builds one by name.
"""

from __future__ import annotations

from serve.drafters.base import Draft, Drafter, DraftSession

__all__ = ["Draft", "DraftSession", "Drafter", "make_drafter", "DRAFTERS"]

DRAFTERS = ("prompt_lookup", "suffix", "draft_model")


def make_drafter(name: str, **kwargs) -> Drafter:
    if name == "prompt_lookup":
        from serve.drafters.prompt_lookup import PromptLookupDrafter

        return PromptLookupDrafter(**kwargs)
    if name == "suffix":
        from serve.drafters.suffix import SuffixDrafter

        return SuffixDrafter(**kwargs)
    if name == "draft_model":
        from serve.drafters.draft_model import DraftModelDrafter

        return DraftModelDrafter(**kwargs)
    raise ValueError(f"unknown drafter {name!r}; choose one of {', '.join(DRAFTERS)}")
