"""`shoal registry serve`: the registry tree over plain HTTP, read-only, for other hosts.

The registry is a static tree of signed metadata and content-addressed blobs (registry/storage.py),
so the server needs no logic and no trust: clients check every byte against the pinned root
(registry/client.py), and a server or path that lies is caught there. Readers use fsspec's HTTP
filesystem (``SHOAL_REGISTRY=http://host:port``), which lists directories by reading the links
of an HTML index, so the server must answer directory requests with one.

Python's `http.server` does exactly that (files with Content-Length and HEAD, HTML directory
indexes, GET/HEAD only) and is maintained with the interpreter, so it is used as is rather than a
web framework; a production registry can be any file server or object store instead. Half-written
files (the store's ``tmp/``) are not served.
"""

from __future__ import annotations

import functools
import logging
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from registry.exceptions import NotFoundError

log = logging.getLogger("shoal.registry.server")
HIDDEN_TOP = frozenset({"tmp"})
"""Top-level directories never served: uploads in progress. Dot files are never served either."""


class _Handler(SimpleHTTPRequestHandler):
    def hidden(self) -> bool:
        """Whether the request names a path not served, judged on the path the server would open
        (after `translate_path` has unquoted and normalised it: `//tmp/x`, `/a/../tmp/x` and
        `/%74mp/x` are all `tmp/x`)."""
        rel = os.path.relpath(self.translate_path(self.path), self.directory)
        parts = [] if rel == "." else rel.split(os.sep)
        return bool(parts) and (parts[0] in HIDDEN_TOP or parts[0] == ".."
                                or any(p.startswith(".") for p in parts))

    def send_head(self):  # the one place both GET and HEAD pass through
        if self.hidden():
            self.send_error(404, "not served")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8100) -> ThreadingHTTPServer:
    """A read-only HTTP server over the registry tree at `root` (not started; port 0: any)."""
    root = Path(root)
    if not (root / "root" / "1.root.json").exists():
        raise NotFoundError(f"{root}: no registry here (no root/1.root.json); create one with "
                            "`shoal registry init`")
    handler = functools.partial(_Handler, directory=str(root))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_registry(root: Path, host: str, port: int) -> None:
    """Blocking entry point (used by `shoal registry serve`)."""
    server = make_server(root, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
