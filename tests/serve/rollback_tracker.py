"""A hostile tracker, as its own process: it answers `GET /nodes` with the listing in the first
file for the first request, then with the listing in the second file for every later one (a
relay that rolls a node's record back to an older, genuinely signed one). Prints its port."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

listings = [Path(p).read_bytes() for p in sys.argv[1:3]]
served = 0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        global served
        body = listings[min(served, 1)] if self.path == "/nodes" else b"[]"
        served += self.path == "/nodes"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
