"""`shoal flow …`: run the Prefect flows (ephemeral API unless PREFECT_API_URL points at a server),
and `shoal bench curate`."""

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
def curate(
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


def register(app: typer.Typer) -> None:
    from flows.cli import reports_errors
    from flows.cli_serve import bench_app

    for command in flow_app.registered_commands:
        command.callback = reports_errors(command.callback)
    app.add_typer(flow_app, name="flow")
    bench_app.command("curate")(reports_errors(bench_curate))
