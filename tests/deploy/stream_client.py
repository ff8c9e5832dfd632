"""Run on the gateway host: stream one greedy chat completion through the official openai SDK and,
once the first words have arrived, name the node of span START:END the stream runs through (the
one the tracker lists with an open session), for the test to kill its host. Prints a line
``{"in_use": NODE_ID}`` as soon as it is known, then one JSON object: the streamed text and the
gateway's closing `shoal` extension (route, failovers).

    python -m tests.deploy.stream_client BASE_URL TRACKER_URL API_KEY START:END MAX_TOKENS PROMPT
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
from openai import OpenAI


def _in_use(tracker_url: str, start: int, end: int, found: list[str], stop: threading.Event,
            t0: float) -> None:
    with httpx.Client(timeout=2) as http:
        while not stop.is_set():
            try:
                nodes = http.get(f"{tracker_url}/nodes").json()
            except httpx.HTTPError:
                nodes = []
            busy = [n["node_id"] for n in nodes
                    if (n["start"], n["end"]) == (start, end) and n["sessions"]]
            if len(busy) == 1:
                found.append(busy[0])
                print(json.dumps({"in_use": busy[0], "at_s": round(time.monotonic() - t0, 2)}),
                      flush=True)
                return
            time.sleep(0.1)


def main(base_url: str, tracker_url: str, api_key: str, span: str, max_tokens: str,
         prompt: str) -> None:
    start, end = (int(x) for x in span.split(":"))
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
            watcher = threading.Thread(target=_in_use, args=(tracker_url, start, end, found,
                                                             stop, t0), daemon=True)
            watcher.start()
    stop.set()
    print(json.dumps({"text": text, "shoal": extension, "in_use": found[0] if found else None,
                      "elapsed_s": round(time.monotonic() - t0, 2)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
