"""Single-process generation from a verified checkout of a registry version.

This is the reference the swarm must match token for token. It knows nothing about the network,
routing or the registry's trust rules: it is handed a directory that the registry client has
already verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LocalModel:
    model: Any
    tokenizer: Any

    @classmethod
    def load(cls, directory: Path) -> "LocalModel":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer)

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def generate_ids(self, input_ids: list[int], max_new_tokens: int = 64) -> list[int]:
        """Greedy continuation of `input_ids`, stopping at the end-of-sequence token."""
        import torch

        with torch.inference_mode():
            out = self.model.generate(torch.tensor([input_ids]), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        return out[0, len(input_ids):].tolist()

    def chat(self, messages: list[dict[str, Any]], max_new_tokens: int = 64) -> str:
        ids = self.generate_ids(self.chat_ids(messages), max_new_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
