"""A span of decoder layers and the KV caches of the sessions running through it.

The layers are transformers' own decoder-layer modules for the architecture, built from the
model's config with only the span's weights loaded. Attention caches are kept here as plain
per-session, per-layer tensors, and `forward` runs any mix of sessions in one batched call: each
session's past is left-padded to the longest, its new positions right-padded, and a 4-D additive
mask hides the padding. Prefill, decode, and multi-token verification are the same call.

It knows nothing about the network, sessions' owners or routing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serve.exceptions import ServeError


@dataclass
class SessionCache:
    """One session's keys and values for each layer of the span: [kv_heads, length, head_dim]."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    length: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def truncate(self, keep: int) -> None:
        if keep > self.length:
            raise ServeError(f"cache holds {self.length} positions, cannot keep {keep}")
        if keep < self.length:
            for layer in self.keys:
                self.keys[layer] = self.keys[layer][:, :keep]
                self.values[layer] = self.values[layer][:, :keep]
            self.length = keep

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(),
                                                          *self.values.values()))


class _BatchedKV:
    """Stands in for a transformers Cache during one batched forward.

    The attention module calls `update(new_k, new_v, layer_idx)` and attends over what it returns:
    the padded past followed by the new positions. The new positions are kept for `commit`.
    """

    def __init__(self, past_k: dict[int, torch.Tensor], past_v: dict[int, torch.Tensor]) -> None:
        self.past_k, self.past_v = past_k, past_v
        self.new_k: dict[int, torch.Tensor] = {}
        self.new_v: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.new_k[layer_idx], self.new_v[layer_idx] = key_states, value_states
        return (torch.cat([self.past_k[layer_idx], key_states], dim=2),
                torch.cat([self.past_v[layer_idx], value_states], dim=2))


def architecture_classes(model_type: str):
    """(DecoderLayer, RotaryEmbedding) classes of a supported architecture."""
    import importlib

    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}.get(
        model_type)
    if prefix is None:
        raise ServeError(f"unsupported architecture {model_type!r}")
    return getattr(module, f"{prefix}DecoderLayer"), getattr(module, f"{prefix}RotaryEmbedding")


def _weight_map(directory: Path) -> dict[str, str]:
    """tensor name -> shard file, from the index or, for a single-file model, its header."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    from registry.safetensors_header import read_header

    return {name: shard.name for shard in sorted(directory.glob("*.safetensors"))
            for name in read_header(shard).tensors}


class SpanModel:
    """Layers [start, end) of a model, loaded from a directory holding (at least) their shards."""

    def __init__(self, directory: Path, start: int, end: int) -> None:
        from safetensors import safe_open
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        config._attn_implementation = "sdpa"
        if not 0 <= start < end <= config.num_hidden_layers:
            raise ServeError(f"span {start}:{end} is outside the model's "
                             f"{config.num_hidden_layers} layers")
        self.config, self.start, self.end = config, start, end
        layer_cls, rotary_cls = architecture_classes(config.model_type)
        self.rotary = rotary_cls(config=config)
        self.layers = torch.nn.ModuleDict()
        weight_map = _weight_map(directory)
        for i in range(start, end):
            layer = layer_cls(config, layer_idx=i)
            prefix = f"model.layers.{i}."
            state = {}
            for name, fname in weight_map.items():
                if name.startswith(prefix):
                    with safe_open(str(directory / fname), framework="pt") as fh:
                        state[name.removeprefix(prefix)] = fh.get_tensor(name)
            layer.load_state_dict(state, strict=True)
            layer.eval()
            self.layers[str(i)] = layer
        self.hidden_size = config.hidden_size
        self.context_length = config.max_position_embeddings

    def parameters_nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.layers.parameters())

    @torch.inference_mode()
    def forward(self, items: list[tuple[SessionCache, torch.Tensor]], start: int | None = None,
                end: int | None = None) -> list[torch.Tensor]:
        """Run each (cache, hidden[T_b, H]) through layers [start, end) in one batch.

        Appends the new positions to each cache and returns each output [T_b, H].
        """
        start = self.start if start is None else start
        end = self.end if end is None else end
        assert self.start <= start < end <= self.end, (start, end)
        batch = len(items)
        new_lens = [h.shape[0] for _, h in items]
        past_lens = [c.length for c, _ in items]
        t_max, p_max = max(new_lens), max(past_lens)
        hidden = torch.zeros(batch, t_max, self.hidden_size)
        positions = torch.zeros(batch, t_max, dtype=torch.long)
        # additive mask over [padded past | new], per row
        mask = torch.full((batch, 1, t_max, p_max + t_max), torch.finfo(torch.float32).min)
        for b, ((_, h), t, p) in enumerate(zip(items, new_lens, past_lens)):
            hidden[b, :t] = h
            positions[b] = torch.arange(p, p + t_max)
            mask[b, 0, :, p_max - p:p_max] = 0.0
            causal = torch.tril(torch.ones(t_max, t_max, dtype=torch.bool))
            causal[:, t:] = False
            mask[b, 0, :, p_max:].masked_fill_(causal, 0.0)
            if t < t_max:  # padded query rows: attend to anything so they stay finite (unused)
                mask[b, 0, t:, :] = 0.0
        past_k, past_v = {}, {}
        kv_heads = self.config.num_key_value_heads
        head_dim = getattr(self.config, "head_dim", None) or (self.config.hidden_size //
                                                              self.config.num_attention_heads)
        for i in range(start, end):
            pk = torch.zeros(batch, kv_heads, p_max, head_dim)
            pv = torch.zeros(batch, kv_heads, p_max, head_dim)
            for b, (cache, _) in enumerate(items):
                if cache.length:
                    if i not in cache.keys:
                        raise ServeError(f"session cache lacks layer {i}")
                    pk[b, :, p_max - cache.length:] = cache.keys[i]
                    pv[b, :, p_max - cache.length:] = cache.values[i]
            past_k[i], past_v[i] = pk, pv
        kv = _BatchedKV(past_k, past_v)
        position_embeddings = self.rotary(hidden, positions)
        for i in range(start, end):
            hidden = self.layers[str(i)](hidden, attention_mask=mask, position_ids=positions,
                                         cache=kv, position_embeddings=position_embeddings)
        outputs = []
        now = time.monotonic()
        for b, ((cache, _), t) in enumerate(zip(items, new_lens)):
            for i in range(start, end):
                k, v = kv.new_k[i][b, :, :t], kv.new_v[i][b, :, :t]
                if cache.length:
                    cache.keys[i] = torch.cat([cache.keys[i], k], dim=1)
                    cache.values[i] = torch.cat([cache.values[i], v], dim=1)
                else:
                    cache.keys[i], cache.values[i] = k.clone(), v.clone()
            cache.length += t
            cache.last_used = now
            outputs.append(hidden[b, :t].clone())
        return outputs
