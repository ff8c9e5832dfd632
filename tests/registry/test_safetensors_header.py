"""The strict header reader refuses every malformed variant, each for its own reason."""

from __future__ import annotations

import json
import struct

import pytest

from registry.exceptions import SafetensorsHeaderError
from registry.safetensors_header import MAX_HEADER_BYTES, read_header


def write(path, header_text: str, data: bytes = b"", *, declared: int | None = None):
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    return path


def entry(begin: int, end: int, shape=None, dtype="F32") -> dict:
    return {"dtype": dtype, "shape": shape if shape is not None else [(end - begin) // 4],
            "data_offsets": [begin, end]}


def test_valid_file_parses(tmp_path):
    p = write(tmp_path / "ok.safetensors",
              json.dumps({"a": entry(0, 8), "b": entry(8, 16), "__metadata__": {"k": "v"}}),
              bytes(16))
    h = read_header(p)
    assert list(h.tensors) == ["a", "b"] and h.metadata == {"k": "v"}
    assert h.tensors["b"].begin == h.data_start + 8


@pytest.mark.parametrize("case, header, data, message", [
    ("duplicate key", '{"a": %s, "a": %s}' % (json.dumps(entry(0, 8)), json.dumps(entry(8, 16))),
     bytes(16), "duplicate key"),
    ("overlap", json.dumps({"a": entry(0, 8), "b": entry(4, 12)}), bytes(12), "overlaps"),
    ("out of range", json.dumps({"a": entry(0, 64)}), bytes(16), "out of range"),
    ("gap", json.dumps({"a": entry(0, 4), "b": entry(8, 12)}), bytes(12), "gap"),
    ("trailing bytes", json.dumps({"a": entry(0, 4)}), bytes(8), "trailing"),
    ("size mismatch", json.dumps({"a": entry(0, 8, shape=[3])}), bytes(8), "needs 12"),
    ("unknown dtype", json.dumps({"a": entry(0, 8, dtype="F33")}), bytes(8), "unknown dtype"),
    ("negative dim", json.dumps({"a": entry(0, 8, shape=[-2])}), bytes(8), "non-negative"),
    ("not json", "{not json", b"", "not valid UTF-8 JSON"),
    ("extra field", json.dumps({"a": {**entry(0, 4), "x": 1}}), bytes(4), "exactly"),
])
def test_malformed_header_refused(tmp_path, case, header, data, message):
    p = write(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsHeaderError, match=message):
        read_header(p)


def test_oversize_header_refused_before_reading(tmp_path):
    p = write(tmp_path / "big.safetensors", "{}", declared=MAX_HEADER_BYTES + 1)
    with pytest.raises(SafetensorsHeaderError, match="exceeds"):
        read_header(p)


def test_header_longer_than_file_refused(tmp_path):
    p = write(tmp_path / "short.safetensors", "{}", declared=1000)
    with pytest.raises(SafetensorsHeaderError, match="past the end"):
        read_header(p)


def test_truncated_data_refused(tmp_path, tiny_model_dir):
    shard = next(tiny_model_dir.glob("*.safetensors"))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SafetensorsHeaderError, match=r"cut\.safetensors"):
        read_header(cut)
