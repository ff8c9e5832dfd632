"""A small draft model at the gateway: any causal LM that shares the target's tokenizer.

Each request keeps the draft model's own KV cache. Before drafting, the cache is cut back to the
longest prefix it shares with the context (rejected drafts are forgotten), the missing tokens are
fed, and `k` tokens are drafted one at a time: greedy when the target samples greedily, otherwise
sampled from the draft's temperature / top-p distribution, whose rows are returned as `q` so the
verifier's rejection rule keeps the target's distribution exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from serve.drafters.base import NO_SCOPE, Draft, DraftScope
from serve.sampling import SamplingParams, target_probs


class DraftModelDrafter:
    name = "draft_model"

    def __init__(self, directory: Path | None = None, model=None, threads: int | None = None
                 ) -> None:
        from transformers import AutoModelForCausalLM

        self.model = model if model is not None else AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32)
        self.model.eval()

    def start(self, prompt, temperature: float, top_p: float,
              generator: torch.Generator | None, scope: DraftScope = NO_SCOPE
              ) -> "DraftModelSession":
        return DraftModelSession(self.model, temperature, top_p, generator)

    def observe(self, tokens: list[int], scope: DraftScope = NO_SCOPE) -> None:
        pass  # learns offline only, from traces granted `distill` (train/)


class DraftModelSession:
    def __init__(self, model, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> None:
        from transformers import DynamicCache

        self.model, self.temperature, self.top_p = model, temperature, top_p
        self.generator = generator
        self.cache = DynamicCache(config=model.config)
        self.ids: list[int] = []
        self.last_logits: torch.Tensor | None = None

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        out = self.model(torch.tensor([tokens]), past_key_values=self.cache, use_cache=True)
        self.ids.extend(tokens)
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def propose(self, context: list[int], k: int) -> Draft:
        common = 0
        for a, b in zip(self.ids, context):
            if a != b:
                break
            common += 1
        if common == len(context):  # need the logits after the last token: recompute it
            common -= 1
        if common < len(self.ids):
            self.cache.crop(-(len(self.ids) - common))
            self.ids = self.ids[:common]
        logits = self._feed(context[common:])
        tokens, rows = [], []
        params = SamplingParams(temperature=self.temperature, top_p=self.top_p)
        for i in range(k):
            if params.greedy:
                token = int(torch.argmax(logits))
            else:
                q = target_probs(logits, params)
                token = int(torch.multinomial(q, 1, generator=self.generator))
                rows.append(q)
            tokens.append(token)
            if i + 1 < k:
                logits = self._feed([token])
        return Draft(tokens, torch.stack(rows) if rows else None)

    def close(self) -> None:
        self.cache = None
