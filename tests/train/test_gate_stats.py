"""The gate decides by a paired test on the same items, not by a few items' margin: a small gain is
not an improvement, a small significant loss is a regression, and a damaged model is refused."""

from __future__ import annotations

from tests.train.conftest import noised_copy
from train.evalsets import load
from train.evaluate import evaluate, load_model, metrics, outcomes
from train.gate import GateConfig, decide
from train.stats import mcnemar, wilson

N = 120
TOOLS, GENERAL = "tools_api_gate.accuracy", "general_gate.accuracy"


def _side(right: set[int]) -> dict[str, bool]:
    return {f"i{k}": k in right for k in range(N)}


def _decide(prod_tools, cand_tools, prod_general, cand_general):
    prod = {TOOLS: _side(prod_tools), GENERAL: _side(prod_general)}
    cand = {TOOLS: _side(cand_tools), GENERAL: _side(cand_general)}
    acc = lambda side: {m: sum(v.values()) / N for m, v in side.items()}  # noqa: E731
    return decide(acc(cand), acc(prod), GateConfig(), cand, prod)


def test_wilson_and_exact_mcnemar_match_their_textbook_values():
    low, high = wilson(15, 20)
    assert round(low, 3) == 0.531 and round(high, 3) == 0.888
    assert wilson(0, 30)[0] == 0.0 and wilson(0, 0) == (0.0, 1.0)
    test = mcnemar(_side(set()), _side(set(range(6))), "greater")
    assert (test.wins, test.losses, test.p_value) == (6, 0, 0.5 ** 6)


def test_a_margin_without_significance_is_refused_and_a_significant_one_accepted():
    general = set(range(60))
    # +14 right, −7 wrong: Δ = +0.058 clears the margin, but 14 of 21 discordant items is a
    # coin's luck (p ≈ 0.09)
    noisy = _decide(set(range(20)), set(range(7, 34)), general, general)
    assert noisy.checks[0].delta >= 0.05 and not noisy.accepted
    assert noisy.checks[0].paired.p_value > 0.05
    # +12, −0: Δ = +0.10 with p = 0.5^12
    better = _decide(set(range(20)), set(range(32)), general, general)
    assert better.accepted, better.reasons
    check = better.checks[0]
    assert check.paired.wins == 12 and check.paired.losses == 0
    assert check.paired.p_value == 0.5 ** 12
    assert check.candidate_ci[0] < 32 / N < check.candidate_ci[1]
    record = better.model_dump()  # the statistic is in the gate's record
    assert record["checks"][0]["paired"]["p_value"] == 0.5 ** 12


def test_a_small_but_significant_loss_on_the_general_suite_is_refused():
    # 5 of 120 lost, none won: within a 0.05 margin (Δ = −0.042) but p = 0.5^5 < 0.05
    regressed = _decide(set(range(20)), set(range(40)), set(range(60)), set(range(5, 60)))
    assert not regressed.accepted
    assert GENERAL in regressed.reasons[0] and "5 lost" in regressed.reasons[0]
    # the margin alone (what the gate read before it had outcomes) lets it through
    margin_only = decide({TOOLS: 40 / N, GENERAL: 55 / N}, {TOOLS: 20 / N, GENERAL: 60 / N})
    assert margin_only.accepted


def test_a_damaged_model_is_refused_on_the_general_suite(tiny_model_dir, tmp_path):
    """Real generation end to end: the items are the suite's questions, each expecting what the
    production model itself answers, so production passes all of them; a copy with perturbed
    weights answers differently and the paired test refuses it. An undamaged copy passes."""
    questions = load("general_gate")[:10]
    model, tok = load_model(tiny_model_dir)
    from train.evaluate import generate

    replies = generate(model, tok, questions, max_new_tokens=4)
    own = [{**q, "check": "exact", "answer": [r]} for q, r in zip(questions, replies)]
    noised_copy(tiny_model_dir, tmp_path / "damaged", 0.5)

    def report(directory):
        return evaluate(directory, sets=(), items={"general_gate": own}, max_new_tokens=4)

    prod, damaged = report(tiny_model_dir), report(tmp_path / "damaged")
    assert metrics(prod) == {GENERAL: 1.0}
    gate = GateConfig(improve={}, hold={GENERAL: 1.0})  # no margin refuses: the test must
    same = decide(metrics(prod), metrics(prod), gate, outcomes(prod), outcomes(prod))
    assert same.accepted
    refused = decide(metrics(damaged), metrics(prod), gate, outcomes(damaged), outcomes(prod))
    check = refused.checks[0]
    assert not refused.accepted and check.paired.losses >= 5 and check.paired.wins == 0
    assert check.paired.p_value < 0.05 and "lost" in refused.reasons[0]
