"""Run on the gateway host: wait until the gateway has a route, then ask through the official
openai SDK. Prints one JSON object: the answers, and the node URLs the tracker lists.

    python -m tests.deploy.sdk_client BASE_URL TRACKER_URL API_KEY WAIT_S PROMPT...
"""

from __future__ import annotations

import json
import sys
import time

import httpx
from openai import OpenAI


def main(base_url: str, tracker_url: str, api_key: str, wait_s: str, *prompts: str) -> None:
    deadline = time.monotonic() + float(wait_s)
    last = ""
    while True:
        try:
            health = httpx.get(f"{base_url}/health", timeout=2)
            if health.status_code == 200:
                break
            last = health.text[:300]
        except httpx.HTTPError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            sys.exit(f"gateway {base_url} not ready after {wait_s} s: {last}")
        time.sleep(0.3)
    api = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    answers = []
    for prompt in prompts:
        r = api.chat.completions.create(model="tiny", temperature=0, max_tokens=16,
                                        messages=[{"role": "user", "content": prompt}])
        answers.append({"text": r.choices[0].message.content,
                        "route": r.model_extra["shoal"]["route"]})
    nodes = httpx.get(f"{tracker_url}/nodes", timeout=5).json()
    print(json.dumps({"answers": answers, "node_urls": sorted(n["url"] for n in nodes)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
