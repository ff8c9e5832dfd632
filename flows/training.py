"""Prefect flows `train`, `evaluate` and `register`, and `improve`, which runs the three in order.

- `train`: check out the parent version (verified), pick the curated datasets, and run DeepSpeed's
  launcher as a subprocess whose log lines stream into the flow run (progress per step);
- `evaluate`: score the candidate and production with the same harness, then ask the gate. For a
  draft model the measure is its greedy acceptance rate against its target, before and after;
- `register`: import the weights as a signed candidate whose lineage names the parent version, the
  datasets' digests, the training config digest, the loss curve summary and the eval results; when
  the gate accepted, promote it to `staging` (or `staging-draft`). `production` is never touched.

Each flow takes `home: str` (a deployment's parameters must be serialisable), turns it into a
`ShoalConfig` once and hands that to its tasks. What a run is and what follows from it (the
candidate's name, channel and lineage) are `train.records`'; which dataset is the newest is
`curate.catalog`'s. The flows return the records as plain dicts, the JSON of `run.json`,
`eval.json` and `registered.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.config import ShoalConfig

if TYPE_CHECKING:
    from train.records import Acceptance, StoppedSummary, TrainSummary


@task(name="check out parent", persist_result=False, cache_policy=NO_CACHE)
def checkout(shoal: ShoalConfig, ref: str) -> tuple[str, str]:
    version_id, directory = shoal.checkout(ref)
    return version_id, str(directory)


@task(name="deepspeed training", persist_result=False, cache_policy=NO_CACHE)
def deepspeed_training(config_json: str, procs: int, hosts: dict | None = None
                       ) -> "TrainSummary | StoppedSummary | None":
    """`hosts`: the multi-host fields of `train.launch.Topology` (hostfile, node_rank,
    master_addr, master_port) as plain values; None or empty: this host only."""
    from train.config import TrainConfig
    from train.launch import Topology, launch

    log = get_run_logger()
    config = TrainConfig.model_validate_json(config_json)
    hosts = dict(hosts or {})
    if hosts.get("hostfile"):
        hosts["hostfile"] = Path(hosts["hostfile"])
    return launch(config, Topology(procs=procs, **hosts),
                  on_line=lambda line: log.info(line) if line.startswith("[train]") else None)


@flow(name="train", persist_result=False)
def train(home: str, kind: str = "sft", parent: str = "production",
          datasets: list[str] | None = None, settings: dict | None = None, procs: int = 2,
          hosts: dict | None = None) -> dict:
    """Train a candidate from `parent` on curated datasets; returns the run record (`run.json`).

    With `hosts` (`deepspeed_training`), this host runs its share of a multi-host run; a host
    other than node rank 0 returns only its run directory and ``worker``: rank 0's host writes
    the weights, summary and record."""
    from curate.catalog import resolve
    from train.config import TrainConfig
    from train.records import RunRecord

    shoal = ShoalConfig.at(home)
    dirs = resolve(shoal.datasets_dir, kind, datasets)  # default: the newest set of this kind
    parent_id, parent_dir = checkout(shoal, parent)
    run_dir = shoal.runs_dir / RunRecord.new_id()
    config = TrainConfig(kind=kind, model=parent_dir, datasets=[str(d) for d in dirs],
                         output=str(run_dir), **(settings or {}))
    summary = deepspeed_training(config.model_dump_json(), procs, hosts)
    if summary is None:
        return {"run_dir": str(run_dir), "worker": True}
    record = RunRecord.of(config, parent=parent_id, summary=summary)
    record.save(run_dir)
    return record.dump()


@task(name="score model", persist_result=False, cache_policy=NO_CACHE)
def score(model_dir: str, heldout: list[dict], limit: int | None, cache_dir: Path | None = None,
          version: str | None = None) -> dict:
    from train.evaluate import evaluate, version_cache_key

    return evaluate(Path(model_dir), heldout_rows=heldout, limit=limit,
                    cache_dir=cache_dir if version else None,
                    cache_key=version_cache_key(version) if version else None)


@task(name="draft acceptance", persist_result=False, cache_policy=NO_CACHE)
def draft_acceptance(draft_dir: str, target_dir: str, heldout: list[dict], layers: int | None,
                     limit: int | None) -> "Acceptance":
    from train.draft import compare

    return compare(Path(draft_dir), Path(target_dir), heldout, layers=layers, limit=limit)


@flow(name="evaluate", persist_result=False)
def evaluate(home: str, run_dir: str, production: str = "production", gate: dict | None = None,
             limit: int | None = None) -> dict:
    """Score the candidate of `run_dir` against `production` and decide; writes eval.json."""
    from train.data import load_rows
    from train.evaluate import metrics, outcomes
    from train.gate import GateConfig, decide
    from train.records import DraftEval, ModelEval, RunRecord

    log = get_run_logger()
    shoal = ShoalConfig.at(home)
    record = RunRecord.load(run_dir)
    rules = GateConfig.model_validate(gate) if gate else GateConfig.for_kind(record.kind)
    heldout = load_rows([str(shoal.datasets_dir / d.id) for d in record.datasets], "eval")
    if record.is_draft:
        rates = draft_acceptance(str(record.model_dir), record.parent_dir, heldout,
                                 record.train_config().draft_layers, limit)
        report = DraftEval(acceptance=rates, metrics=rates.metrics("after"),
                           gate=decide(rates.metrics("after"), rates.metrics("before"), rules))
    else:
        production_id, production_dir = checkout(shoal, production)
        prod = score(production_dir, heldout, limit, shoal.home / "evals", production_id)
        cand = score(str(record.model_dir), heldout, limit)
        report = ModelEval(kind=record.kind, production=prod, candidate=cand,
                           gate=decide(metrics(cand), metrics(prod), rules, outcomes(cand),
                                       outcomes(prod)),
                           metrics=metrics(cand), production_metrics=metrics(prod))
    log.info(f"gate {report.gate.verdict}")
    report.save(run_dir)
    return report.dump()


@flow(name="register", persist_result=False)
def register(home: str, run_dir: str, name: str | None = None,
             keys: list[str] | None = None) -> dict:
    """Import the run's weights as a signed candidate; promote to staging if the gate accepted.

    `keys` names the signing keys (default: `maintainer-release`, and the staging key when the gate
    accepted); each signs what the registry's policy lets it: manifests for `release` keys, the
    staging record for keys of the staging channel's role. A named key that is missing is an error.
    """
    from flows import signers
    from registry.exceptions import VerificationError
    from registry.publish import current_root, import_model, promote
    from train.records import EvalReport, Registered, RunRecord

    shoal = ShoalConfig.at(home)
    record = RunRecord.load(run_dir)
    report = EvalReport.load_if_present(run_dir)
    accepted = bool(report and report.gate.accepted)
    channel = record.staging_channel if accepted else None
    policy = current_root(shoal.store())
    names = keys or [signers.DEFAULT_KEYS["release"],
                     *([signers.default_for(policy, channel)] if channel else [])]
    loaded = signers.load(shoal, names)
    release = signers.in_role(loaded, policy, "release")
    if not release:
        raise VerificationError("wrong-role", f"none of the keys {names} is a release key of "
                                "this registry")
    parent = shoal.client().manifest(record.parent)  # verified: the lineage names it
    name = name or record.candidate_name(parent.name)
    imported = import_model(shoal.store(), record.model_dir, name=name, release_keys=release,
                            lineage=record.lineage(report))
    if channel:
        from registry.policy import channel_role

        promote(shoal.store(), imported.version_id, channel,
                signers.in_role(loaded, policy, channel_role(policy, channel)),
                note=f"gate accepted run {record.run_id}")
    registered = Registered(version=imported.version_id, name=name, promoted_to=channel,
                            gate=report.gate if report else None)
    registered.save(run_dir)
    return registered.dump()


@flow(name="improve", persist_result=False)
def improve(home: str, kind: str = "sft", parent: str = "production",
            datasets: list[str] | None = None, settings: dict | None = None, procs: int = 2,
            gate: dict | None = None, limit: int | None = None,
            keys: list[str] | None = None, hosts: dict | None = None) -> dict:
    """train → evaluate → register: one candidate from curated data, gated into staging (on
    node rank 0's host only, when `hosts` spreads the training over several)."""
    meta = train(home, kind, parent, datasets, settings, procs, hosts)
    if meta.get("worker"):
        return {"run": meta, "eval": None, "registered": None}
    report = evaluate(home, meta["run_dir"], parent, gate, limit)
    registered = register(home, meta["run_dir"], keys=keys)
    return {"run": meta, "eval": report, "registered": registered}
