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


def items(n: int, *, seed: int, heldout: bool = False, api: bool = False) -> list[dict]:
    """`n` task items: chat messages, the expected call, and the check that scores an answer.

    `api`: the tools described the way the gateway describes a request's `tools=` to a model whose
    chat template has no tool support (`tools_system_prompt`), answered with a `<tool_call>` that
    the gateway parses into `tool_calls`: training on these traces trains exactly what serving
    renders for an app's `tools=`. Otherwise the short bare-JSON `SYSTEM` prompt (the tuning
    set's)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, call = _item(rng, heldout)
        system = tools_system_prompt() if api else SYSTEM
        out.append({"id": f"tool-{'h' if heldout else 'w'}{seed}-{i}",
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": question}],
                    "check": "tool_calls" if api else "tool_call", "answer": call})
    return out


def via_tools(item: dict) -> dict:
    """An `api` item as an app sends it with the API's `tools=` instead of the system prompt (the
    gateway renders the two identically for a template without tool support; a test checks)."""
    return {**item, "messages": [m for m in item["messages"] if m["role"] != "system"],
            "tools": tool_schemas()}


def tool_schemas() -> list[dict]:
    """The workload's three tools as the API's `tools=` JSON schemas."""
    from train.evalsets.build import TOOLS

    return [TOOLS[name] for name in sorted(TEMPLATES)]


def tools_system_prompt() -> str:
    """The system message the gateway renders for `tools=tool_schemas()` on a template without
    tool support."""
    from serve.gateway.chat_format import TOOLS_PROMPT

    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tool_schemas()))


# Plain questions contributors also ask, with no tools offered: (question, a correct reply, words
# one of which a correct reply contains). None is in the regression suite (a test checks), so the
# suite still measures what training on tool calls costs elsewhere.
GENERAL = [
    ("What is the capital of Spain?", "The capital of Spain is Madrid.", ["Madrid"]),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa.", ["Ottawa"]),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo.", ["Cairo"]),
    ("What is the capital of Russia?", "The capital of Russia is Moscow.", ["Moscow"]),
    ("What is the capital of the United Kingdom?", "The capital of the United Kingdom is London.",
     ["London"]),
    ("What is the capital of China?", "The capital of China is Beijing.", ["Beijing"]),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.", ["Mars"]),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.",
     ["Mercury"]),
    ("How many months are there in a year?", "There are 12 months in a year.", ["12", "twelve"]),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", ["60", "sixty"]),
    ("How many sides does a triangle have?", "A triangle has 3 sides.", ["3", "three"]),
    ("How many legs does a dog have?", "A dog has 4 legs.", ["4", "four"]),
    ("What is 3 plus 5?", "3 plus 5 is 8.", ["8", "eight"]),
    ("What is 9 minus 4?", "9 minus 4 is 5.", ["5", "five"]),
    ("What is 6 times 2?", "6 times 2 is 12.", ["12", "twelve"]),
    ("What is the boiling point of water in Celsius?",
     "Water boils at 100 degrees Celsius at sea level.", ["100"]),
    ("What color is grass?", "Grass is green.", ["green"]),
    ("What color are ripe bananas?", "Ripe bananas are yellow.", ["yellow"]),
    ("What do cows drink?", "Cows drink water.", ["water"]),
    ("Which animal is known for having a very long neck?",
     "The giraffe is known for its very long neck.", ["giraffe"]),
    ("What is the largest mammal on Earth?", "The blue whale is the largest mammal on Earth.",
     ["blue whale"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa.", ["Leonardo"]),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", ["Au"]),
    ("What is the opposite of up?", "The opposite of up is down.", ["down"]),
    ("What is the opposite of day?", "The opposite of day is night.", ["night"]),
    ("Which continent is Brazil in?", "Brazil is in South America.", ["South America"]),
    ("Which continent is Japan in?", "Japan is in Asia.", ["Asia"]),
    ("What is the tallest mountain in the world?",
     "Mount Everest is the tallest mountain in the world.", ["Everest"]),
    ("What star is at the center of our solar system?",
     "The Sun is the star at the center of our solar system.", ["Sun"]),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths.",
     ["butterfly", "butterflies", "moth", "moths"]),
    ("How many wheels does a bicycle have?", "A bicycle has 2 wheels.", ["2", "two"]),
    ("What language is mostly spoken in Brazil?", "Portuguese is mostly spoken in Brazil.",
     ["Portuguese"]),
]


def general_items(n: int, *, seed: int) -> list[dict]:
    """`n` plain questions from `GENERAL` (no tools offered), scored by `contains` like the
    regression suite; `reply` is what a contributor sends as a correction."""
    rng = random.Random(seed)
    picked = rng.sample(GENERAL, min(n, len(GENERAL)))
    return [{"id": f"general-{seed}-{i}", "messages": [{"role": "user", "content": q}],
             "check": "contains", "answer": words, "reply": reply}
            for i, (q, reply, words) in enumerate(picked)]


def answer_text(call: dict) -> str:
    """The canonical reply for an expected call (what a correct model writes)."""
    return json.dumps(call, separators=(", ", ": "))


def tool_call_text(call: dict) -> str:
    """The canonical reply for an expected call in the gateway's tool format."""
    return f"<tool_call>{json.dumps(call)}</tool_call>"


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
    return match_call(parse_call(text), expected)


def match_call(got: dict | None, expected: dict) -> bool:
    """Whether a parsed call `{"name", "arguments"}` is exactly the expected one."""
    if not isinstance(got, dict) or got.get("name") != expected["name"]:
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
