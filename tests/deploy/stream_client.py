"""Run on the gateway host: stream one greedy chat completion through the official openai SDK and,
once the first words have arrived, name the node of span START:END the stream runs through (the
one replica of that span with a session open, as its own signed record in a pong says), for the
test to kill its host. Prints a line ``{"in_use": NODE_ID}`` as soon as it is known, then one
JSON object: the streamed text and the gateway's closing `shoal` extension (route, failovers).

    python -m tests.deploy.stream_client BASE_URL TRACKER_URL API_KEY START:END MAX_TOKENS PROMPT
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import httpx
from openai import OpenAI

import serve.transport  # noqa: F401  (imported before the stream starts: torch takes seconds)
import serve.wire  # noqa: F401
from tests.deploy.probe import sessions_of


def _in_use(replicas: list[dict], found: list[str], stop: threading.Event, t0: float) -> None:
    """Ping each replica (pinned, on its signed URL) until exactly one has a session open: the
    signed record in its pong counts them as of now (the tracker's copy is a heartbeat old)."""
    async def watch() -> None:
        while not stop.is_set():
            busy = [n["node_id"] for n in replicas if await sessions_of(n)]
            if len(busy) == 1:
                found.append(busy[0])
                print(json.dumps({"in_use": busy[0], "at_s": round(time.monotonic() - t0, 2)}),
                      flush=True)
                return
            await asyncio.sleep(0.02)

    asyncio.run(watch())


def main(base_url: str, tracker_url: str, api_key: str, span: str, max_tokens: str,
         prompt: str) -> None:
    start, end = (int(x) for x in span.split(":"))
    replicas = [n for n in httpx.get(f"{tracker_url}/nodes", timeout=5).json()
                if (n["start"], n["end"]) == (start, end)]
    t0 = time.monotonic()
    api = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    stream = api.chat.completions.create(
        model="tiny", temperature=0, max_tokens=int(max_tokens), stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": prompt}],
        extra_body={"speculation": {"drafter": "off"}})  # one traversal per token: a long stream
    text, extension, found, stop = "", {}, [], threading.Event()
    watcher = None
    for chunk in stream:
        if not chunk.choices:  # the closing usage chunk
            extension = chunk.model_extra.get("shoal", {})
            continue
        text += chunk.choices[0].delta.content or ""
        if text and watcher is None:
            watcher = threading.Thread(target=_in_use, args=(replicas, found, stop, t0),
                                       daemon=True)
            watcher.start()
    stop.set()
    print(json.dumps({"text": text, "shoal": extension, "in_use": found[0] if found else None,
                      "elapsed_s": round(time.monotonic() - t0, 2)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
