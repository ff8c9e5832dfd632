"""The held-out evaluation sets are disjoint by construction from what training and the demo's
workload use: no shared wording, template or slot value, tools the workload never offers, and a
general suite that shares no phrasing with the training questions. The shipped files are exactly
what their generator writes."""

from __future__ import annotations

import json
import re

from train import evalsets
from train.evalsets import build
from train.tasks import GENERAL, SLOTS, TEMPLATES, items

HELD_OUT = (*evalsets.GATE, *evalsets.REPORT)


def _users(its) -> list[str]:
    return [m["content"] for it in its for m in it["messages"] if m["role"] == "user"]


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("(.+)".join(map(re.escape, parts)), re.I)


def _values(call: dict) -> set[str]:
    return {str(v) for k, v in call["arguments"].items() if k != "unit"}  # `unit` is an enum


TRAINING = [*_users(items(2000, seed=0)), *_users(items(500, seed=1000, heldout=True)),
            *(q for q, _, _ in GENERAL), *_users(evalsets.load("regression"))]
"""Every question the workload, the training rows and the tuning sets can hold."""


def test_the_shipped_files_are_what_the_generator_writes():
    for name, generated in build.sets().items():
        assert evalsets.load(name) == json.loads(json.dumps(generated)), name
        assert len(generated) >= 100, name


def test_held_out_sets_share_no_wording_template_or_slot_value_with_training():
    patterns = [_template_pattern(t) for ts in TEMPLATES.values() for t in ts]
    training_grams = set().union(*map(_grams, TRAINING))
    training_values = {str(v) for it in [*items(2000, seed=0),
                                         *evalsets.load("tools_heldout")]
                       for v in _values(it["answer"])}
    training_values |= {v for workload, heldout in SLOTS.values() for v in workload + heldout}
    seen = set()
    for name in HELD_OUT:
        questions = _users(evalsets.load(name))
        assert not set(questions) & set(TRAINING), name
        assert not set(questions) & seen, f"{name} repeats an item of another held-out set"
        seen |= set(questions)
        for q in questions:
            assert not any(p.fullmatch(q) for p in patterns), (name, q)
            assert not _grams(q) & training_grams, (name, q, _grams(q) & training_grams)
        for it in evalsets.load(name):
            if it["check"] == "tool_calls":
                assert not _values(it["answer"]) & training_values, (name, it["answer"])


def test_tool_sets_pass_tools_through_the_api_and_hold_tools_never_trained():
    trained = set(TEMPLATES)
    for name in ("tools_api_gate", "tools_api_report"):
        its = evalsets.load(name)
        assert all(it["check"] == "tool_calls" and it["tools"] for it in its)
        assert all([m["role"] for m in it["messages"]] == ["user"] for it in its)  # no system
        assert all(it["answer"]["name"] in {t["function"]["name"] for t in it["tools"]}
                   for it in its)
        unseen = [it for it in its if it["answer"]["name"] not in trained]
        assert len(unseen) >= 20 and {it["answer"]["name"] for it in unseen} == \
            set(build.UNSEEN_TOOLS), name
