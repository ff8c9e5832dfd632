"""`shoal flow …`: run the Prefect flows that curate traces and train, evaluate and register
candidates (an ephemeral Prefect API unless PREFECT_API_URL points at a server); and `shoal demo`,
the whole flywheel end to end.

The flows themselves live in `flows.curation`, `flows.training` and `flows.demo`; this module only
turns options into their arguments and prints their results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from flows.cli.base import DEFAULT_MODEL, command, config, fail, group

cli = typer.Typer()
"""What this module adds to `shoal`: `demo` and the `flow` group."""
flow_app = group(cli, "flow", "Prefect flows: curate, train, evaluate, register.")


def _settings(values: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs as a dict; a VALUE that is JSON is decoded, anything else kept as
    the string."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _bounds(values: list[str] | None, option: str) -> dict[str, float] | None:
    """`--improve`/`--hold METRIC=DELTA` values as a gate table (None when none was given)."""
    if not values:
        return None
    out = {}
    for item in values:
        metric, sep, raw = item.partition("=")
        try:
            delta = float(raw) if sep and metric else -1.0
        except ValueError:
            delta = -1.0
        if delta < 0:
            raise ValueError(f"{option} {item!r}: expected METRIC=DELTA with DELTA ≥ 0")
        out[metric] = delta
    return out


def _gate(kind: str, improve: list[str] | None, hold: list[str] | None) -> dict | None:
    """The gate table the options ask for, or None for the kind's default gate."""
    if not improve and not hold:
        return None
    from train.gate import GateConfig

    return GateConfig.for_run(kind, _bounds(improve, "--improve"),
                              _bounds(hold, "--hold")).model_dump()


Improve = Annotated[Optional[list[str]], typer.Option(
    help="gate: METRIC=DELTA the candidate must gain, significantly (repeatable; replaces the "
         "default tools_api_gate.accuracy=0.05)")]
Hold = Annotated[Optional[list[str]], typer.Option(
    help="gate: METRIC=DELTA the candidate may lose at most, and no significant loss "
         "(repeatable; replaces the default general_gate.accuracy=0.05)")]
Keys = Annotated[Optional[list[str]], typer.Option(
    "--key", help="signing key (repeatable; default: maintainer-release, and maintainer-staging "
                  "for the staging record)")]


def _print_outcome(report: dict, registered: dict) -> None:
    for check in report["gate"]["checks"]:
        if "delta" in check:
            typer.echo(f"{check['metric']:28} {check['production']:.4f} → {check['candidate']:.4f}"
                       f"  ({check['required']}) {'ok' if check['passed'] else 'FAILED'}")
    where = registered["promoted_to"] or "no channel (gate refused)"
    typer.echo(f"registered {registered['version'][:19]} → {where}")


@command(cli)
def demo(seed: Annotated[int, typer.Option(help="seeds tasks, split and training")] = 0,
         tasks: Annotated[int, typer.Option(help="contributor tasks")] = 80) -> None:
    """The whole flywheel: genesis, swarm, workload, curate, train, gate, promote, roll out."""
    from flows.demo import DemoConfig, run_demo

    run_demo(config(), DemoConfig(seed=seed, tasks=tasks))


@command(flow_app, "curate")
def curate_traces(
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help="CurateConfig as JSON (defaults otherwise)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes for the scrub step")] = 1,
    dask: Annotated[Optional[str], typer.Option(help="Dask scheduler address (needs prefect-dask)")]
    = None,
    cron: Annotated[Optional[str], typer.Option(
        help="serve as a scheduled deployment on the configured Prefect server instead")] = None,
) -> None:
    """Curate consented traces into SFT / DPO / distillation datasets with data cards."""
    from curate.config import CurateConfig
    from flows.curation import curate as curate_flow
    from flows.curation import run_curate

    cfg = CurateConfig.model_validate_json(config_file.read_text()) if config_file else \
        CurateConfig()
    shoal = config()
    if cron:
        typer.echo(f"serving deployment 'curate/shoal' on schedule {cron!r} (Ctrl-C stops)")
        curate_flow.serve(name="shoal", cron=cron,
                          parameters={"home": str(shoal.home), "config": cfg.model_dump()})
        return
    result = run_curate(shoal, cfg, workers=workers, dask_address=dask)
    for kind, d in result["datasets"].items():
        typer.echo(f"{kind:8} {d['dataset_id']}  train={d['splits']['train']:<6} "
                   f"eval={d['splits']['eval']:<5} {d['path']}")
    if result["rebuilt_from"]:
        typer.echo(f"replaced after erasure: {', '.join(result['rebuilt_from'])}")
    for version in result["flagged_versions"]:
        typer.echo(f"flagged {version[:19]}…: trained on rows erased since (`shoal model show`)")


@command(flow_app, "train")
def train_run(
    kind: Annotated[str, typer.Option(help="sft, dpo or distill")] = "sft",
    parent: Annotated[str, typer.Option(help="registry ref of the starting weights")] =
    DEFAULT_MODEL,
    dataset: Annotated[Optional[list[str]], typer.Option(
        help="dataset id (repeatable; default: the newest of the kind)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="TrainConfig field, e.g. --set lr=1e-4 --set lora='{\"r\": 8}'")] = None,
    procs: Annotated[int, typer.Option(min=1, help="DeepSpeed processes on this host")] = 2,
    hostfile: Annotated[Optional[Path], typer.Option(
        help="DeepSpeed hostfile (`HOST slots=N` lines): with ssh, launch once here; without, "
        "start each host with its --node-rank (docs/deploy.md)")] = None,
    nnodes: Annotated[Optional[int], typer.Option(
        min=1, help="hosts of a run without ssh, --procs each (a hostfile is written for you)")]
    = None,
    node_rank: Annotated[Optional[int], typer.Option(
        min=0, help="this host's rank in a run without ssh (0 collects the model)")] = None,
    master_addr: Annotated[str, typer.Option(
        help="address of node rank 0, reachable from every host")] = "127.0.0.1",
    master_port: Annotated[Optional[int], typer.Option(
        help="port of node rank 0's rendezvous (the same on every host)")] = None,
    evaluate: Annotated[bool, typer.Option(help="then evaluate, gate and register")] = True,
    limit: Annotated[Optional[int], typer.Option(help="evaluate on the first N items per set")]
    = None,
    improve: Improve = None, hold: Hold = None, key: Keys = None,
) -> None:
    """Train a candidate with DeepSpeed; by default evaluate it, gate it and register it."""
    home, settings = str(config().home), _settings(set_ or [])
    gate = _gate(kind, improve, hold)
    hosts = multi_host(procs, hostfile, nnodes, node_rank, master_addr, master_port,
                       config().home / "run")
    from flows.training import improve as improve_flow
    from flows.training import train as train_flow

    if not evaluate:
        meta = train_flow(home, kind, parent, dataset, settings, procs, hosts)
    else:
        result = improve_flow(home, kind, parent, dataset, settings, procs, gate, limit, key,
                              hosts)
        meta = result["run"]
    if meta.get("worker"):
        typer.echo(f"node rank {node_rank}: share done; node rank 0's host has the model")
    elif not evaluate:
        typer.echo(f"run {meta['run_dir']}  loss {meta['summary']['loss_first']:.4f} → "
                   f"{meta['summary']['loss_last']:.4f}")
    else:
        _print_outcome(result["eval"], result["registered"])


def multi_host(procs: int, hostfile: Path | None, nnodes: int | None, node_rank: int | None,
               master_addr: str, master_port: int | None, run_dir: Path) -> dict | None:
    """The multi-host fields of `train.launch.Topology` from `shoal flow train`'s options (None:
    this host only). A run without ssh needs a node rank, a master address other hosts can reach
    and a fixed port; --nnodes writes the hostfile when none is given."""
    from train.launch import hostfile_hosts, write_hostfile

    if hostfile is None and nnodes is None:
        if node_rank is not None:
            fail("--node-rank needs --nnodes or --hostfile")
        return None
    if hostfile is None:
        hostfile = write_hostfile(run_dir / f"hostfile-{nnodes}x{procs}", nnodes, procs)
    elif not hostfile.is_file():
        fail(f"--hostfile {hostfile}: no such file")
    hosts = hostfile_hosts(hostfile)
    if nnodes is not None and nnodes != hosts:
        fail(f"--nnodes {nnodes}, but {hostfile} lists {hosts} hosts")
    if node_rank is not None:
        if node_rank >= hosts:
            fail(f"--node-rank {node_rank}: the run has {hosts} hosts (ranks 0..{hosts - 1})")
        if master_port is None:
            fail("a run without ssh needs --master-port, the same on every host")
    return {"hostfile": str(hostfile), "node_rank": node_rank, "master_addr": master_addr,
            "master_port": master_port}


@command(flow_app, "evaluate")
def evaluate_run(run_dir: Path, production: str = DEFAULT_MODEL,
                 limit: Annotated[Optional[int], typer.Option()] = None,
                 improve: Improve = None, hold: Hold = None) -> None:
    """Score a run's candidate and production with the same harness; ask the gate."""
    from flows.training import evaluate as evaluate_flow
    from train.records import RunRecord

    gate = _gate(RunRecord.load(run_dir).kind, improve, hold) if improve or hold else None
    report = evaluate_flow(str(config().home), str(run_dir), production, gate, limit)
    typer.echo(json.dumps(report["gate"], indent=2))


@command(flow_app, "register")
def register_run(run_dir: Path, key: Keys = None) -> None:
    """Import a run's weights as a signed candidate; promote to staging if its gate accepted."""
    from flows.training import register as register_flow

    result = register_flow(str(config().home), str(run_dir), keys=key)
    typer.echo(json.dumps(result, indent=2))
