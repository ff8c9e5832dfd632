"""The registry's static tree on a local directory or any fsspec URL.

Layout (everything a client needs is a plain file, so any file server or object store can host it
and the transport need not be trusted; every byte is checked against signed metadata):

    root/<n>.root.json                 trust policy versions (signed envelopes)
    versions/<hex>/manifest.json       a version's manifest envelope (signed by `release` keys)
    blobs/sha256/<hex>                 content-addressed files (weights, sidecars, config, tokenizer)
    channels/<name>/<seq>.json         channel records, append-only history (signed by `promote`)
    channels/<name>/head.json          copy of the newest record
    snapshot.json                      signed map channel -> sequence (stops mix-and-match)

Writes go to a temporary name and are renamed into place, and a version's manifest is written only
after all its blobs, so no half-published version is ever visible.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from registry import layout
from registry.exceptions import NotFoundError, VerificationError

BLOCK = 1 << 20


class Store:
    """Byte-level access to a registry tree. Knows paths, not trust."""

    def __init__(self, url: str | Path) -> None:
        from fsspec.core import url_to_fs

        self.url = str(url)
        self.fs, self.base = url_to_fs(self.url)

    def _p(self, rel: str) -> str:
        assert ".." not in rel.split("/"), rel
        return f"{self.base.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._p(rel))

    def read(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._p(rel))
        except FileNotFoundError:
            raise NotFoundError(f"{self.url}/{rel}: not found") from None

    def open(self, rel: str) -> IO[bytes]:
        try:
            return self.fs.open(self._p(rel), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.url}/{rel}: not found") from None

    def list(self, rel: str) -> list[str]:
        """Names directly under `rel` (empty when it does not exist)."""
        try:
            entries = self.fs.ls(self._p(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def _tmp(self, rel: str) -> str:
        return self._p(f"tmp/{uuid.uuid4().hex}-{rel.rsplit('/', 1)[-1]}")

    def write(self, rel: str, data: bytes) -> None:
        """Atomically create or replace `rel`."""
        tmp = self._tmp(rel)
        self.fs.makedirs(self._p("tmp"), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self._move_into_place(tmp, rel)

    def write_new(self, rel: str, data: bytes) -> None:
        """Write `rel`, refusing to replace an existing file (append-only records)."""
        if self.exists(rel):
            raise VerificationError("append-only", f"{rel} already exists")
        self.write(rel, data)

    def delete(self, rel: str) -> None:
        """Remove `rel` if it exists (only pending proposals are ever deleted)."""
        if self.exists(rel):
            self.fs.rm(self._p(rel))

    def put_file(self, local: Path, rel: str) -> None:
        tmp = self._tmp(rel)
        self.fs.makedirs(self._p("tmp"), exist_ok=True)
        self.fs.put_file(str(local), tmp)
        self._move_into_place(tmp, rel)

    def _move_into_place(self, tmp: str, rel: str) -> None:
        final = self._p(rel)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, final)

    # content-addressed blobs ------------------------------------------------------------------

    @staticmethod
    def blob_path(sha256: str) -> str:
        assert len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256), sha256
        return layout.blob(sha256)

    def put_blob(self, local: Path, sha256: str) -> bool:
        """Upload a file under its digest; False when the blob was already there."""
        rel = self.blob_path(sha256)
        if self.exists(rel):
            return False
        self.put_file(local, rel)
        return True

    def fetch_blob(self, sha256: str, size: int, dest: Path, *, label: str) -> int:
        """Copy a blob to `dest`, checking size and digest while streaming. Returns bytes read."""
        h = hashlib.sha256()
        read = 0
        # unique per writer: several processes may fetch the same file into a shared checkout
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        with self.open(self.blob_path(sha256)) as src, open(tmp, "wb") as out:
            for block in iter_blocks(src):
                read += len(block)
                if read > size:
                    break
                h.update(block)
                out.write(block)
        if read != size or h.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise VerificationError("file-hash", f"{label}: content does not match the manifest "
                                    f"(expected {size} bytes, sha256 {sha256[:16]}…)")
        os.replace(tmp, dest)
        return read


def iter_blocks(fh: Any, block: int = BLOCK) -> Iterator[bytes]:
    while data := fh.read(block):
        yield data
