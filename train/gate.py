"""The eval gate: a candidate goes to `staging` only if it beats production where it should and
holds steady where it must. Promotion to `production` stays a maintainer's signed act.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    improve: dict[str, float] = Field(default_factory=lambda: {"tools_heldout.accuracy": 0.05})
    """metric → the least the candidate must gain over production (every one must pass)."""
    hold: dict[str, float] = Field(default_factory=lambda: {"regression.accuracy": 0.10})
    """metric → the most the candidate may lose against production (the regression suite)."""


def decide(candidate: dict[str, float], production: dict[str, float],
           config: GateConfig | None = None) -> dict:
    """{"accepted": bool, "checks": [...], "reasons": [...]}: every check with both values."""
    config = config or GateConfig()
    checks, reasons = [], []
    for kind, table in (("improve", config.improve), ("hold", config.hold)):
        for metric, bound in table.items():
            if metric not in candidate or metric not in production:
                checks.append({"metric": metric, "kind": kind, "passed": False,
                               "why": "not measured on both models"})
                reasons.append(f"{metric}: not measured on both models")
                continue
            delta = candidate[metric] - production[metric]
            passed = delta >= bound if kind == "improve" else delta >= -bound
            need = f"≥ +{bound:g}" if kind == "improve" else f"≥ -{bound:g}"
            checks.append({"metric": metric, "kind": kind, "production": production[metric],
                           "candidate": candidate[metric], "delta": delta, "required": need,
                           "passed": passed})
            if not passed:
                reasons.append(f"{metric}: {production[metric]:.4g} → {candidate[metric]:.4g} "
                               f"(Δ {delta:+.4g}, required {need})")
    return {"accepted": not reasons and bool(checks), "checks": checks, "reasons": reasons}
