"""Building the trainable model for a run: load, cut to a draft, freeze, wrap in LoRA; and the
export back to plain HF weights (adapters merged)."""

from __future__ import annotations

from pathlib import Path

import torch

from train.config import TrainConfig
from train.exceptions import TrainConfigError


def truncate(model, layers: int):
    """Keep the first `layers` decoder layers (embeddings, final norm and head unchanged)."""
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise TrainConfigError(f"draft_layers={layers}: the model has {total} layers")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    return model


def build(config: TrainConfig, *, trainable: bool = True):
    """The model a run trains: the parent's weights, cut / frozen / wrapped as configured."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    if config.draft_layers:
        truncate(model, config.draft_layers)
    model.config.use_cache = False
    if config.freeze_layers_below:
        if config.freeze_layers_below >= model.config.num_hidden_layers:
            raise TrainConfigError(f"freeze_layers_below={config.freeze_layers_below} leaves "
                                   f"nothing of {model.config.num_hidden_layers} layers to train")
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.model.layers[config.freeze_layers_below:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in model.model.norm.parameters():
            p.requires_grad_(True)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules, task_type="CAUSAL_LM"))
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def export(config: TrainConfig, state: dict[str, torch.Tensor], tokenizer, out: Path) -> Path:
    """Write full HF safetensors from a trained state dict; LoRA adapters are merged first and
    also kept on their own under `out/adapter`."""
    model = build(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied heads are not in the state
    if missing or unexpected:
        raise TrainConfigError(f"export: state does not fit the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    if config.lora:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    return out / "model"
