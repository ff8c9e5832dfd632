"""Run on the gateway host: wait until the gateway has a route (and, if given, serves VERSION to
new requests), then ask through the official openai SDK. Prints one JSON object: the answers,
and the node URLs the tracker lists.

    python -m tests.deploy.sdk_client BASE_URL TRACKER_URL API_KEY WAIT_S VERSION|- PROMPT...
"""

from __future__ import annotations

import json
import sys
import time

import httpx
from openai import OpenAI


def _ready(base_url: str, version: str) -> str:
    """'' when the gateway can answer on `version` ('-': any), else what it is waiting for."""
    health = httpx.get(f"{base_url}/health", timeout=2)
    if health.status_code != 200:
        return health.text[:300]
    if version != "-":
        current = httpx.get(f"{base_url}/v1/rollout", timeout=2).json()["current"]
        if current != version:
            return f"serving {current}, not yet {version}"
    return ""


def main(base_url: str, tracker_url: str, api_key: str, wait_s: str, version: str,
         *prompts: str) -> None:
    deadline = time.monotonic() + float(wait_s)
    while True:
        try:
            waiting = _ready(base_url, version)
        except httpx.HTTPError as exc:
            waiting = str(exc)
        if not waiting:
            break
        if time.monotonic() > deadline:
            sys.exit(f"gateway {base_url} not ready after {wait_s} s: {waiting}")
        time.sleep(0.3)
    api = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    answers = []
    for prompt in prompts:
        r = api.chat.completions.create(model="tiny", temperature=0, max_tokens=16,
                                        messages=[{"role": "user", "content": prompt}])
        answers.append({"text": r.choices[0].message.content,
                        "route": r.model_extra["shoal"]["route"],
                        "version": r.model_extra["shoal"].get("version")})
    nodes = httpx.get(f"{tracker_url}/nodes", timeout=5).json()
    print(json.dumps({"answers": answers, "node_urls": sorted(n["url"] for n in nodes),
                      "node_versions": sorted(n["version"] for n in nodes)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
