"""A tenant probing the gateway's drafter for another tenant's prompts, run as its own process:

    python -m tests.serve.drafting_attacker BASE_URL KEY MAX_TOKENS PROMPT [PROMPT ...]

It uses nothing but the public HTTP API with its own key: for each prompt, in order, one greedy
chat completion with the suffix drafter, and it reads the speculation counters every response
carries. If another tenant's text had taught its drafts, a prompt that tenant sent would have
more tokens accepted than a prompt nobody sent. Prints one JSON object: {prompt: accepted}.
"""

from __future__ import annotations

import json
import sys

import httpx


def probe(base_url: str, key: str, max_tokens: int, prompts: list[str]) -> dict[str, int]:
    accepted = {}
    for prompt in prompts:
        r = httpx.post(f"{base_url}/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": "tiny", "messages": [{"role": "user", "content": prompt}],
                             "max_tokens": max_tokens, "temperature": 0,
                             "speculation": {"drafter": "suffix"}})
        r.raise_for_status()
        accepted[prompt] = r.json()["shoal"]["accepted"]
    return accepted


if __name__ == "__main__":
    url, key, n, *texts = sys.argv[1:]
    print(json.dumps(probe(url, key, int(n), texts)))
