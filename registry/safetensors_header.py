"""A strict reader of safetensors headers.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{dtype, shape, data_offsets}``, then the data section. Weights arrive from untrusted sources, so
this reader refuses anything the format does not allow: an oversize or truncated header, duplicate
keys, unknown dtypes, negative or non-integer shapes, offsets out of range, overlapping or gapped
tensors, and sizes that disagree with dtype × shape. It reads only the header, never tensor data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.exceptions import SafetensorsHeaderError

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The reference implementation's limit; a larger header is refused before it is read."""

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    """Absolute byte offset of the tensor's first byte in the file."""
    end: int
    """Absolute byte offset one past its last byte."""

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one file: its tensors in file order, and its metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsHeaderError(f"duplicate key {key!r} in header")
        out[key] = value
    return out


def read_header(source: str | Path | BinaryIO, file_size: int | None = None, *,
                name: str | None = None) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file (a path or a binary file object).

    `file_size` is required for file objects; `name` labels errors. Raises `SafetensorsHeaderError`
    naming the file and the problem.
    """
    if isinstance(source, (str, Path)):
        label = name or str(source)
        with open(source, "rb") as fh:
            return read_header(fh, Path(source).stat().st_size, name=label)
    label = name or "<stream>"
    assert file_size is not None, "file_size is required with a file object"

    def fail(message: str) -> SafetensorsHeaderError:
        return SafetensorsHeaderError(f"{label}: {message}")

    prefix = source.read(8)
    if len(prefix) < 8:
        raise fail(f"file is {file_size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise fail(f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > file_size:
        raise fail(f"header length {header_len} runs past the end of the {file_size}-byte file")
    raw = source.read(header_len)
    if len(raw) != header_len:
        raise fail("truncated header")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsHeaderError as exc:
        raise fail(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise fail("__metadata__ must map strings to strings")

    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: list[TensorInfo] = []
    for tname, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(f"tensor {tname!r}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise fail(f"tensor {tname!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise fail(f"tensor {tname!r}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise fail(f"tensor {tname!r}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise fail(f"tensor {tname!r}: data_offsets {offsets} out of range "
                       f"(data section is {data_size} bytes)")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise fail(f"tensor {tname!r}: {end - begin} bytes but {dtype}{shape} needs {expected}")
        tensors.append(TensorInfo(tname, dtype, tuple(shape), data_start + begin, data_start + end))

    cursor = data_start
    for info in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if info.begin < cursor:
            raise fail(f"tensor {info.name!r} overlaps the tensor before it")
        if info.begin > cursor:
            raise fail(f"gap of {info.begin - cursor} bytes before tensor {info.name!r}")
        cursor = info.end
    if cursor != file_size:
        raise fail(f"{file_size - cursor} trailing bytes after the last tensor")
    return SafetensorsHeader({t.name: t for t in tensors}, metadata, data_start, file_size)
