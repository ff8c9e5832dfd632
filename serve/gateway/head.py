"""The model's ends that never leave the gateway: tokenizer, embeddings, final norm, LM head."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from registry.manifest import layer_of


class Head:
    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open
        from transformers import AutoConfig, AutoTokenizer

        from serve.span import _weight_map

        self.config = AutoConfig.from_pretrained(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        tensors = {}
        for name, fname in _weight_map(directory).items():
            if layer_of(name) is None:
                with safe_open(str(directory / fname), framework="pt") as fh:
                    tensors[name] = fh.get_tensor(name)
        mtype = self.config.model_type
        module = importlib.import_module(f"transformers.models.{mtype}.modeling_{mtype}")
        norm_cls = next(getattr(module, n) for n in dir(module) if n.endswith("RMSNorm"))
        self.embed = tensors["model.embed_tokens.weight"].float()
        self.norm = norm_cls(self.config.hidden_size, eps=self.config.rms_norm_eps)
        self.norm.load_state_dict({"weight": tensors["model.norm.weight"]})
        self.lm_head = tensors.get("lm_head.weight", self.embed).float()
        self.num_layers = self.config.num_hidden_layers
        self.context_length = self.config.max_position_embeddings
        eos = self.config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        self.stop_ids = ids

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.embed[torch.tensor(ids, dtype=torch.long)]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, H] last-layer hidden states -> [T, vocab] float32 logits."""
        return self.norm(hidden) @ self.lm_head.T
