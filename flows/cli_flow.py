"""`shoal flow …`: run the Prefect flows (ephemeral API unless PREFECT_API_URL points at a server),
and `shoal bench curate` / `shoal bench train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

flow_app = typer.Typer(help="Prefect flows: curate, train, evaluate, register.",
                       no_args_is_help=True)


def _cfg():
    from flows.config import ShoalConfig

    return ShoalConfig.from_env()


@flow_app.command("curate")
def curate_traces(
    config: Annotated[Optional[Path], typer.Option(help="CurateConfig as JSON (defaults otherwise)")]
    = None,
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

    cfg = CurateConfig.model_validate_json(config.read_text()) if config else CurateConfig()
    shoal = _cfg()
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


def bench_curate(traces: int = 6000, tokens: int = 500,
                 workers: Annotated[str, typer.Option(help="pool sizes to compare")] = "1,2",
                 out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Scrub + dedup throughput (traces/min) by number of worker processes."""
    from curate.bench import run_curate_bench

    report = run_curate_bench(Path(out), traces, tokens, tuple(int(w) for w in workers.split(",")))
    typer.echo(json.dumps(report, indent=2))


def _settings(values: list[str]) -> dict:
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


@flow_app.command("train")
def train_run(
    kind: Annotated[str, typer.Option(help="sft, dpo or distill")] = "sft",
    parent: Annotated[str, typer.Option(help="registry ref of the starting weights")] = "production",
    dataset: Annotated[Optional[list[str]], typer.Option(
        help="dataset id (repeatable; default: the newest of the kind)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="TrainConfig field, e.g. --set lr=1e-4 --set lora='{\"r\": 8}'")] = None,
    procs: Annotated[int, typer.Option(min=1, help="DeepSpeed processes on this host")] = 2,
    evaluate: Annotated[bool, typer.Option(help="then evaluate, gate and register")] = True,
    limit: Annotated[Optional[int], typer.Option(help="evaluate on the first N items per set")]
    = None,
) -> None:
    """Train a candidate with DeepSpeed; by default evaluate it, gate it and register it."""
    from flows.training import improve
    from flows.training import train as train_flow

    home, settings = str(_cfg().home), _settings(set_ or [])
    if not evaluate:
        meta = train_flow(home, kind, parent, dataset, settings, procs)
        typer.echo(f"run {meta['run_dir']}  loss {meta['summary']['loss_first']:.4f} → "
                   f"{meta['summary']['loss_last']:.4f}")
        return
    result = improve(home, kind, parent, dataset, settings, procs, None, limit)
    _print_outcome(result["eval"], result["registered"])


def _print_outcome(report: dict, registered: dict) -> None:
    for check in report["gate"]["checks"]:
        if "delta" in check:
            typer.echo(f"{check['metric']:28} {check['production']:.4f} → {check['candidate']:.4f}"
                       f"  ({check['required']}) {'ok' if check['passed'] else 'FAILED'}")
    where = registered["promoted_to"] or "no channel (gate refused)"
    typer.echo(f"registered {registered['version'][:19]} → {where}")


@flow_app.command("evaluate")
def evaluate_run(run_dir: Path, production: str = "production",
             limit: Annotated[Optional[int], typer.Option()] = None) -> None:
    """Score a run's candidate and production with the same harness; ask the gate."""
    from flows.training import evaluate as evaluate_flow

    report = evaluate_flow(str(_cfg().home), str(run_dir), production, None, limit)
    typer.echo(json.dumps(report["gate"], indent=2))


@flow_app.command("register")
def register_run(run_dir: Path) -> None:
    """Import a run's weights as a signed candidate; promote to staging if its gate accepted."""
    from flows.training import register as register_flow

    result = register_flow(str(_cfg().home), str(run_dir))
    typer.echo(json.dumps(result, indent=2))


def bench_train(model: str = "production", steps: int = 4, micro_batch: int = 4, procs: int = 2,
                max_len: int = 128, zero: str = "zero1", grad_accum: int = 4,
                out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """SFT tokens/s: DeepSpeed (launcher, ZeRO) vs a plain torch loop, in one run."""
    from train.bench import run_train_bench

    _, directory = _cfg().checkout(model)
    report = run_train_bench(directory, Path(out), steps=steps, micro_batch=micro_batch,
                             procs=procs, max_len=max_len, zero=zero, grad_accum=grad_accum)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "torch"} |
                          {"torch_tokens_per_s": report["torch"]["tokens_per_s"]}, indent=2))


def register(app: typer.Typer) -> None:
    from flows.cli import reports_errors
    from flows.cli_serve import bench_app

    for command in flow_app.registered_commands:
        command.callback = reports_errors(command.callback)
    app.add_typer(flow_app, name="flow")
    bench_app.command("curate")(reports_errors(bench_curate))
    bench_app.command("train")(reports_errors(bench_train))
