"""The eval gate: a candidate goes to `staging` only if it beats production where it should and
holds steady where it must. Promotion to `production` stays a maintainer's signed act.

The gate compares two flat metric dicts (`train.evaluate.metrics`) and, for accuracies, the two
models' per-item outcomes on the same items (`train.evaluate.outcomes`). A difference of a few
items on a set of a hundred is noise, so an accuracy check is decided by an exact paired test
(McNemar, `train.stats`) as well as by its margin:

- `improve`: the candidate must gain at least the margin *and* be significantly better
  (one-sided p < `alpha`);
- `hold`: the candidate may lose at most the margin *and* must not be significantly worse.

Metrics without per-item outcomes (`loglik.mean`, `acceptance.rate`) are decided by the margin
alone. The gate knows nothing about models, runs or the registry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from train.stats import Paired, mcnemar, wilson

Outcomes = dict[str, dict[str, bool]]
"""metric → item id → whether the model passed the item (`train.evaluate.outcomes`)."""


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    improve: dict[str, float] = Field(default_factory=lambda: {"tools_api_gate.accuracy": 0.05})
    """metric → the least the candidate must gain over production (every one must pass): by
    default, exact `tool_calls` on the held-out API set."""
    hold: dict[str, float] = Field(default_factory=lambda: {"general_gate.accuracy": 0.05})
    """metric → the most the candidate may lose against production: by default, the held-out
    general-ability suite."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Significance level of the paired tests: an improvement counts when its one-sided p-value is
    below it; a loss refuses the candidate when its p-value is below it."""

    @classmethod
    def for_kind(cls, kind: str) -> "GateConfig":
        """The gate used when none is given: drafts must raise their acceptance rate by 0.02;
        other candidates face the defaults above."""
        if kind == "distill":
            return cls(improve={"acceptance.rate": 0.02}, hold={})
        return cls()

    @classmethod
    def for_run(cls, kind: str, improve: dict[str, float] | None = None,
                hold: dict[str, float] | None = None) -> "GateConfig":
        """The default gate for `kind` with the `improve` and `hold` tables replaced where given
        (`shoal flow train|evaluate --improve METRIC=DELTA --hold METRIC=DELTA`)."""
        base = cls.for_kind(kind)
        return cls(improve=base.improve if improve is None else improve,
                   hold=base.hold if hold is None else hold, alpha=base.alpha)


def _absent(value: object) -> bool:
    return value is None


class GateCheck(BaseModel):
    """One metric compared between candidate and production. A metric missing on either side has
    no numbers, only `why` (the numbers are then left out of the JSON, not written as null)."""

    model_config = ConfigDict(extra="forbid")
    metric: str
    """As `train.evaluate.metrics` names it: `<set>.accuracy`, `loglik.mean`, `acceptance.rate`."""
    kind: Literal["improve", "hold"]
    """`improve`: the candidate must gain at least the bound; `hold`: may lose at most the bound."""
    production: float | None = Field(None, exclude_if=_absent)
    """Production's value."""
    candidate: float | None = Field(None, exclude_if=_absent)
    """The candidate's value."""
    delta: float | None = Field(None, exclude_if=_absent)
    """candidate − production."""
    required: str | None = Field(None, exclude_if=_absent)
    """The condition on `delta`, e.g. `≥ +0.05` or `≥ -0.1`."""
    production_ci: tuple[float, float] | None = Field(None, exclude_if=_absent)
    """95 % Wilson interval of production's accuracy (accuracies with per-item outcomes)."""
    candidate_ci: tuple[float, float] | None = Field(None, exclude_if=_absent)
    """95 % Wilson interval of the candidate's accuracy."""
    paired: Paired | None = Field(None, exclude_if=_absent)
    """The exact McNemar test on the shared items: wins, losses and the one-sided p-value (toward
    "better" for `improve`, "worse" for `hold`)."""
    passed: bool
    """Whether the check passed (never, for a metric not measured on both models)."""
    why: str | None = Field(None, exclude_if=_absent)
    """Why a check without numbers failed."""


class GateDecision(BaseModel):
    """What the gate said about a candidate, with every check and both values."""

    model_config = ConfigDict(extra="forbid")
    accepted: bool
    """True when every check passed (and there was at least one)."""
    checks: list[GateCheck]
    """One per metric of `GateConfig.improve` and `GateConfig.hold`, in that order."""
    reasons: list[str]
    """One line per failed check; empty when accepted."""

    @property
    def verdict(self) -> str:
        """`ACCEPTED`, or `REFUSED: ` and the reasons."""
        return "ACCEPTED" if self.accepted else "REFUSED: " + "; ".join(self.reasons)


def decide(candidate: dict[str, float], production: dict[str, float],
           config: GateConfig | None = None, candidate_items: Outcomes | None = None,
           production_items: Outcomes | None = None) -> GateDecision:
    """Compare the candidate's metrics with production's under `config`; every check reported.

    With per-item outcomes for a metric on both sides, the check also runs the paired test."""
    config = config or GateConfig()
    checks, reasons = [], []
    for kind, table in (("improve", config.improve), ("hold", config.hold)):
        for metric, bound in table.items():
            if metric not in candidate or metric not in production:
                checks.append(GateCheck(metric=metric, kind=kind, passed=False,
                                        why="not measured on both models"))
                reasons.append(f"{metric}: not measured on both models")
                continue
            check = _check(metric, kind, bound, candidate[metric], production[metric],
                           (candidate_items or {}).get(metric),
                           (production_items or {}).get(metric), config.alpha)
            checks.append(check)
            if not check.passed:
                reasons.append(_reason(check, config.alpha))
    return GateDecision(accepted=not reasons and bool(checks), checks=checks, reasons=reasons)


def _check(metric: str, kind: str, bound: float, cand: float, prod: float,
           cand_items: dict[str, bool] | None, prod_items: dict[str, bool] | None,
           alpha: float) -> GateCheck:
    delta = cand - prod
    passed = delta >= bound if kind == "improve" else delta >= -bound
    need = f"≥ +{bound:g}" if kind == "improve" else f"≥ -{bound:g}"
    extra: dict = {}
    if cand_items and prod_items:
        paired = mcnemar(prod_items, cand_items, "greater" if kind == "improve" else "less")
        significant = paired.p_value < alpha
        passed = passed and (significant if kind == "improve" else not significant)
        need += f", p {'<' if kind == 'improve' else '≥'} {alpha:g}"
        extra = {"paired": paired,
                 "candidate_ci": wilson(sum(cand_items.values()), len(cand_items)),
                 "production_ci": wilson(sum(prod_items.values()), len(prod_items))}
    return GateCheck(metric=metric, kind=kind, production=prod, candidate=cand, delta=delta,
                     required=need, passed=passed, **extra)


def _reason(check: GateCheck, alpha: float) -> str:
    line = (f"{check.metric}: {check.production:.4g} → {check.candidate:.4g} "
            f"(Δ {check.delta:+.4g}, required {check.required})")
    if check.paired:
        p = check.paired
        line += f"; {p.wins} won, {p.losses} lost of {p.n}, p = {p.p_value:.3g}"
    return line
