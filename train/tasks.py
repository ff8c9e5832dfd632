"""The agent task the project measures itself on: pick a tool and fill its arguments, as JSON.

A user asks in plain words; the answer is one JSON object `{"name": ..., "arguments": {...}}` that a
program can check exactly. Items come from a seeded generator over templates and slot values; the
held-out evaluation draws its cities, currencies and timer labels from lists the workload never
uses, so a model that improves on it has learnt the task, not the items.
"""

from __future__ import annotations

import json
import random

SYSTEM = ('You call tools. Reply with one JSON object {"name": <tool>, "arguments": {...}} and '
          "nothing else. Tools: get_weather(city, unit: celsius|fahrenheit); "
          "convert_currency(amount, from_currency, to_currency); set_timer(minutes, label).")

TEMPLATES = {
    "get_weather": ["What's the weather in {city} in {unit}?",
                    "How hot is it in {city}? Give me {unit}.",
                    "Tell me the temperature in {city}, {unit} please.",
                    "Is it cold in {city} today? Answer in {unit}."],
    "convert_currency": ["Convert {amount} {from_currency} to {to_currency}.",
                         "How much is {amount} {from_currency} in {to_currency}?",
                         "I have {amount} {from_currency}; what is that in {to_currency}?"],
    "set_timer": ["Set a timer for {minutes} minutes for the {label}.",
                  "Remind me in {minutes} minutes to check the {label}.",
                  "Start a {minutes} minute timer called {label}."],
}

SLOTS = {  # workload values | held-out values (disjoint)
    "city": (["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Dublin", "Warsaw",
              "Athens", "Tokyo", "Seoul", "Lima", "Cairo", "Nairobi", "Toronto", "Denver", "Boston"],
             ["Lisbon", "Lyon", "Munich", "Zurich", "Helsinki", "Kyoto", "Osaka", "Quito", "Accra",
              "Dallas"]),
    "currency": (["USD", "EUR", "GBP", "JPY", "CHF", "CAD"], ["AUD", "SEK", "NOK", "INR"]),
    "label": (["pasta", "laundry", "tea", "meeting", "oven", "bread", "parking", "call"],
              ["rice", "eggs", "stretch", "email", "plants"]),
}


def _item(rng: random.Random, heldout: bool) -> tuple[str, dict]:
    pick = 1 if heldout else 0
    name = rng.choice(sorted(TEMPLATES))
    template = rng.choice(TEMPLATES[name])
    if name == "get_weather":
        args = {"city": rng.choice(SLOTS["city"][pick]),
                "unit": rng.choice(["celsius", "fahrenheit"])}
    elif name == "convert_currency":
        pair = rng.sample(SLOTS["currency"][pick] + (["USD", "EUR"] if heldout else []), 2)
        args = {"amount": rng.choice([5, 12, 20, 45, 80, 150, 300, 1200]) + (3 if heldout else 0),
                "from_currency": pair[0], "to_currency": pair[1]}
    else:
        args = {"minutes": rng.randint(2, 60), "label": rng.choice(SLOTS["label"][pick])}
    return template.format(**args), {"name": name, "arguments": args}


def items(n: int, *, seed: int, heldout: bool = False) -> list[dict]:
    """`n` task items: chat messages, the expected call, and the check that scores an answer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, call = _item(rng, heldout)
        out.append({"id": f"tool-{'h' if heldout else 'w'}{seed}-{i}",
                    "messages": [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": question}],
                    "check": "tool_call", "answer": call})
    return out


def answer_text(call: dict) -> str:
    """The canonical reply for an expected call (what a correct model writes)."""
    return json.dumps(call, separators=(", ", ": "))


def parse_call(text: str) -> dict | None:
    """The first JSON object in `text` that looks like a call, or None."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                try:
                    value = json.loads(text[start:end + 1])
                except json.JSONDecodeError:
                    break
                return value if isinstance(value, dict) else None
        start = text.find("{", start + 1)
    return None


def check_call(text: str, expected: dict) -> bool:
    """Exact match of tool name and arguments (numbers compared as numbers, strings exactly)."""
    got = parse_call(text)
    if not got or got.get("name") != expected["name"]:
        return False
    args = got.get("arguments")
    if not isinstance(args, dict) or set(args) != set(expected["arguments"]):
        return False
    for key, want in expected["arguments"].items():
        have = args[key]
        if isinstance(want, (int, float)) and not isinstance(want, bool):
            try:
                if float(have) != float(want):
                    return False
            except (TypeError, ValueError):
                return False
        elif str(have).strip() != want:
            return False
    return True
