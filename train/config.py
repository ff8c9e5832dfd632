"""One typed configuration per training run; its digest goes into the candidate's lineage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from train.exceptions import TrainConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, le=512)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["sft", "dpo", "distill"]
    """SFT on `messages`, DPO on `prompt`/`chosen`/`rejected`, or draft distillation."""
    model: str
    """HF directory of the starting weights (the parent version's checkout)."""
    datasets: list[str] = Field(min_length=1)
    """Dataset directories written by the curate flow (each with train/, eval/ and card.json)."""
    output: str
    """Run directory: checkpoints, log.jsonl, summary.json and the exported model/."""
    zero: str = "zero2"
    """DeepSpeed config: a name in train/configs (zero1, zero2, zero3, zero2_offload,
    zero3_offload) or a path to a JSON file."""
    lr: float = Field(5e-5, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (over all epochs)."""
    micro_batch: int = Field(4, ge=1)
    """Sequences per process per micro-step."""
    grad_accum: int = Field(1, ge=1)
    max_len: int = Field(256, ge=8)
    """Tokens per sequence; longer ones are cut from the left of the prompt."""
    seed: int = 0
    lora: LoraSettings | None = None
    """Train low-rank adapters instead of all weights; they are merged into the export."""
    freeze_layers_below: int = Field(0, ge=0)
    """Train only decoder layers ≥ this index (plus the final norm): cheaper on CPU."""
    dpo_beta: float = Field(0.1, gt=0)
    draft_layers: int | None = Field(None, ge=1)
    """Distillation: start the draft from the target's first N layers (None: train `model`)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    stop_after_steps: int | None = Field(None, ge=1)
    """Leave after this many steps of this launch, checkpointed (a machine donated for a time
    slot); launching the same run again resumes where it stopped."""
    eval_batches: int = Field(8, ge=1)
    """Micro-batches of the eval split scored before and after training."""

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.kind != "distill" and self.draft_layers is not None:
            raise TrainConfigError(
                f"draft_layers={self.draft_layers} only applies to kind='distill'")
        self.deepspeed_json()  # fail early on a missing or malformed config file
        return self

    def deepspeed_json(self) -> dict:
        path = Path(self.zero) if self.zero.endswith(".json") else CONFIG_DIR / f"{self.zero}.json"
        if not path.is_file():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise TrainConfigError(
                f"zero={self.zero!r}: no such DeepSpeed config (shipped: {names})")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TrainConfigError(f"zero={self.zero!r}: {path} is not valid JSON ({e})") from e

    def digest(self) -> str:
        """SHA-256 over the settings that shape the weights (not where files go)."""
        body = self.model_dump(exclude={"output", "model", "datasets", "stop_after_steps",
                                        "save_every"})
        body["deepspeed"] = self.deepspeed_json()
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
