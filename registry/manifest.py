"""Model-version manifests: what a version is, byte for byte, and how to build one by streaming.

A manifest lists every file of a version (size, SHA-256), every tensor (file, dtype, shape, byte
range, chunk count, Merkle root of its chunks), the tokenizer and chat-template hashes, the
architecture, and the lineage (parent version, dataset digests, training config digest, eval
summary; empty for an imported genesis model). The version id is ``sha256:`` + the hex digest of the
canonical JSON of the manifest, so a version names its own content.

Building a manifest streams every file in fixed-size blocks: memory is bounded by the chunk size and
the per-tensor leaf lists, never by model size. Each weight shard ``X.safetensors`` gets a sidecar
``X.merkle`` (itself a safetensors file of uint8 rows) holding every level of every tensor's tree, so
a node can later produce the Merkle path of any chunk without rehashing the tensor.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry import merkle
from registry.exceptions import VerificationError
from registry.safetensors_header import TensorInfo, read_header
from registry.signing import canonical_json, sha256_hex

SCHEMA = "shoal.manifest/1"
READ_BLOCK = 1 << 20
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
MERKLE_SUFFIX = ".merkle"


def layer_of(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None for embeddings, final norm and head."""
    match = LAYER_RE.match(tensor_name)
    return int(match.group(1)) if match else None


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(ge=0)
    sha256: str


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    dtype: str
    shape: list[int]
    offset: int = Field(ge=0, description="absolute byte offset of the tensor in its file")
    nbytes: int = Field(ge=0)
    chunks: int = Field(ge=1)
    root: str = Field(description="hex Merkle root over the tensor's chunks")


class Lineage(BaseModel):
    """Where a version came from. All empty for an imported genesis model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    parent: str | None = None
    datasets: list[str] = []
    training_config: str | None = None
    eval: dict[str, Any] = {}
    source: dict[str, str] = {}
    """For imports: the source file name and its SHA-256."""
    training: dict[str, Any] = {}
    """For trained versions: kind, steps, tokens, loss curve summary, run id."""
    draft_for: str | None = None
    """For draft models: the target version whose tokenizer and outputs they were trained on."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_: str = Field(SCHEMA, alias="schema")
    name: str
    architecture: str
    model_type: str
    num_layers: int = Field(ge=1)
    dtype: str
    chunk_size: int = Field(gt=0)
    files: dict[str, FileEntry]
    tensors: dict[str, TensorEntry]
    tokenizer_sha256: str
    chat_template_sha256: str | None
    lineage: Lineage = Lineage()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    @property
    def version_id(self) -> str:
        return version_id_of(self.to_json())

    def layer_files(self, start: int, end: int) -> list[str]:
        """Weight shards (and their Merkle sidecars) that hold layers [start, end)."""
        shards = sorted({t.file for n, t in self.tensors.items()
                         if (layer := layer_of(n)) is not None and start <= layer < end})
        return [f for s in shards for f in (s, s.removesuffix(".safetensors") + MERKLE_SUFFIX)]

    def shared_files(self) -> list[str]:
        """Weight shards (and sidecars) of tensors outside the decoder layers."""
        shards = sorted({t.file for n, t in self.tensors.items() if layer_of(n) is None})
        return [f for s in shards for f in (s, s.removesuffix(".safetensors") + MERKLE_SUFFIX)]

    def small_files(self) -> list[str]:
        """Config, tokenizer and other non-weight files."""
        return sorted(f for f in self.files
                      if not f.endswith(".safetensors") and not f.endswith(MERKLE_SUFFIX))

    def files_for(self, role: str, span: tuple[int, int] | None = None) -> list[str]:
        """The files a process of `role` fetches (`registry.layout.Role`): every file (`full`),
        the gateway's non-layer files (`head`), or a node's layers `span` = (start, end)."""
        if role == "full":
            return sorted(self.files)
        if role == "head":
            return self.small_files() + self.shared_files()
        if role == "span":
            if span is None or not 0 <= span[0] < span[1] <= self.num_layers:
                raise ValueError(f"span {span} is not a layer range of the model's "
                                 f"{self.num_layers} layers")
            return self.small_files() + self.layer_files(*span)
        raise ValueError(f"unknown checkout role {role!r}: full, head or span")


def version_id_of(manifest_json: dict[str, Any]) -> str:
    return "sha256:" + sha256_hex(canonical_json(manifest_json))


def short_id(version_id: str) -> str:
    return version_id.removeprefix("sha256:")[:12]


def hash_file(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            h.update(block)
            size += len(block)
    return FileEntry(size=size, sha256=h.hexdigest())


def tensor_levels(fh: Any, info: TensorInfo, chunk_size: int) -> list[list[bytes]]:
    """Stream one tensor's bytes from an open file and return all levels of its tree."""
    fh.seek(info.begin)
    leaves = []
    for i in range(merkle.num_chunks(info.nbytes, chunk_size)):
        want = min(chunk_size, info.nbytes - i * chunk_size)
        chunk = fh.read(want)
        if len(chunk) != want:
            raise VerificationError("tensor-bytes", f"{info.name}: file ends inside chunk {i}")
        leaves.append(merkle.leaf_hash(i, chunk))
    return merkle.build_levels(leaves)


def write_merkle_sidecar(path: Path, trees: dict[str, list[list[bytes]]]) -> None:
    """Store every level of every tree, flattened, as uint8 rows of 32 bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {name: np.frombuffer(b"".join(h for level in levels for h in level),
                                  dtype=np.uint8).reshape(-1, 32)
              for name, levels in trees.items()}
    save_file(arrays, str(path))


def split_levels(flat: bytes, n_leaves: int) -> list[list[bytes]]:
    """Inverse of the sidecar's flattening, given the leaf count from the manifest."""
    levels, offset, width = [], 0, n_leaves
    while True:
        levels.append([flat[(offset + i) * 32:(offset + i + 1) * 32] for i in range(width)])
        offset += width
        if width == 1:
            break
        width = (width + 1) // 2
    if offset * 32 != len(flat):
        raise VerificationError("merkle-sidecar", f"sidecar holds {len(flat) // 32} hashes, "
                                f"a {n_leaves}-leaf tree has {offset}")
    return levels


def build_manifest(directory: Path, *, name: str, architecture: str, model_type: str,
                   num_layers: int, dtype: str, lineage: Lineage,
                   chunk_size: int = merkle.DEFAULT_CHUNK_SIZE) -> Manifest:
    """Hash every file of an HF-format model directory, writing Merkle sidecars as it goes."""
    tensors: dict[str, TensorEntry] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        header = read_header(shard)
        trees = {}
        with open(shard, "rb") as fh:
            for info in header.tensors.values():
                levels = tensor_levels(fh, info, chunk_size)
                trees[info.name] = levels
                tensors[info.name] = TensorEntry(
                    file=shard.name, dtype=info.dtype, shape=list(info.shape), offset=info.begin,
                    nbytes=info.nbytes, chunks=len(levels[0]), root=levels[-1][0].hex())
        write_merkle_sidecar(shard.with_suffix(MERKLE_SUFFIX), trees)

    files = {p.name: hash_file(p) for p in sorted(directory.iterdir()) if p.is_file()}
    template = files.get("chat_template.jinja")
    return Manifest(
        schema=SCHEMA, name=name, architecture=architecture, model_type=model_type,
        num_layers=num_layers, dtype=dtype, chunk_size=chunk_size, files=files, tensors=tensors,
        tokenizer_sha256=files["tokenizer.json"].sha256,
        chat_template_sha256=template.sha256 if template else None, lineage=lineage)
