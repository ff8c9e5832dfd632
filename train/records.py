"""The records a training run leaves in its directory, as typed models, and what follows from them.

| file              | model                              | written by                          |
|-------------------|------------------------------------|-------------------------------------|
| `summary.json`    | `TrainSummary` / `StoppedSummary`  | rank 0 of `train.run`               |
| `run.json`        | `RunRecord`                        | the `train` flow                    |
| `eval.json`       | `ModelEval` / `DraftEval`          | the `evaluate` flow                 |
| `registered.json` | `Registered`                       | the `register` flow                 |

Each model loads and saves its own file (`RunRecord.load(run_dir)`, `record.save(run_dir)`); the
JSON keys are the fields' names, so the files read the same to anyone who opens them. A run record
also knows what its candidate is called, which channel it goes to and the lineage its manifest
carries (`RunRecord.lineage`). Nothing here trains, scores, signs or talks to the registry; the
only registry name used is `registry.manifest.Lineage`, imported when a lineage is built.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from train.exceptions import RunError
from train.gate import GateDecision

if TYPE_CHECKING:
    from registry.manifest import Lineage
    from train.config import TrainConfig

Kind = Literal["sft", "dpo", "distill"]


class RunFile(BaseModel):
    """A JSON record in a run directory. Subclasses name their file in `FILE`."""

    model_config = ConfigDict(extra="forbid")
    FILE: ClassVar[str]

    @classmethod
    def path(cls, run_dir: str | Path) -> Path:
        return Path(run_dir) / cls.FILE

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "Self":
        """The record from its JSON object (what `dump` returns)."""
        return cls.model_validate(data)

    @classmethod
    def load(cls, run_dir: str | Path) -> "Self":
        path = cls.path(run_dir)
        if not path.is_file():
            raise RunError(f"{run_dir}: no {cls.FILE} (is it a training run directory?)")
        return cls.parse(json.loads(path.read_text()))

    def dump(self) -> dict[str, Any]:
        """The JSON object of the file, as plain dicts and lists."""
        return self.model_dump()

    def save(self, run_dir: str | Path) -> Path:
        path = self.path(run_dir)
        path.write_text(json.dumps(self.dump(), indent=2))
        return path


# -- summary.json ---------------------------------------------------------------------------------

class TrainSummary(RunFile):
    """What a finished run reports (`summary.json`)."""

    FILE = "summary.json"
    kind: Kind
    steps: int
    """Optimizer steps of the whole run."""
    world_size: int
    """Processes that trained (over all hosts)."""
    trainable_parameters: int
    eval_before: dict[str, float]
    """Mean loss (DPO: also margin, accuracy, rewards) on the eval split before training; empty
    without an eval split."""
    eval_after: dict[str, float]
    """The same after training."""
    loss_first: float | None
    """Training loss of the first step (None for a run without steps)."""
    loss_last: float | None
    loss_curve: list[float]
    """Training loss per optimizer step, averaged over ranks."""
    tokens: int
    """Non-padding tokens trained on."""
    tokens_per_s: float | None
    config_digest: str
    """`TrainConfig.digest()` of the run."""
    zero_stage: int
    """The DeepSpeed ZeRO stage the engine ran with."""


class StoppedSummary(RunFile):
    """What a run that left early (`stop_after_steps`) reports; launching it again resumes it."""

    FILE = "summary.json"
    kind: Kind
    stopped_at: int
    """The last step done (and checkpointed)."""
    steps: int
    """Optimizer steps of the whole run."""
    loss_curve: list[float]


_summary = TypeAdapter(Union[TrainSummary, StoppedSummary])


def load_summary(run_dir: str | Path) -> TrainSummary | StoppedSummary:
    """The run's `summary.json`, finished or stopped."""
    path = Path(run_dir) / TrainSummary.FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: no {TrainSummary.FILE} (the run has not finished a launch)")
    return _summary.validate_python(json.loads(path.read_text()))


# -- run.json -------------------------------------------------------------------------------------

class DatasetRef(BaseModel):
    """A curated dataset a run trained on."""

    model_config = ConfigDict(extra="forbid")
    id: str
    """The dataset id (`<kind>-<16 hex>`), its directory name under the datasets directory."""
    rows_digest: str
    """SHA-256 of its rows (the data card's `rows_digest`); the lineage names datasets by it."""


class RunRecord(RunFile):
    """One training run (`run.json`): where it started, what it read, what it reported."""

    FILE = "run.json"
    run_id: str
    """`YYYYmmdd-HHMMSS-<6 hex>`, the run directory's name."""
    run_dir: str
    kind: Kind
    parent: str
    """Version id of the starting weights."""
    parent_dir: str
    """The verified checkout of the parent the run started from."""
    datasets: list[DatasetRef]
    config_digest: str
    """`TrainConfig.digest()`: the settings that shape the weights."""
    summary: TrainSummary | StoppedSummary

    @staticmethod
    def new_id() -> str:
        """A fresh run id: sortable by start time, unique by its random tail."""
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]

    @classmethod
    def of(cls, config: "TrainConfig", *, parent: str,
           summary: TrainSummary | StoppedSummary) -> "RunRecord":
        """The record of a launched run: `config.output` is its directory, `config.model` the
        parent's checkout, and each of `config.datasets` a curated dataset with its card."""
        from curate.card import load_card

        cards = [load_card(Path(d)) for d in config.datasets]
        return cls(run_id=Path(config.output).name, run_dir=config.output, kind=config.kind,
                   parent=parent, parent_dir=config.model,
                   datasets=[DatasetRef(id=c.dataset_id, rows_digest=c.rows_digest)
                             for c in cards],
                   config_digest=config.digest(), summary=summary)

    @property
    def model_dir(self) -> Path:
        """The exported HF weights of the run."""
        return Path(self.run_dir) / "model"

    @property
    def is_draft(self) -> bool:
        """A distilled draft model (registered for its target, promoted to `staging-draft`)."""
        return self.kind == "distill"

    @property
    def staging_channel(self) -> str:
        """Where an accepted candidate goes: `staging`, or `staging-draft` for a draft."""
        return "staging-draft" if self.is_draft else "staging"

    def candidate_name(self, parent_name: str) -> str:
        """The registry name of the candidate: the parent's, with `-draft` for a draft."""
        return f"{parent_name}-draft" if self.is_draft else parent_name

    def train_config(self) -> "TrainConfig":
        """The run's settings, as the launcher wrote them (`config.json`)."""
        from train.config import TrainConfig

        path = Path(self.run_dir) / "config.json"
        if not path.is_file():
            raise RunError(f"{self.run_dir}: no config.json (the run was never launched)")
        return TrainConfig.model_validate_json(path.read_text())

    def finished(self) -> TrainSummary:
        """The summary of the finished run; a run that stopped early has no candidate yet."""
        if isinstance(self.summary, StoppedSummary):
            raise RunError(f"run {self.run_id} stopped at step {self.summary.stopped_at} of "
                           f"{self.summary.steps}: it has no exported weights to use")
        return self.summary

    def lineage(self, report: "EvalReport | None" = None) -> "Lineage":
        """The lineage of this run's candidate: parent version, dataset digests, training config
        digest, a summary of the training and, once evaluated, the metrics and the gate's
        decision."""
        from registry.manifest import Lineage

        s = self.finished()
        return Lineage(
            parent=self.parent, datasets=[d.rows_digest for d in self.datasets],
            training_config=self.config_digest, draft_for=self.parent if self.is_draft else None,
            training={"kind": self.kind, "run_id": self.run_id, "steps": s.steps,
                      "tokens": s.tokens, "world_size": s.world_size,
                      "loss_first": s.loss_first, "loss_last": s.loss_last,
                      "eval_loss_before": s.eval_before.get("loss"),
                      "eval_loss_after": s.eval_after.get("loss"),
                      "dataset_ids": [d.id for d in self.datasets]},
            eval=({"metrics": report.metrics, "gate": report.gate.model_dump()}
                  if report else {}))


# -- eval.json ------------------------------------------------------------------------------------

class AcceptanceRate(BaseModel):
    """`train.draft.acceptance_rate` of one draft against its target."""

    model_config = ConfigDict(extra="forbid")
    rate: float | None
    """Share of the target's greedy continuation tokens the draft predicted (None: no tokens)."""
    tokens: int
    """Continuation tokens compared."""
    prompts: int


class Acceptance(BaseModel):
    """A draft's acceptance rate before and after training, on the same prompts."""

    model_config = ConfigDict(extra="forbid")
    before: AcceptanceRate
    """The untrained cut (the target's first `draft_layers` layers)."""
    after: AcceptanceRate
    """The trained draft."""

    def metrics(self, which: Literal["before", "after"]) -> dict[str, float]:
        """`{"acceptance.rate": …}` of one side, what the gate compares (empty when there were no
        tokens to compare)."""
        rate = getattr(self, which).rate
        return {"acceptance.rate": rate} if rate is not None else {}


class EvalReport(RunFile):
    """What the `evaluate` flow found (`eval.json`): `ModelEval` or `DraftEval` by `kind`."""

    FILE = "eval.json"
    kind: Kind
    gate: GateDecision
    metrics: dict[str, float]
    """The candidate's metrics, as the gate read them."""

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "EvalReport":
        if cls is EvalReport:
            return _report.validate_python(data)
        return cls.model_validate(data)

    @classmethod
    def load_if_present(cls, run_dir: str | Path) -> "EvalReport | None":
        """The run's report, or None before it was evaluated."""
        return cls.load(run_dir) if cls.path(run_dir).is_file() else None


class ModelEval(EvalReport):
    """SFT and DPO candidates: the harness run on production and on the candidate."""

    kind: Literal["sft", "dpo"]
    production: dict[str, Any]
    """The harness report of production (`train.evaluate.evaluate`: sets, samples, loglik)."""
    candidate: dict[str, Any]
    """The harness report of the candidate."""
    production_metrics: dict[str, float]
    """Production's metrics, as the gate read them."""


class DraftEval(EvalReport):
    """Distilled drafts: greedy acceptance against the target, before and after training."""

    kind: Literal["distill"] = "distill"
    acceptance: Acceptance


_report = TypeAdapter(Annotated[Union[ModelEval, DraftEval], Field(discriminator="kind")])


# -- registered.json ------------------------------------------------------------------------------

class Registered(RunFile):
    """What the `register` flow did with the run's weights (`registered.json`)."""

    FILE = "registered.json"
    version: str
    """The candidate's version id (`sha256:…`)."""
    name: str
    """Its registry name."""
    promoted_to: str | None
    """The channel it was promoted to (`staging`, `staging-draft`); None when the gate refused
    it or it was never evaluated."""
    gate: GateDecision | None
    """The gate's decision it was registered with (None without an evaluation)."""
