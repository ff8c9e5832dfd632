"""Drafters for speculative decoding: one interface (`base`), one file per drafter.

- `prompt_lookup`: n-gram match against the prompt and the text so far;
- `suffix`: a bounded suffix index over completions the swarm has served, updated online;
- `draft_model`: a small causal LM sharing the tokenizer, run at the gateway;
- `composed`: `prompt_lookup+suffix`, `prompt_lookup+draft_model`: per round, prompt lookup where
  the text is copied, the other drafter elsewhere.

`make_drafter(name, ...)` builds one by name; `add_compositions(table)` adds the compositions of
the drafters a table holds.
"""

from __future__ import annotations

from serve.drafters.base import Draft, Drafter, DraftSession

__all__ = ["Draft", "DraftSession", "Drafter", "make_drafter", "add_compositions", "DRAFTERS",
           "COMPOSED"]

DRAFTERS = ("prompt_lookup", "suffix", "draft_model")
COMPOSED = ("prompt_lookup+suffix", "prompt_lookup+draft_model")


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


def add_compositions(drafters: dict) -> dict:
    """Add to `drafters` (a gateway's live table) each composition whose members it holds;
    returns the table."""
    from serve.drafters.composed import ComposedDrafter

    for name in COMPOSED:
        members = name.split("+")
        if name not in drafters and all(m in drafters for m in members):
            drafters[name] = ComposedDrafter(members, drafters)
    return drafters
