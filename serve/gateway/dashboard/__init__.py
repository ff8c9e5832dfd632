"""The gateway's web dashboard at `/dashboard`: a swarm page for every key, a contributor page
and a maintainer page (docs/dashboard.md).

A static page (`static/`: one HTML shell, vanilla JavaScript, a hand-written SVG chart, no build
step, nothing fetched from elsewhere) asks for an API key, keeps it in the tab's `sessionStorage`
and sends it as a bearer header to JSON views (`routes.py`) and to the trace endpoints that
already exist. The server keeps no login state, a key never appears in a URL, and a browser never
attaches it on its own, so a page on another site cannot make a request with it (no CSRF).

`swarm.py` and `registry_view.py` assemble what the pages show; they read the gateway and the
registry and know nothing about HTML.
"""

ASSETS = {"app.js": "text/javascript", "chart.js": "text/javascript", "style.css": "text/css"}
"""The page's files under `static/`, with their media types."""
PUBLIC_PATHS = frozenset({"/dashboard", *(f"/dashboard/{name}" for name in ASSETS)})
"""Paths the guard lets through without a key: the shell and its assets carry no data."""
