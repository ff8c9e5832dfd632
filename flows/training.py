"""Prefect flows `train`, `evaluate` and `register`, and `improve`, which runs the three in order.

- `train`: check out the parent version (verified), pick the curated datasets, and run DeepSpeed's
  launcher as a subprocess whose log lines stream into the flow run (progress per step);
- `evaluate`: score the candidate and production with the same harness, then ask the gate. For a
  draft model the measure is its greedy acceptance rate against its target, before and after;
- `register`: import the weights as a signed candidate whose lineage names the parent version, the
  datasets' digests, the training config digest, the loss curve summary and the eval results; when
  the gate accepted, promote it to `staging` (or `staging-draft`). `production` is never touched.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.config import ShoalConfig


def _dataset_dirs(shoal: ShoalConfig, kind: str, ids: list[str] | None) -> list[Path]:
    from flows.curation import latest

    if not ids:  # each training kind reads the curated set of the same name
        newest = latest(shoal).get(kind)
        if not newest:
            raise ValueError(f"no curated {kind} dataset yet: run `shoal flow curate` first")
        ids = [newest]
    dirs = [shoal.datasets_dir / i for i in ids]
    missing = [str(d) for d in dirs if not (d / "card.json").is_file()]
    if missing:
        raise ValueError(f"no such dataset: {', '.join(missing)}")
    return dirs


@task(name="check out parent", persist_result=False, cache_policy=NO_CACHE)
def checkout(home: str, ref: str) -> tuple[str, str]:
    version_id, directory = ShoalConfig.at(home).checkout(ref)
    return version_id, str(directory)


@task(name="deepspeed training", persist_result=False, cache_policy=NO_CACHE)
def deepspeed_training(config_json: str, procs: int) -> dict:
    from train.config import TrainConfig
    from train.launch import Topology, launch

    log = get_run_logger()
    config = TrainConfig.model_validate_json(config_json)
    return launch(config, Topology(procs=procs),
                  on_line=lambda line: log.info(line) if line.startswith("[train]") else None)


@flow(name="train", persist_result=False)
def train(home: str, kind: str = "sft", parent: str = "production",
          datasets: list[str] | None = None, settings: dict | None = None, procs: int = 2) -> dict:
    """Train a candidate from `parent` on curated datasets; returns the run directory and summary."""
    from curate.card import load_card
    from train.config import TrainConfig

    shoal = ShoalConfig.at(home)
    dirs = _dataset_dirs(shoal, kind, datasets)
    parent_id, parent_dir = checkout(home, parent)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = shoal.runs_dir / run_id
    config = TrainConfig(kind=kind, model=parent_dir, datasets=[str(d) for d in dirs],
                         output=str(run_dir), **(settings or {}))
    summary = deepspeed_training(config.model_dump_json(), procs)
    cards = [load_card(d) for d in dirs]
    meta = {"run_id": run_id, "run_dir": str(run_dir), "kind": kind, "parent": parent_id,
            "parent_dir": parent_dir,
            "datasets": [{"id": c.dataset_id, "rows_digest": c.rows_digest} for c in cards],
            "config_digest": config.digest(), "summary": summary}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    return meta


@task(name="score model", persist_result=False, cache_policy=NO_CACHE)
def score(model_dir: str, heldout: list[dict], limit: int | None, home: str | None = None,
          version: str | None = None) -> dict:
    from train.evaluate import evaluate

    cache = ShoalConfig.at(home).home / "evals" if home and version else None
    return evaluate(Path(model_dir), heldout_rows=heldout, limit=limit, cache_dir=cache,
                    cache_key=version.removeprefix("sha256:")[:32] if version else None)


@task(name="draft acceptance", persist_result=False, cache_policy=NO_CACHE)
def draft_acceptance(draft_dir: str, target_dir: str, prompts: list, layers: int | None) -> dict:
    from train.draft import acceptance_rate
    from train.evaluate import load_model
    from train.model import truncate

    target, tokenizer = load_model(Path(target_dir))
    trained, _ = load_model(Path(draft_dir))
    before, _ = load_model(Path(target_dir))
    if layers:
        truncate(before, layers)
    return {"before": acceptance_rate(before, target, tokenizer, prompts),
            "after": acceptance_rate(trained, target, tokenizer, prompts)}


@flow(name="evaluate", persist_result=False)
def evaluate(home: str, run_dir: str, production: str = "production", gate: dict | None = None,
             limit: int | None = None) -> dict:
    """Score the candidate of `run_dir` against `production` and decide; writes eval.json."""
    from curate.card import load_split
    from train.evaluate import metrics
    from train.gate import GateConfig, decide

    log = get_run_logger()
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    candidate_dir = str(Path(run_dir) / "model")
    heldout = [r for d in meta["datasets"]
               for r in load_split(ShoalConfig.at(home).datasets_dir / d["id"], "eval")]
    if meta["kind"] == "distill":
        config = json.loads((Path(run_dir) / "config.json").read_text())
        prompts = [r["messages"][:-1] for r in heldout][: limit or 32]
        rates = draft_acceptance(candidate_dir, meta["parent_dir"], prompts,
                                 config.get("draft_layers"))
        cfg = GateConfig.model_validate(gate or {"improve": {"acceptance.rate": 0.02}, "hold": {}})
        decision = decide({"acceptance.rate": rates["after"]["rate"]},
                          {"acceptance.rate": rates["before"]["rate"]}, cfg)
        report = {"kind": "distill", "acceptance": rates, "gate": decision,
                  "metrics": {"acceptance.rate": rates["after"]["rate"]}}
    else:
        production_id, production_dir = checkout(home, production)
        prod = score(production_dir, heldout, limit, home, production_id)
        cand = score(candidate_dir, heldout, limit)
        decision = decide(metrics(cand), metrics(prod), GateConfig.model_validate(gate or {}))
        report = {"kind": meta["kind"], "production": prod, "candidate": cand, "gate": decision,
                  "metrics": metrics(cand), "production_metrics": metrics(prod)}
    verdict = "ACCEPTED" if decision["accepted"] else "REFUSED: " + "; ".join(decision["reasons"])
    log.info(f"gate {verdict}")
    (Path(run_dir) / "eval.json").write_text(json.dumps(report, indent=2))
    return report


@flow(name="register", persist_result=False)
def register(home: str, run_dir: str, name: str | None = None) -> dict:
    """Import the run's weights as a signed candidate; promote to staging if the gate accepted."""
    from flows.genesis import ensure_keys
    from registry.manifest import Lineage
    from registry.publish import import_model, promote

    shoal = ShoalConfig.at(home)
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    report_path = Path(run_dir) / "eval.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    keys = ensure_keys(shoal)
    parent = shoal.client().manifest(meta["parent"])
    summary = meta["summary"]
    draft = meta["kind"] == "distill"
    lineage = Lineage(
        parent=meta["parent"], datasets=[d["rows_digest"] for d in meta["datasets"]],
        training_config=meta["config_digest"], draft_for=meta["parent"] if draft else None,
        training={"kind": meta["kind"], "run_id": meta["run_id"], "steps": summary["steps"],
                  "tokens": summary["tokens"], "world_size": summary["world_size"],
                  "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
                  "eval_loss_before": summary["eval_before"].get("loss"),
                  "eval_loss_after": summary["eval_after"].get("loss"),
                  "dataset_ids": [d["id"] for d in meta["datasets"]]},
        eval=({"metrics": report["metrics"], "gate": report["gate"]} if report else {}))
    name = name or (f"{parent.name}-draft" if draft else parent.name)
    imported = import_model(shoal.store(), Path(run_dir) / "model", name=name,
                            release_keys=[keys["release"]], lineage=lineage)
    channel = None
    if report and report["gate"]["accepted"]:
        channel = "staging-draft" if draft else "staging"
        promote(shoal.store(), imported.version_id, channel, [keys["promote"]],
                note=f"gate accepted run {meta['run_id']}")
    result = {"version": imported.version_id, "name": name, "promoted_to": channel,
              "gate": report["gate"] if report else None}
    (Path(run_dir) / "registered.json").write_text(json.dumps(result, indent=2))
    return result


@flow(name="improve", persist_result=False)
def improve(home: str, kind: str = "sft", parent: str = "production",
            datasets: list[str] | None = None, settings: dict | None = None, procs: int = 2,
            gate: dict | None = None, limit: int | None = None) -> dict:
    """train → evaluate → register: one candidate from curated data, gated into staging."""
    meta = train(home, kind, parent, datasets, settings, procs)
    report = evaluate(home, meta["run_dir"], parent, gate, limit)
    registered = register(home, meta["run_dir"])
    return {"run": meta, "eval": report, "registered": registered}
