"""The generators of the held-out evaluation sets: `python -m train.evalsets.build` rewrites their
JSON lines files, and a test checks the shipped files are exactly what this program writes.

These sets are disjoint *by construction* from everything training and the demo's workload use
(`train.tasks`): other wordings, other slot values, tool-call items whose tools are passed the way
an app passes them (the API's `tools=` JSON schemas, no system prompt) and two tools the workload
never offers. Each family has two sets drawn from one pool without repeats: `*_gate` is what the
eval gate decides on; `*_report` is what a before → after result is reported on, so a reported
number is never the one a candidate was selected by. Neither was used to choose any setting.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
PER_SET = 120
"""Items per set: at 120 items a 95 % interval is about ±9 points, and one item is 0.8 points."""


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object",
                                                            "properties": properties,
                                                            "required": required}}}


_STR = {"type": "string"}
TOOLS = {
    "get_weather": _function("get_weather", "Current weather in a city.", {
        "city": _STR, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city", "unit"]),
    "convert_currency": _function("convert_currency", "Convert an amount between currencies.", {
        "amount": {"type": "number"}, "from_currency": _STR, "to_currency": _STR},
        ["amount", "from_currency", "to_currency"]),
    "set_timer": _function("set_timer", "Start a named countdown timer.", {
        "minutes": {"type": "integer"}, "label": _STR}, ["minutes", "label"]),
    # never offered by the workload: the model has to read the schema
    "get_stock_price": _function("get_stock_price", "Latest share price of a stock.", {
        "ticker": _STR}, ["ticker"]),
    "translate_text": _function("translate_text", "Translate a short text.", {
        "text": _STR, "target_language": _STR}, ["text", "target_language"]),
}
UNSEEN_TOOLS = ("get_stock_price", "translate_text")

TOOL_TEMPLATES = {
    "get_weather": ["Could you check the current weather for {city}? Use {unit}.",
                    "I'm flying to {city} tomorrow; what is it like there, in {unit}?",
                    "{city} weather please, in degrees {unit}."],
    "convert_currency": ["What would {amount} {from_currency} be worth in {to_currency}?",
                         "Exchange {amount} {from_currency} into {to_currency} for me.",
                         "Please turn {amount} {from_currency} into {to_currency}."],
    "set_timer": ["Can you start a countdown of {minutes} minutes labelled {label}?",
                  "I need a {minutes}-minute countdown named {label}.",
                  "Put a countdown on for {minutes} minutes and call it {label}."],
    "get_stock_price": ["What's {ticker} trading at right now?",
                        "Look up the share price of {ticker}."],
    "translate_text": ["Translate '{text}' into {target_language}.",
                       "How do you say '{text}' in {target_language}?"],
}
TOOL_SLOTS = {  # none of these is a workload or tuning-set value (a test checks)
    "city": ["Porto", "Geneva", "Hamburg", "Krakow", "Seville", "Bergen", "Nagoya", "Melbourne",
             "Calgary", "Austin", "Havana", "Tunis"],
    "currency": ["BRL", "MXN", "ZAR", "PLN", "DKK", "KRW", "SGD", "NZD"],
    "label": ["yoga", "nap", "homework", "pizza", "dishes", "piano", "medicine"],
    "ticker": ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "IBM", "ORCL", "INTC", "AMD", "NFLX",
               "ADBE", "CSCO", "SAP", "UBER"],
    "text": ["good morning", "thank you very much", "where is the station", "see you soon"],
    "target_language": ["French", "German", "Spanish", "Italian", "Japanese"],
}
AMOUNTS = (64, 66, 95, 99, 240, 510, 725, 875, 2500)
"""Amounts that are none of the workload's or the tuning set's values (nor its 2–60 minutes)."""
MINUTES = (70, 75, 85, 90, 100, 105, 110, 120, 135, 140, 165, 180)
"""The workload sets timers of 2–60 minutes (and converts amounts such as 80 and 150)."""


def _args(rng: random.Random, name: str) -> dict:
    if name == "get_weather":
        return {"city": rng.choice(TOOL_SLOTS["city"]),
                "unit": rng.choice(["celsius", "fahrenheit"])}
    if name == "convert_currency":
        pair = rng.sample(TOOL_SLOTS["currency"], 2)
        return {"amount": rng.choice(AMOUNTS), "from_currency": pair[0], "to_currency": pair[1]}
    if name == "set_timer":
        return {"minutes": rng.choice(MINUTES), "label": rng.choice(TOOL_SLOTS["label"])}
    if name == "get_stock_price":
        return {"ticker": rng.choice(TOOL_SLOTS["ticker"])}
    return {"text": rng.choice(TOOL_SLOTS["text"]),
            "target_language": rng.choice(TOOL_SLOTS["target_language"])}


def tool_items(n: int, seed: int) -> list[dict]:
    """`n` distinct API tool-call items: the user's words, 2–4 tool schemas (the right one among
    them, in random order) and the exact call expected back in `tool_calls`."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        name = rng.choice(sorted(TOOLS))
        args = _args(rng, name)
        question = rng.choice(TOOL_TEMPLATES[name]).format(**args)
        if question in seen:
            continue
        seen.add(question)
        others = rng.sample([t for t in sorted(TOOLS) if t != name], rng.randint(1, 3))
        offered = [name, *others]
        rng.shuffle(offered)
        out.append({"messages": [{"role": "user", "content": question}],
                    "tools": [TOOLS[t] for t in offered], "check": "tool_calls",
                    "answer": {"name": name, "arguments": args}})
    return out


# -- the general-ability suite ------------------------------------------------------------------

CAPITALS = {"Portugal": "Lisbon", "Hungary": "Budapest", "Argentina": "Buenos Aires",
            "Thailand": "Bangkok", "Turkey": "Ankara", "Denmark": "Copenhagen",
            "Belgium": "Brussels", "Netherlands": "Amsterdam", "Australia": "Canberra",
            "Vietnam": "Hanoi", "Chile": "Santiago", "Sweden": "Stockholm", "Greece": "Athens",
            "Colombia": "Bogota", "Indonesia": "Jakarta", "Philippines": "Manila"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
PLURALS = {"child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth",
           "woman": "women", "goose": "geese", "box": "boxes", "city": "cities", "leaf": "leaves",
           "knife": "knives"}
SOUNDS = {"cow": ["moo"], "cat": ["meow", "miaow"], "duck": ["quack"], "sheep": ["baa"],
          "dog": ["woof", "bark", "barks"], "owl": ["hoot", "hoots"], "lion": ["roar", "roars"]}
WORDS = ["pineapple", "harbor", "velvet", "tractor", "lantern", "meadow", "cobalt", "saddle",
         "walnut", "glacier", "pebble", "violin", "canyon", "marble", "thimble", "orchid",
         "compass", "falcon", "blanket", "pepper", "ladder", "cactus", "rocket", "ribbon"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXY"


def _kinds(rng: random.Random) -> list[list[tuple[str, str, list[str], list[str]]]]:
    """Every kind of question as a list of (question, check, accepted, wrong options): the whole
    pool where it is small, a sample where it is not."""
    sums = {(a, b) for a, b in ((rng.randint(11, 49), rng.randint(11, 49)) for _ in range(90))}
    odd_even = sorted({rng.randint(21, 199) for _ in range(90)})
    return [
        [(f"{city} is the capital city of which country?", "words", [country], [])
         for country, city in CAPITALS.items()],
        [(f"Add {a} and {b}. Reply with the number only.", "words", [str(a + b)], [])
         for a, b in sorted(sums)],
        [(f"Which day of the week comes right after {d}?", "words", [DAYS[(i + 1) % 7]], [])
         for i, d in enumerate(DAYS)],
        [(f"Name the month that follows {m}.", "words", [MONTHS[(i + 1) % 12]], [])
         for i, m in enumerate(MONTHS)],
        [(f"Give the plural form of the noun '{w}'.", "words", [p], [])
         for w, p in PLURALS.items()],
        [(f"In one word, what noise does a {a} make?", "words", s, []) for a, s in SOUNDS.items()],
        [(f"Echo back this single word and nothing else: {w}", "exact", [w], []) for w in WORDS],
        [(f"Which letter of the alphabet comes straight after {c}?", "words",
          [LETTERS[i + 1] if i + 1 < len(LETTERS) else "Z"], []) for i, c in enumerate(LETTERS)],
        [(f"Is the number {n} even or odd?", "words", ["even" if n % 2 == 0 else "odd"],
          ["odd" if n % 2 == 0 else "even"]) for n in odd_even],
    ]


def general_items(n: int, seed: int) -> list[dict]:
    """`n` distinct plain questions (no tools), as many of each kind as its pool allows, scored by
    whole words (`words`: an accepted answer appears as a whole word and no wrong option does) or
    exactly (`exact`: the reply is the word)."""
    rng = random.Random(seed)
    kinds = _kinds(rng)
    for pool in kinds:
        rng.shuffle(pool)
    out: list[dict] = []
    while len(out) < n and any(kinds):
        for pool in kinds:
            if pool and len(out) < n:
                question, check, answers, wrong = pool.pop()
                item = {"messages": [{"role": "user", "content": question}], "check": check,
                        "answer": answers}
                if wrong:
                    item["wrong"] = wrong
                out.append(item)
    if len(out) < n:
        raise ValueError(f"the general pools hold {len(out)} questions, fewer than {n}")
    return out


def sets() -> dict[str, list[dict]]:
    """Every generated set, named as `train.evalsets` loads them, with ids."""
    pools = {"tools_api": tool_items(2 * PER_SET, seed=7001),
             "general": general_items(2 * PER_SET, seed=7002)}
    out = {}
    for family, pool in pools.items():
        random.Random(7000).shuffle(pool)  # both halves get the same mix of kinds
        for half, name in enumerate((f"{family}_gate", f"{family}_report")):
            out[name] = [{"id": f"{name}-{i}", **item}
                         for i, item in enumerate(pool[half::2])]
    return out


def write(directory: Path = HERE) -> None:
    for name, items in sets().items():
        with open(directory / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)


if __name__ == "__main__":
    write()
