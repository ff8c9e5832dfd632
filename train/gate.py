"""The eval gate: a candidate goes to `staging` only if it beats production where it should and
holds steady where it must. Promotion to `production` stays a maintainer's signed act.

The gate compares two flat metric dicts (`train.evaluate.metrics`); it knows nothing about models,
runs or the registry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    improve: dict[str, float] = Field(default_factory=lambda: {"tools_heldout.accuracy": 0.05})
    """metric → the least the candidate must gain over production (every one must pass)."""
    hold: dict[str, float] = Field(default_factory=lambda: {"regression.accuracy": 0.10})
    """metric → the most the candidate may lose against production (the regression suite)."""

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
                   hold=base.hold if hold is None else hold)


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
           config: GateConfig | None = None) -> GateDecision:
    """Compare the candidate's metrics with production's under `config`; every check reported."""
    config = config or GateConfig()
    checks, reasons = [], []
    for kind, table in (("improve", config.improve), ("hold", config.hold)):
        for metric, bound in table.items():
            if metric not in candidate or metric not in production:
                checks.append(GateCheck(metric=metric, kind=kind, passed=False,
                                        why="not measured on both models"))
                reasons.append(f"{metric}: not measured on both models")
                continue
            delta = candidate[metric] - production[metric]
            passed = delta >= bound if kind == "improve" else delta >= -bound
            need = f"≥ +{bound:g}" if kind == "improve" else f"≥ -{bound:g}"
            checks.append(GateCheck(metric=metric, kind=kind, production=production[metric],
                                    candidate=candidate[metric], delta=delta, required=need,
                                    passed=passed))
            if not passed:
                reasons.append(f"{metric}: {production[metric]:.4g} → {candidate[metric]:.4g} "
                               f"(Δ {delta:+.4g}, required {need})")
    return GateDecision(accepted=not reasons and bool(checks), checks=checks, reasons=reasons)
