"""Small-sample statistics for the eval gate and the reports: a 95 % interval on an accuracy and
a paired test of two models scored on the same items.

Both come from SciPy (`scipy.stats.binomtest`), a maintained implementation of the exact binomial
test and its Wilson score interval, rather than formulas written here:

- `wilson`: the Wilson score interval, which stays inside [0, 1] and keeps its coverage near 0 or 1
  and at the 20–200 items an evaluation set has (the normal "±1.96·√(p(1−p)/n)" does neither);
- `mcnemar`: the exact McNemar test. Only the discordant items carry information about which model
  is better (`wins`: the candidate right where production was wrong; `losses`: the reverse); under
  "no difference" each discordant item is a fair coin, so the p-value is a binomial tail.

This module knows nothing about models or metric names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n` (0, 1 when there are no items)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


class Paired(BaseModel):
    """The exact McNemar test of a candidate against production on the same items."""

    model_config = ConfigDict(extra="forbid")
    n: int
    """Items scored on both models."""
    wins: int
    """Items the candidate got right and production wrong."""
    losses: int
    """Items production got right and the candidate wrong."""
    alternative: Literal["greater", "less"]
    """`greater`: the test asks whether the candidate is better; `less`: whether it is worse."""
    p_value: float
    """One-sided exact p-value: P(at least this many wins (or losses) of the wins + losses
    discordant items | each is a fair coin)."""


def mcnemar(production: Mapping[str, bool], candidate: Mapping[str, bool],
            alternative: Literal["greater", "less"]) -> Paired:
    """Compare per-item outcomes (`item id → passed`) on the items both models were scored on."""
    from scipy.stats import binomtest

    shared = sorted(set(production) & set(candidate))
    wins = sum(candidate[i] and not production[i] for i in shared)
    losses = sum(production[i] and not candidate[i] for i in shared)
    discordant = wins + losses
    if discordant == 0:
        p = 1.0
    else:
        tail = wins if alternative == "greater" else losses
        p = float(binomtest(tail, discordant, 0.5, alternative="greater").pvalue)
    return Paired(n=len(shared), wins=wins, losses=losses, alternative=alternative, p_value=p)
